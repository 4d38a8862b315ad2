"""Drawing helpers shared by ``demo/demo.py`` and ``tools/visualize_*.py``.

Overlays use detectron2's ``Visualizer.draw_sem_seg`` with the dataset's metadata
(``stuff_classes``, ``stuff_colors``); every function returns an ``[H, W, 3]`` uint8 RGB array
of the input image's size (``side_by_side`` concatenates panels horizontally).
"""

import functools
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = [
    "default_dataset",
    "draw_semseg",
    "grey_out",
    "labels_and_confidence",
    "side_by_side",
    "find_dataset_record",
    "metadata_of",
]


def labels_and_confidence(
    scores: torch.Tensor, *, ignore_label: int = 255, threshold: float = 0.0
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-pixel label and confidence of a semantic score map.

    The confidence of a pixel is its top score over the sum of its (non-negative) scores: the
    top class probability for a distribution, and for the Mask2Former-style sum
    ``S(c, x) = sum_k softmax(l_k)(c) * m_k(x)`` of the HierVL model the normalised share of the
    winning class.

    Args:
        scores: ``[C, H, W]`` non-negative class scores (``sem_seg`` of the model).
        ignore_label: label given to pixels whose confidence is below ``threshold``.
        threshold: confidence threshold in ``[0, 1]``; 0 keeps every pixel.

    Returns:
        labels ``[H, W]`` int64 (``ignore_label`` where not confident), confidence ``[H, W]``
        float32 in ``[0, 1]``.
    """
    scores = scores.detach().float().cpu().clamp(min=0)
    total = scores.sum(dim=0).clamp(min=torch.finfo(torch.float32).tiny)
    top, labels = scores.max(dim=0)
    confidence = (top / total).numpy().astype(np.float32)
    labels = labels.numpy().astype(np.int64)
    if threshold > 0:
        labels[confidence < threshold] = ignore_label
    return labels, confidence


def draw_semseg(
    image: np.ndarray, labels: np.ndarray, metadata, *, alpha: float = 0.6
) -> np.ndarray:
    """Overlay a label map on an image with detectron2's ``Visualizer.draw_sem_seg``.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        labels: ``[H, W]`` integer labels; values ``>= len(stuff_classes)`` (ignore) are not drawn.
        metadata: detectron2 ``Metadata`` with ``stuff_classes`` (and ``stuff_colors``).
        alpha: opacity of the overlay.

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    visualizer = Visualizer(image, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    out = visualizer.draw_sem_seg(labels, alpha=alpha).get_image()
    if out.shape[:2] != image.shape[:2]:
        raise RuntimeError(f"Visualizer returned {out.shape[:2]}, expected {image.shape[:2]}")
    return out


def grey_out(image: np.ndarray, mask: np.ndarray, *, strength: float = 0.75) -> np.ndarray:
    """Blend the pixels in ``mask`` towards mid grey.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        mask: ``[H, W]`` bool, True = grey out.
        strength: 0 leaves the pixels, 1 makes them flat grey.

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    out = image.astype(np.float32)
    out[mask] = (1 - strength) * out[mask] + strength * 128.0
    return out.round().clip(0, 255).astype(np.uint8)


def side_by_side(panels: Sequence[np.ndarray], *, gap: int = 0) -> np.ndarray:
    """Concatenate same-height ``[H, W_i, 3]`` panels left to right (``gap`` white columns)."""
    heights = {p.shape[0] for p in panels}
    if len(heights) != 1:
        raise ValueError(f"Panels have different heights: {sorted(heights)}")
    parts: List[np.ndarray] = []
    for i, panel in enumerate(panels):
        if i and gap:
            parts.append(np.full((panel.shape[0], gap, 3), 255, dtype=np.uint8))
        parts.append(panel)
    return np.concatenate(parts, axis=1)


@functools.lru_cache(maxsize=8)
def _dataset_index(dataset_name: str) -> Dict[str, Dict]:
    return {os.path.realpath(r["file_name"]): r for r in DatasetCatalog.get(dataset_name)}


def find_dataset_record(file_name: str, dataset_name: str) -> Optional[Dict]:
    """The dataset dict of ``file_name`` in a registered split, or None.

    Matches the resolved path first, then a unique base name (for copies of split images).
    """
    index = _dataset_index(dataset_name)
    record = index.get(os.path.realpath(file_name))
    if record is not None:
        return record
    base = os.path.basename(file_name)
    matches = [r for path, r in index.items() if os.path.basename(path) == base]
    return matches[0] if len(matches) == 1 else None


def metadata_of(dataset_name: str):
    """``MetadataCatalog`` entry of a registered split, checked for ``stuff_classes``."""
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset {dataset_name!r} is not registered. Known: {', '.join(DatasetCatalog.list())}"
        )
    metadata = MetadataCatalog.get(dataset_name)
    if not hasattr(metadata, "stuff_classes"):
        raise KeyError(f"Dataset {dataset_name!r} has no stuff_classes metadata")
    return metadata


def default_dataset(cfg: CfgNode) -> str:
    """The split a script draws when none is named: the first test split, else the first train."""
    if cfg.DATASETS.TEST:
        return cfg.DATASETS.TEST[0]
    if cfg.DATASETS.TRAIN:
        return cfg.DATASETS.TRAIN[0]
    raise ValueError("Pass --dataset: the config names no DATASETS.TEST or DATASETS.TRAIN")
