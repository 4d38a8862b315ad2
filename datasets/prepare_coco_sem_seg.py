#!/usr/bin/env python
"""COCO 2017 instances → 81-class masks ``coco/masks/<id>.png`` (0 background, 1..80).

Overlaps: larger instances are painted first, so smaller ones stay on top (ties by annotation
id) — deterministic. Usage: python datasets/prepare_coco_sem_seg.py [--datasets-dir DIR]
[--splits val2017]

Each split is converted when its ``annotations/instances_<split>.json`` is present; a missing
one is named in a warning (``--splits``: named splits must be present).
"""
import argparse
import contextlib
import io
import logging
from pathlib import Path

from PIL import Image
from pycocotools.coco import COCO
from tqdm import tqdm

from hiervl.data.datasets.coco import coco_category_to_train_id, coco_image_mask
from hiervl.data.datasets.preparation import add_splits_argument, select_splits
from hiervl.data.datasets.semseg import datasets_root

logger = logging.getLogger("prepare_coco_sem_seg")

SPLITS = ("train2017", "val2017")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-dir", type=Path, default=datasets_root())
    add_splits_argument(parser, SPLITS)
    args = parser.parse_args(argv)
    root = args.datasets_dir / "coco"
    ann_files = {split: root / "annotations" / f"instances_{split}.json" for split in SPLITS}
    missing = {
        s: None if f.is_file() else f"{f} not found (COCO 2017 annotations)"
        for s, f in ann_files.items()
    }
    splits = select_splits(missing, args.splits, dataset="COCO")
    out = root / "masks"
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        ann_file = ann_files[split]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(ann_file))
        cat_to_train = coco_category_to_train_id(sorted(coco.cats))
        for image_id in tqdm(sorted(coco.imgs), desc=f"COCO {split}"):
            stem = Path(coco.imgs[image_id]["file_name"]).stem
            mask = coco_image_mask(coco, image_id, cat_to_train)
            Image.fromarray(mask).save(out / f"{stem}.png")
    logger.info("Wrote masks to %s", out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
