#!/usr/bin/env python
"""VOC 2012 + SBD → ``VOCdevkit/VOC2012/SegmentationClassAug/<id>.png`` (single-channel ids).

VOC's own masks (palette PNGs, 255 on object boundaries) are kept where they exist; SBD's
``cls/<id>.mat`` give the masks of the other train_aug images.
Usage: python datasets/prepare_voc_sem_seg.py [--datasets-dir DIR] [--sbd-dir DIR]
"""
import argparse
import logging
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from hiervl.data.datasets.semseg import datasets_root
from hiervl.data.datasets.voc import sbd_mat_to_mask, voc_png_to_mask

logger = logging.getLogger("prepare_voc_sem_seg")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-dir", type=Path, default=datasets_root())
    parser.add_argument("--sbd-dir", type=Path, default=None, help="default: <datasets>/SBD")
    args = parser.parse_args(argv)
    voc = args.datasets_dir / "VOCdevkit" / "VOC2012"
    sbd_cls = (args.sbd_dir or args.datasets_dir / "SBD") / "dataset" / "cls"
    if not (voc / "SegmentationClass").is_dir():
        raise FileNotFoundError(f"{voc / 'SegmentationClass'} not found (VOC 2012 devkit)")
    out = voc / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    voc_masks = sorted((voc / "SegmentationClass").glob("*.png"))
    for path in tqdm(voc_masks, desc="VOC masks"):
        Image.fromarray(voc_png_to_mask(path)).save(out / path.name)
    have = {p.stem for p in voc_masks}
    mats = sorted(p for p in sbd_cls.glob("*.mat") if p.stem not in have)
    if not sbd_cls.is_dir():
        logger.warning("%s not found: SegmentationClassAug holds VOC's masks only", sbd_cls)
    for path in tqdm(mats, desc="SBD .mat"):
        Image.fromarray(sbd_mat_to_mask(path)).save(out / f"{path.stem}.png")
    logger.info("Wrote %d masks to %s", len(voc_masks) + len(mats), out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
