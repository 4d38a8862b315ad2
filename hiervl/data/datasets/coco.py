"""COCO 2017 as 81-class semantic segmentation (background + the 80 thing classes).

Masks ``masks/<id>.png`` (the published split files' paths) are drawn from the instance
annotations by ``datasets/prepare_coco_sem_seg.py``: background 0, category ``k``-th in id
order → ``k`` (1..80). Overlaps are resolved deterministically: instances are painted from the
largest area to the smallest (ties by annotation id), so a smaller object stays visible on top
of a larger one; crowd regions are painted like the others.
"""

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .semi_splits import SemiDatasetSpec

__all__ = ["COCO_CLASSES", "COCO_SPEC", "coco_category_to_train_id", "coco_image_mask"]

_THINGS = sorted((c for c in COCO_CATEGORIES if c["isthing"]), key=lambda c: c["id"])
# COCO's names that read badly as CLIP text ("a photo of a tv.", "a photo of a sports ball.")
# → natural English; every other class keeps COCO's name.
_CLIP_NAMES = {
    "sports ball": "ball",
    "tie": "necktie",
    "tv": "television",
    "mouse": "computer mouse",
    "remote": "remote control",
    "hair drier": "hair dryer",
}
# Class 0 is every pixel of no thing class (stuff included), as the preparation draws it; then
# the 80 thing classes in category-id order. What the text encoder reads (stuff_classes).
COCO_CLASSES = ("background",) + tuple(_CLIP_NAMES.get(c["name"], c["name"]) for c in _THINGS)
COCO_COLORS = ((0, 0, 0),) + tuple(tuple(c["color"]) for c in _THINGS)


def coco_category_to_train_id(category_ids: Optional[List[int]] = None) -> Dict[int, int]:
    """COCO category id → train id 1..80 (0 = background), in category-id order.

    Args:
        category_ids: the annotation file's category ids; None = the 80 standard ones.
    """
    ids = sorted(category_ids) if category_ids is not None else [c["id"] for c in _THINGS]
    if len(ids) > 80:
        raise ValueError(f"Expected at most 80 COCO categories, got {len(ids)}")
    return {cat: i + 1 for i, cat in enumerate(ids)}


def coco_image_mask(coco, image_id: int, cat_to_train: Dict[int, int]) -> np.ndarray:
    """The 81-class mask uint8 ``[H, W]`` of one image of a ``pycocotools.coco.COCO``."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    for ann in sorted(anns, key=lambda a: (-float(a["area"]), a["id"])):
        mask[coco.annToMask(ann).astype(bool)] = cat_to_train[ann["category_id"]]
    return mask


LAYOUT = """  $DETECTRON2_DATASETS/coco/
    train2017/<id>.jpg, val2017/<id>.jpg
    annotations/instances_{train,val}2017.json
    masks/<id>.png                       (written by the preparation command)
    splits/coco/<n>/{labeled,unlabeled}.txt, splits/coco/val.txt"""

COCO_SPEC = SemiDatasetSpec(
    key="coco",
    prefix="coco_sem_seg",
    dirname="coco",
    split_name="coco",
    budgets=(232, 463, 925, 1849, 3697),
    stuff_classes=COCO_CLASSES,
    stuff_colors=COCO_COLORS,
    layout=LAYOUT,
    prepare_command="python datasets/prepare_coco_sem_seg.py",
    required_dirs=("masks",),
    split_aliases={232: "1_512", 463: "1_256", 925: "1_128", 1849: "1_64", 3697: "1_32"},
)


def coco_split_lines(root: Path) -> Dict[str, Optional[List[str]]]:
    """Lines for ``tools/make_splits.py``: images of train2017 / val2017 that have a mask."""
    root = Path(root)
    out: Dict[str, Optional[List[str]]] = {"labeled_pool": None}
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        out[split] = [
            f"{folder}/{p.name} masks/{p.stem}.png"
            for p in sorted((root / folder).glob("*.jpg"))
            if (root / "masks" / f"{p.stem}.png").is_file()
        ]
    return out
