#!/usr/bin/env python
"""What a trained model does with other class names: a labelled split predicted over the
training classes and over a given list, compared.

For every image of the split (``--dataset``, default ``DATASETS.TEST[0]``) the model predicts
once over its training classes and once over ``--classes`` (``HierVL.set_inference_classes``).
Printed: the mIoU of both against the ground truth (over the training classes; a pixel given to
a name that stands for no training class counts as a miss), the share of pixels where the two
predictions agree, and the share of pixels each new name takes.

A given name stands for the training class of the same name; with ``--positional`` the i-th
name stands for the i-th training class (a renamed list, e.g. synonyms).

    python tools/eval_class_names.py --config-file configs/demo/hiervl_demo.yaml \\
        --classes "sky,cloud,sun,grass,water,sand,tree,house,road,car" \\
        --opts MODEL.WEIGHTS output/demo/model_final.pth
"""
import argparse
import logging
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

import hiervl.data  # noqa: F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: F401  (registers the HierVL META_ARCH)
from hiervl.config import load_config
from hiervl.data.image_io import load_semseg_mask
from hiervl.evaluation.predictor import HierVLPredictor

logger = logging.getLogger("hiervl.eval_class_names")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--classes", required=True, help="comma-separated class names")
    parser.add_argument(
        "--positional",
        action="store_true",
        help="the i-th name stands for the i-th training class (default: by equal name)",
    )
    parser.add_argument("--dataset", default="", help="labelled split (default DATASETS.TEST[0])")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0 = all)")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def miou(confusion: np.ndarray) -> float:
    """Mean IoU (percent) over the classes present in the ground truth or the prediction;
    ``confusion [P, C]``: rows predicted (the last rows may be "no training class"), columns
    ground truth."""
    num = confusion.shape[1]
    inter = np.diag(confusion[:num, :num])
    union = confusion.sum(0) + confusion[:num].sum(1) - inter
    present = union > 0
    return float(100 * (inter[present] / union[present]).mean())


def compare(
    predictor: HierVLPredictor,
    records: Sequence[Dict],
    names: List[str],
    stands_for: np.ndarray,
    ignore_label: int,
) -> Dict[str, object]:
    """Confusions of the training-class and the given-list predictions, their agreement and
    the pixel share of every new name. ``stands_for [C']``: training id of each name, -1."""
    model = predictor.model
    num = len(model.class_names)
    base_conf = np.zeros((num, num), dtype=np.int64)
    list_conf = np.zeros((num + 1, num), dtype=np.int64)  # row num: a name of no training class
    agree = total = 0
    new_pixels = np.zeros(len(names), dtype=np.int64)
    lookup = np.where(stands_for >= 0, stands_for, num)
    images = [np.asarray(read_image(r["file_name"], format="RGB")) for r in records]
    # One pass per class list (a list is set once: its text queries are encoded once).
    model.set_inference_classes(None)
    bases = [predictor(image)["sem_seg"].argmax(0).cpu().numpy() for image in tqdm(images)]
    model.set_inference_classes(names)
    for record, image, base in zip(records, tqdm(images), bases):
        gt = load_semseg_mask(record["sem_seg_file_name"])
        valid = gt != ignore_label
        given = predictor(image)["sem_seg"].argmax(0).cpu().numpy()
        mapped = lookup[given]
        base_conf += np.bincount(num * base[valid] + gt[valid], minlength=num * num).reshape(
            num, num
        )
        list_conf += np.bincount(
            num * mapped[valid] + gt[valid], minlength=(num + 1) * num
        ).reshape(num + 1, num)
        agree += int((mapped[valid] == base[valid]).sum())
        total += int(valid.sum())
        new_pixels += np.bincount(given[valid], minlength=len(names))
    model.set_inference_classes(None)
    return {
        "base_miou": miou(base_conf),
        "list_miou": miou(list_conf),
        "agreement": 100 * agree / max(total, 1),
        "new_share": {
            names[i]: 100 * new_pixels[i] / max(total, 1)
            for i in range(len(names))
            if stands_for[i] < 0
        },
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    names = [n.strip() for n in args.classes.split(",")]
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(dataset)
    if args.limit > 0:
        records = records[: args.limit]
    predictor = HierVLPredictor(cfg)
    training = predictor.model.class_names
    if args.positional:
        if len(names) != len(training):
            logger.error("--positional needs %d names, got %d", len(training), len(names))
            return 2
        stands_for = np.arange(len(names))
    else:
        stands_for = np.array([training.index(n) if n in training else -1 for n in names])
    ignore = MetadataCatalog.get(dataset).get("ignore_label", 255)
    result = compare(predictor, records, names, stands_for, ignore)
    new = ", ".join(f"{n} {share:.2f} %" for n, share in result["new_share"].items()) or "none"
    how = "by position" if args.positional else "by name"
    print(
        f"{dataset} ({len(records)} images), {predictor.loaded} weights\n"
        f"training classes ({len(training)}): mIoU {result['base_miou']:.2f}\n"
        f"given list ({len(names)} names, {int((stands_for >= 0).sum())} standing for training "
        f"classes {how}): mIoU {result['list_miou']:.2f}; same class as the training-class "
        f"prediction on {result['agreement']:.2f} % of the pixels; pixels of new names: {new}"
    )
    return 0


if __name__ == "__main__":
    setup_logger(name="hiervl")
    sys.exit(main())
