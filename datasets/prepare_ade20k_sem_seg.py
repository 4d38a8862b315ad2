#!/usr/bin/env python
"""ADE20K raw annotations → ``annotations_detectron2/`` (0 → 255 ignore, k → k - 1).

Usage: python datasets/prepare_ade20k_sem_seg.py [--datasets-dir DIR] [--splits validation]

Each split (training, validation) is converted when its ``annotations/<split>`` folder is
present; a missing one is named in a warning (``--splits``: named splits must be present).
"""
import argparse
import logging
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from hiervl.data.datasets.ade20k import ade20k_reduce_zero_label
from hiervl.data.datasets.preparation import add_splits_argument, select_splits
from hiervl.data.datasets.semseg import datasets_root
from hiervl.data.image_io import read_image

logger = logging.getLogger("prepare_ade20k_sem_seg")

SPLITS = ("training", "validation")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-dir", type=Path, default=datasets_root())
    add_splits_argument(parser, SPLITS)
    args = parser.parse_args(argv)
    root = args.datasets_dir / "ADEChallengeData2016"
    sources = {split: root / "annotations" / split for split in SPLITS}
    missing = {s: None if p.is_dir() else f"{p} not found" for s, p in sources.items()}
    for split in select_splits(missing, args.splits, dataset="ADE20K (ADEChallengeData2016)"):
        dst = root / "annotations_detectron2" / split
        dst.mkdir(parents=True, exist_ok=True)
        for path in tqdm(sorted(sources[split].glob("*.png")), desc=f"ADE20K {split}"):
            raw = read_image(str(path), kind="annotation")
            Image.fromarray(ade20k_reduce_zero_label(raw)).save(dst / path.name)
        logger.info("Wrote %s", dst)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
