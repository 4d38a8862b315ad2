#!/usr/bin/env python
"""ADE20K raw annotations → ``annotations_detectron2/`` (0 → 255 ignore, k → k - 1).

Usage: python datasets/prepare_ade20k_sem_seg.py [--datasets-dir DIR]
"""
import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hiervl.data.datasets.ade20k import ade20k_reduce_zero_label
from hiervl.data.datasets.semseg import datasets_root

logger = logging.getLogger("prepare_ade20k_sem_seg")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-dir", type=Path, default=datasets_root())
    args = parser.parse_args(argv)
    root = args.datasets_dir / "ADEChallengeData2016"
    for split in ("training", "validation"):
        src = root / "annotations" / split
        if not src.is_dir():
            raise FileNotFoundError(f"{src} not found (ADEChallengeData2016)")
        dst = root / "annotations_detectron2" / split
        dst.mkdir(parents=True, exist_ok=True)
        for path in tqdm(sorted(src.glob("*.png")), desc=f"ADE20K {split}"):
            raw = np.asarray(Image.open(path))
            Image.fromarray(ade20k_reduce_zero_label(raw)).save(dst / path.name)
    logger.info("Wrote %s", root / "annotations_detectron2")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
