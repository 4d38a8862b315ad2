"""ADE20K (ADEChallengeData2016): 150 classes, train 20,210, val 2,000.

``reduce_zero_label``: raw label 0 ("other") → 255 (ignore), raw ``k`` → ``k - 1``. The
converted masks live in ``annotations_detectron2/`` (detectron2's convention), written by
``datasets/prepare_ade20k_sem_seg.py``; published split lines that name the raw
``annotations/`` are read from there.
"""

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .palette import bit_palette
from .semi_splits import SemiDatasetSpec

__all__ = ["ADE20K_CLASSES", "ADE20K_SPEC", "ade20k_reduce_zero_label"]

ADE20K_CLASSES = tuple(ADE20K_SEM_SEG_CATEGORIES)
ADE20K_COLORS = tuple(bit_palette(len(ADE20K_CLASSES) + 1)[1:])


def ade20k_reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """Raw ADE ids uint8 ``[H, W]`` (0 = other, 1..150) → train ids 0..149, 255 = ignore."""
    if raw.ndim != 2:
        raise ValueError(f"ADE20K annotation must be single-channel, got shape {raw.shape}")
    if raw.max(initial=0) > len(ADE20K_CLASSES):
        raise ValueError(f"ADE20K annotation holds id {raw.max()} > {len(ADE20K_CLASSES)}")
    return (raw.astype(np.int16) - 1).astype(np.uint8)  # 0 - 1 wraps to 255


def _resolver(root: Path):
    return lambda rel: (
        "annotations_detectron2/" + rel[len("annotations/") :]
        if rel.startswith("annotations/")
        else rel
    )


LAYOUT = """  $DETECTRON2_DATASETS/ADEChallengeData2016/
    images/{training,validation}/ADE_*.jpg
    annotations/{training,validation}/ADE_*.png             (raw, 0 = other)
    annotations_detectron2/{training,validation}/ADE_*.png  (written by the preparation command)
    splits/ade/<n>/{labeled,unlabeled}.txt, splits/ade/val.txt"""

ADE20K_SPEC = SemiDatasetSpec(
    key="ade20k",
    prefix="ade20k_sem_seg",
    dirname="ADEChallengeData2016",
    split_name="ade",
    budgets=(158, 316, 632, 1263, 2526),
    stuff_classes=ADE20K_CLASSES,
    stuff_colors=ADE20K_COLORS,
    layout=LAYOUT,
    prepare_command="python datasets/prepare_ade20k_sem_seg.py",
    required_dirs=("annotations_detectron2",),
    split_aliases={158: "1_128", 316: "1_64", 632: "1_32", 1263: "1_16", 2526: "1_8"},
    mask_resolver=_resolver,
)


def ade20k_split_lines(root: Path) -> Dict[str, Optional[List[str]]]:
    """Lines for ``tools/make_splits.py`` (converted mask paths)."""
    root = Path(root)
    out: Dict[str, Optional[List[str]]] = {"labeled_pool": None}
    for split, folder in (("train", "training"), ("val", "validation")):
        out[split] = [
            f"images/{folder}/{p.name} annotations_detectron2/{folder}/{p.stem}.png"
            for p in sorted((root / "images" / folder).glob("*.jpg"))
        ]
    return out
