"""Cityscapes (gtFine): 19 train ids, train 2,975, val 500.

``datasets/prepare_cityscapes_sem_seg.py`` writes ``*_gtFine_labelTrainIds.png`` next to each
``*_gtFine_labelIds.png`` with the mapping below (the official one; unlisted ids → 255), the
paths named by the published split files.
"""

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .semi_splits import SemiDatasetSpec

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_SPEC", "cityscapes_label_to_train_id"]

# (name, label id, RGB) of the 19 evaluated classes, in train-id order.
_CLASSES = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)
CITYSCAPES_CLASSES = tuple(name for name, _, _ in _CLASSES)
CITYSCAPES_COLORS = tuple(rgb for _, _, rgb in _CLASSES)
LABEL_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _train_id, (_, _label_id, _) in enumerate(_CLASSES):
    LABEL_TO_TRAIN_ID[_label_id] = _train_id


def cityscapes_label_to_train_id(label_ids: np.ndarray) -> np.ndarray:
    """``*_gtFine_labelIds.png`` values uint8 ``[H, W]`` → train ids 0..18, 255 = ignore."""
    if label_ids.ndim != 2:
        raise ValueError(f"Cityscapes labelIds must be single-channel, got {label_ids.shape}")
    return LABEL_TO_TRAIN_ID[label_ids.astype(np.uint8)]


LAYOUT = """  $DETECTRON2_DATASETS/cityscapes/
    leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
    gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png  (written by the preparation command)
    splits/cityscapes/<n>/{labeled,unlabeled}.txt, splits/cityscapes/val.txt"""

CITYSCAPES_SPEC = SemiDatasetSpec(
    key="cityscapes",
    prefix="cityscapes_sem_seg",
    dirname="cityscapes",
    split_name="cityscapes",
    budgets=(100, 186, 372, 744, 1488),
    stuff_classes=CITYSCAPES_CLASSES,
    stuff_colors=CITYSCAPES_COLORS,
    layout=LAYOUT,
    prepare_command="python datasets/prepare_cityscapes_sem_seg.py",
    required_dirs=("leftImg8bit", "gtFine"),
    split_aliases={100: "1_30", 186: "1_16", 372: "1_8", 744: "1_4", 1488: "1_2"},
)


def cityscapes_split_lines(root: Path) -> Dict[str, Optional[List[str]]]:
    """Lines for ``tools/make_splits.py``."""
    root = Path(root)
    out: Dict[str, Optional[List[str]]] = {"labeled_pool": None}
    for split in ("train", "val"):
        lines = []
        for p in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            lines.append(
                f"leftImg8bit/{split}/{p.parent.name}/{p.name} "
                f"gtFine/{split}/{p.parent.name}/{stem}_gtFine_labelTrainIds.png"
            )
        out[split] = lines
    return out
