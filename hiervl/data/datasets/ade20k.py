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

__all__ = ["ADE20K_CLASSES", "ADE20K_SPEC", "ADE20K_SYNONYMS", "ade20k_reduce_zero_label"]

# detectron2's names: comma-joined synonym lists ("escalator, moving staircase, moving
# stairway"), one with a trailing space ("window "). Kept for reference, index = train id.
ADE20K_SYNONYMS = tuple(ADE20K_SEM_SEG_CATEGORIES)
# One natural English name per class (index = train id): what the text encoder reads and the
# metadata's stuff_classes (tables, visualisations). Each is one of the class's synonyms in
# ADE20K's objectInfo150 (detectron2 cut some lists short: "pot" is "pot, flowerpot"), the most
# common and visual one, distinct from the others (screen door / window blind / projection
# screen / crt screen / monitor / television).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "window", "grass",
    "cabinet", "sidewalk", "person", "ground", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "pedestal", "box", "pillar", "sign", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "display case", "pool table", "pillow", "screen door", "staircase", "river",
    "bridge", "bookcase", "window blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm tree", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hut", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "street lamp", "booth", "television", "airplane", "dirt track",
    "clothes", "pole", "land", "banister", "escalator", "ottoman", "bottle", "sideboard",
    "poster", "stage", "van", "ship", "fountain", "conveyor belt", "canopy", "washing machine",
    "toy", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "motorbike",
    "cradle", "oven", "ball", "food", "step", "storage tank", "brand name", "microwave",
    "flower pot", "animal", "bicycle", "lake", "dishwasher", "projection screen", "blanket",
    "sculpture", "exhaust hood", "sconce", "vase", "traffic light", "tray", "trash can", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "drinking glass", "clock", "flag",
)  # fmt: skip
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
