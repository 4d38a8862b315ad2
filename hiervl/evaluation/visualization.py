"""Drawing helpers shared by ``demo/demo.py`` and ``tools/visualize_*.py``.

Overlays use detectron2's ``Visualizer.draw_sem_seg`` with the dataset's metadata
(``stuff_classes``, ``stuff_colors``), through :class:`InsideVisualizer`, which keeps the class
labels inside the picture; every function returns an ``[H, W, 3]`` uint8 RGB array of the input
image's size (``side_by_side`` concatenates panels horizontally, ``caption`` adds a title strip
above a panel).
"""

import functools
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from hiervl.data.datasets.folder import distinct_colors

__all__ = [
    "InsideVisualizer",
    "caption",
    "class_list_metadata",
    "default_dataset",
    "draw_semseg",
    "keep_text_inside",
    "label_font_size",
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


def _text_box(artist: Text, renderer) -> Bbox:
    """Display extent of a text artist with its background box (pixels, origin bottom left)."""
    artist.update_bbox_position_size(renderer)
    boxes = [artist.get_window_extent(renderer)]
    patch = artist.get_bbox_patch()
    if patch is not None:
        boxes.append(patch.get_window_extent(renderer))
    return Bbox.union(boxes)


def keep_text_inside(output: VisImage, artist: Text, *, margin: float = 1.0) -> None:
    """Move a text artist of ``output`` inwards until it and its background box lie inside the
    picture (``margin`` pixels from each edge); shrink its font first when it is wider or
    taller than the picture."""
    renderer = output.canvas.get_renderer()
    width, height = output.fig.bbox.width, output.fig.bbox.height
    room_w, room_h = width - 2 * margin, height - 2 * margin
    for _ in range(4):
        box = _text_box(artist, renderer)
        factor = min(room_w / max(box.width, 1e-6), room_h / max(box.height, 1e-6))
        if factor >= 1.0:
            break
        # Padding does not scale with the font: aim a little lower than the exact ratio.
        artist.set_fontsize(max(artist.get_fontsize() * factor * 0.95, 1.0))
    box = _text_box(artist, renderer)
    dx = max(margin - box.x0, 0.0) + min(width - margin - box.x1, 0.0)
    dy = max(margin - box.y0, 0.0) + min(height - margin - box.y1, 0.0)
    if dx or dy:
        to_display = artist.get_transform()
        x, y = to_display.transform(artist.get_position())
        artist.set_position(to_display.inverted().transform((x + dx, y + dy)))


class InsideVisualizer(Visualizer):
    """detectron2's ``Visualizer`` whose text labels stay inside the picture.

    ``draw_sem_seg`` centres a segment's label on its largest component: for a segment along
    the right or bottom edge part of the label ran off the picture ("pedestr"). Every text drawn
    through ``draw_text`` is moved inwards (and shrunk when wider than the picture) by
    :func:`keep_text_inside`; nothing else changes.
    """

    def draw_text(self, text, position, **kwargs) -> VisImage:
        output = super().draw_text(text, position, **kwargs)
        keep_text_inside(output, output.ax.texts[-1])
        return output


def label_font_size(height: int, width: int) -> float:
    """detectron2's default label font size for a picture of this size (points)."""
    return max(np.sqrt(height * width) // 90, 10)


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
    visualizer = InsideVisualizer(image, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
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


def caption(
    panel: np.ndarray, text: str, *, font_size: Optional[float] = None, background: int = 32
) -> np.ndarray:
    """A dark title strip with ``text`` (light, left-aligned) on top of ``panel``.

    Args:
        panel: ``[H, W, 3]`` uint8 RGB.
        text: the caption; shrunk to fit when wider than the panel.
        font_size: points; default the panel's label size (:func:`label_font_size`).
        background: grey level of the strip.

    Returns:
        ``[H + h, W, 3]`` uint8 RGB, ``h`` the strip's height (about twice the text's).
    """
    height, width = panel.shape[:2]
    if font_size is None:
        font_size = label_font_size(height, width)
    # Points to pixels at matplotlib's 100 dpi (detectron2's VisImage figure).
    strip_height = int(round(font_size * 100 / 72 * 1.6)) + 4
    strip = np.full((strip_height, width, 3), background, dtype=np.uint8)
    visualizer = InsideVisualizer(strip, None, scale=1.0)
    visualizer.draw_text(
        text, (4, 2), font_size=font_size, color="white", horizontal_alignment="left"
    )
    return np.concatenate([visualizer.get_output().get_image(), panel], axis=0)


def side_by_side(
    panels: Sequence[np.ndarray], *, gap: int = 0, captions: Optional[Sequence[str]] = None
) -> np.ndarray:
    """Concatenate same-height ``[H, W_i, 3]`` panels left to right (``gap`` white columns).

    With ``captions`` (one per panel), each panel gets a title strip on top (:func:`caption`,
    one font size for all, from the first panel); the result is then taller than ``H``.
    """
    heights = {p.shape[0] for p in panels}
    if len(heights) != 1:
        raise ValueError(f"Panels have different heights: {sorted(heights)}")
    if captions is not None:
        if len(captions) != len(panels):
            raise ValueError(f"{len(captions)} captions for {len(panels)} panels")
        size = label_font_size(*panels[0].shape[:2])
        panels = [caption(p, text, font_size=size) for p, text in zip(panels, captions)]
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


def class_list_metadata(class_names: Sequence[str], base=None) -> Metadata:
    """Drawing metadata of a prediction over ``class_names`` (class names at inference).

    Args:
        class_names: the names, in the order of the prediction's ids.
        base: metadata of known classes (a dataset's): a name among its ``stuff_classes``
            keeps its colour; the other names get :func:`distinct_colors` (by position).

    Returns:
        an unregistered detectron2 ``Metadata`` with ``stuff_classes``, ``stuff_colors`` and
        ``ignore_label`` (``base``'s, else 255).
    """
    names = [str(n) for n in class_names]
    known = {}
    if base is not None and base.get("stuff_colors", None) is not None:
        known = dict(zip(base.stuff_classes, base.stuff_colors))
    # Colour 0 of the VOC-style map is black: start at 1.
    spare = distinct_colors(len(names) + 1)[1:]
    metadata = Metadata()
    metadata.set(
        stuff_classes=names,
        stuff_colors=[tuple(known.get(n, spare[i])) for i, n in enumerate(names)],
        ignore_label=base.get("ignore_label", 255) if base is not None else 255,
    )
    return metadata


def default_dataset(cfg: CfgNode) -> str:
    """The split a script draws when none is named: the first test split, else the first train."""
    if cfg.DATASETS.TEST:
        return cfg.DATASETS.TEST[0]
    if cfg.DATASETS.TRAIN:
        return cfg.DATASETS.TRAIN[0]
    raise ValueError("Pass --dataset: the config names no DATASETS.TEST or DATASETS.TRAIN")
