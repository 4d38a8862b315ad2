"""PASCAL VOC 2012 with the SBD augmentation (train_aug 10,582, val 1,449), 21 classes.

Labelled images of the classic splits are drawn from the 1,464 original train images; the
unlabelled set is the rest of train_aug. Masks come from ``SegmentationClassAug/``, written by
``datasets/prepare_voc_sem_seg.py`` (VOC's own masks where they exist, SBD ``.mat`` otherwise).
Published split lines name ``SegmentationClass/<id>.png``; they are read from
``SegmentationClassAug/`` when it exists.
"""

import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import scipy.io
from PIL import Image

from .palette import bit_palette
from .semi_splits import SemiDatasetSpec

__all__ = ["VOC_CLASSES", "VOC_SPEC", "sbd_mat_to_mask", "voc_png_to_mask", "voc_split_lines"]

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)  # fmt: skip
VOC_COLORS = tuple(bit_palette(len(VOC_CLASSES)))
VOC_BOUNDARY_RGB = (224, 224, 192)

LAYOUT = """  $DETECTRON2_DATASETS/VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png            (VOC's own masks)
    ImageSets/Segmentation/{train,val}.txt
    SegmentationClassAug/<id>.png         (written by the preparation command)
    splits/pascal/<n>/{labeled,unlabeled}.txt, splits/pascal/val.txt
  $DETECTRON2_DATASETS/SBD/dataset/cls/<id>.mat   (SBD benchmark_RELEASE)"""


def _resolver(root: Path):
    if not (root / "SegmentationClassAug").is_dir():
        return None
    return lambda rel: (
        "SegmentationClassAug/" + rel[len("SegmentationClass/") :]
        if rel.startswith("SegmentationClass/")
        else rel
    )


VOC_SPEC = SemiDatasetSpec(
    key="voc",
    prefix="voc_sem_seg",
    dirname="VOCdevkit/VOC2012",
    split_name="pascal",
    budgets=(92, 183, 366, 732, 1464),
    stuff_classes=VOC_CLASSES,
    stuff_colors=VOC_COLORS,
    layout=LAYOUT,
    prepare_command="python datasets/prepare_voc_sem_seg.py",
    required_dirs=("JPEGImages", "SegmentationClassAug"),
    mask_resolver=_resolver,
)


def sbd_mat_to_mask(mat_path: Path) -> np.ndarray:
    """SBD ``cls/<id>.mat`` (struct ``GTcls`` with field ``Segmentation``) → uint8 ``[H, W]``."""
    mat = scipy.io.loadmat(str(mat_path), squeeze_me=True, struct_as_record=True)
    if "GTcls" not in mat:
        raise ValueError(f"{mat_path}: no 'GTcls' struct (is this an SBD cls/*.mat file?)")
    seg = np.asarray(mat["GTcls"]["Segmentation"].item(), dtype=np.uint8)
    if seg.ndim != 2:
        raise ValueError(f"{mat_path}: GTcls.Segmentation has shape {seg.shape}, expected 2-D")
    return seg


def voc_png_to_mask(png_path: Path) -> np.ndarray:
    """A VOC mask (palette PNG, single-channel ids, or RGB in the VOC colours) → uint8 ids."""
    with Image.open(png_path) as img:
        if img.mode in ("P", "L"):
            return np.asarray(img, dtype=np.uint8).copy()
        rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lut: Dict[int, int] = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(VOC_COLORS)}
    r, g, b = VOC_BOUNDARY_RGB
    lut[(r << 16) | (g << 8) | b] = 255
    mask = np.full(codes.shape, 255, np.uint8)
    for code, label in lut.items():
        mask[codes == code] = label
    return mask


def _read_ids(path: Path) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (part of the VOC 2012 devkit)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def voc_split_lines(root: Path) -> Dict[str, Optional[List[str]]]:
    """Lines for ``tools/make_splits.py``: train_aug, val and the 1,464 originals (the pool)."""
    root = Path(root)
    sets = root / "ImageSets" / "Segmentation"
    val_ids = _read_ids(sets / "val.txt")
    originals = _read_ids(sets / "train.txt")
    val_set = set(val_ids)
    aug = sorted(p.stem for p in (root / "SegmentationClassAug").glob("*.png"))
    train_ids = [
        i for i in aug if i not in val_set and (root / "JPEGImages" / f"{i}.jpg").is_file()
    ]

    def line(i: str) -> str:
        return f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png"

    return {
        "train": [line(i) for i in train_ids],
        "val": [line(i) for i in val_ids],
        "labeled_pool": [line(i) for i in originals],
    }
