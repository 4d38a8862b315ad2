#!/usr/bin/env python
"""Cityscapes ``*_gtFine_labelIds.png`` → ``*_gtFine_labelTrainIds.png`` (19 classes, 255).

Our own copy of the official mapping (no cityscapesscripts needed).
Usage: python datasets/prepare_cityscapes_sem_seg.py [--datasets-dir DIR]
"""
import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hiervl.data.datasets.cityscapes import cityscapes_label_to_train_id
from hiervl.data.datasets.semseg import datasets_root

logger = logging.getLogger("prepare_cityscapes_sem_seg")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-dir", type=Path, default=datasets_root())
    args = parser.parse_args(argv)
    gt = args.datasets_dir / "cityscapes" / "gtFine"
    if not gt.is_dir():
        raise FileNotFoundError(f"{gt} not found (Cityscapes gtFine_trainvaltest)")
    files = sorted(gt.glob("*/*/*_gtFine_labelIds.png"))
    for path in tqdm(files, desc="Cityscapes"):
        train_ids = cityscapes_label_to_train_id(np.asarray(Image.open(path)))
        out = path.with_name(path.name.replace("_labelIds.png", "_labelTrainIds.png"))
        Image.fromarray(train_ids).save(out)
    logger.info("Wrote %d labelTrainIds masks under %s", len(files), gt)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
