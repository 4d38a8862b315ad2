#!/usr/bin/env python
"""Cityscapes ``*_gtFine_labelIds.png`` → ``*_gtFine_labelTrainIds.png`` (19 classes, 255).

Our own copy of the official mapping (no cityscapesscripts needed).
Usage: python datasets/prepare_cityscapes_sem_seg.py [--datasets-dir DIR] [--splits val]

Each split (train, val, test) is converted when its ``gtFine/<split>`` folder is present; a
missing one is named in a warning (``--splits``: named splits must be present).
"""
import argparse
import logging
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from hiervl.data.datasets.cityscapes import cityscapes_label_to_train_id
from hiervl.data.datasets.preparation import add_splits_argument, select_splits
from hiervl.data.datasets.semseg import datasets_root
from hiervl.data.image_io import read_image

logger = logging.getLogger("prepare_cityscapes_sem_seg")

SPLITS = ("train", "val", "test")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-dir", type=Path, default=datasets_root())
    add_splits_argument(parser, SPLITS)
    args = parser.parse_args(argv)
    gt = args.datasets_dir / "cityscapes" / "gtFine"
    missing = {
        s: None if (gt / s).is_dir() else f"{gt / s} not found (Cityscapes gtFine_trainvaltest)"
        for s in SPLITS
    }
    count = 0
    for split in select_splits(missing, args.splits, dataset="Cityscapes"):
        files = sorted((gt / split).glob("*/*_gtFine_labelIds.png"))
        for path in tqdm(files, desc=f"Cityscapes {split}"):
            train_ids = cityscapes_label_to_train_id(read_image(str(path), kind="annotation"))
            out = path.with_name(path.name.replace("_labelIds.png", "_labelTrainIds.png"))
            Image.fromarray(train_ids).save(out)
        count += len(files)
    logger.info("Wrote %d labelTrainIds masks under %s", count, gt)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
