#!/usr/bin/env python
"""Which unlabelled images to label next: a ranked CSV and a contact sheet of the top k.

The trained model (the EMA teacher when the checkpoint has one) predicts every image of the
unlabelled split (``SEMI.UNLABELED_DATASETS[0]``, or ``--dataset``, or the images of ``--input``);
each image is scored by its uncertainty, its classes (rare in the labelled split
``DATASETS.TRAIN[0]`` or uncertain over the pool) and its redundancy with the images ranked
above it (docs/LABEL_NEXT.md). Written to ``--output``:

- ``ranking.csv``: rank, image, score, uncertainty, balance, redundancy, predicted classes;
- ``top_k.png``: one row per top image: the image, its predicted map, its uncertainty heat map.

Examples::

    python tools/rank_unlabeled.py --config-file configs/demo/hiervl_demo.yaml \\
        --output output/label_next --top-k 8 --opts MODEL.WEIGHTS output/demo/model_final.pth
    # a folder dataset, once the masks of the chosen images are under masks/:
    python tools/rank_unlabeled.py --config-file configs/custom/hiervl_folder.yaml \\
        --promote output/label_next/ranking.csv --top-k 8 --opts DATASETS.CUSTOM.ROOT my_data
"""
import argparse
import csv
import logging
import os
import sys
from typing import List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger
from PIL import Image

import hiervl.data  # noqa: F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: F401  (registers the HierVL META_ARCH)
from hiervl.config import load_config
from hiervl.data.datasets.folder import IMAGE_EXTENSIONS, FolderDatasetError
from hiervl.data.datasets.promote import promote_to_labeled
from hiervl.evaluation.label_next import (
    UNCERTAINTY_KINDS,
    RankedImage,
    contact_sheet,
    labelled_class_frequency,
    rank_records,
)
from hiervl.evaluation.predictor import HierVLPredictor
from hiervl.evaluation.visualization import class_list_metadata

logger = logging.getLogger("hiervl.rank_unlabeled")

CSV_FIELDS = ("rank", "image", "score", "uncertainty", "balance", "redundancy", "classes")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--output", default="", help="folder for ranking.csv and top_k.png")
    parser.add_argument(
        "--dataset",
        default="",
        help="registered split to rank (default SEMI.UNLABELED_DATASETS[0])",
    )
    parser.add_argument("--input", default="", help="a folder of images to rank instead of a split")
    parser.add_argument("--top-k", type=int, default=10, help="images to label next")
    parser.add_argument("--uncertainty", choices=UNCERTAINTY_KINDS, default="entropy")
    parser.add_argument(
        "--balance-weight", type=float, default=0.5, help="weight of the class-balance term"
    )
    parser.add_argument(
        "--diversity-weight", type=float, default=0.5, help="weight of the redundancy penalty"
    )
    parser.add_argument("--limit", type=int, default=0, help="rank at most this many (0 = all)")
    parser.add_argument(
        "--thumb-height", type=int, default=160, help="row height of the contact sheet (pixels)"
    )
    parser.add_argument(
        "--promote",
        default="",
        metavar="CSV",
        help="instead of ranking: move the first --top-k images of this ranking into the "
        "labelled split of the folder dataset DATASETS.CUSTOM.ROOT (their masks must exist)",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def folder_images(folder: str) -> List[str]:
    """The images under ``folder`` (recursive, sorted)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--input must be a folder of images: {folder}")
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [
            os.path.join(dirpath, n)
            for n in sorted(filenames)
            if n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def write_csv(path: str, ranking: Sequence[RankedImage], class_names: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in ranking:
            classes = "; ".join(f"{class_names[c]} {100 * share:.1f}%" for c, share in r.classes)
            writer.writerow(
                [r.rank, r.name, f"{r.score:.4f}", f"{r.uncertainty:.4f}", f"{r.balance:.4f}"]
                + [f"{r.redundancy:.4f}", classes]
            )


def read_csv_images(path: str, top_k: int) -> List[str]:
    """The images of the first ``top_k`` ranks of a ``ranking.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: int(row["rank"]))
    return [row["image"] for row in rows[:top_k]]


def promote(cfg: CfgNode, args: argparse.Namespace) -> int:
    root = cfg.DATASETS.CUSTOM.ROOT
    if not root:
        logger.error("--promote edits a folder dataset's split files: set DATASETS.CUSTOM.ROOT")
        return 2
    images = read_csv_images(args.promote, args.top_k)
    try:
        result = promote_to_labeled(root, images)
    except FolderDatasetError as e:
        logger.error("%s", e)
        return 1
    for image, mask in result.moved:
        logger.info("labelled: %s %s", image, mask)
    if result.already_labeled:
        logger.info("already labelled: %s", ", ".join(result.already_labeled))
    print(f"moved {len(result.moved)} image(s) into {result.split_dir / 'labeled.txt'}")
    return 0


def rank(cfg: CfgNode, args: argparse.Namespace) -> int:
    if not args.output:
        logger.error("--output is required to rank")
        return 2
    if args.input:
        files = folder_images(args.input)
    else:
        dataset = args.dataset or (cfg.SEMI.UNLABELED_DATASETS or [""])[0]
        if not dataset:
            logger.error("No unlabelled split: pass --dataset or --input")
            return 2
        files = [r["file_name"] for r in DatasetCatalog.get(dataset)]
    if args.limit > 0:
        files = files[: args.limit]
    if not files:
        logger.error("No images to rank")
        return 1
    predictor = HierVLPredictor(cfg)
    model = predictor.model
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    frequency = None
    labelled = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    if model.inference_class_names == model.class_names and all(
        "sem_seg_file_name" in r for r in labelled
    ):
        frequency = labelled_class_frequency(
            labelled, len(model.class_names), ignore_label=metadata.get("ignore_label", 255)
        )
    else:
        logger.info("Class rarity from the pool's predictions (no labelled split of these classes)")
    logger.info("Ranking %d images with the %s weights", len(files), predictor.loaded)
    ranking = rank_records(
        predictor,
        files,
        kind=args.uncertainty,
        balance_weight=args.balance_weight,
        diversity_weight=args.diversity_weight,
        num_select=args.top_k,
        labelled_frequency=frequency,
    )
    os.makedirs(args.output, exist_ok=True)
    names = model.inference_class_names
    csv_path = os.path.join(args.output, "ranking.csv")
    write_csv(csv_path, ranking, names)
    sheet = contact_sheet(
        predictor,
        ranking[: args.top_k],
        metadata if names == model.class_names else class_list_metadata(names, metadata),
        kind=args.uncertainty,
        height=args.thumb_height,
    )
    sheet_path = os.path.join(args.output, "top_k.png")
    Image.fromarray(sheet).save(sheet_path)
    print(f"wrote {csv_path} ({len(ranking)} images) and {sheet_path} (top {args.top_k})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    if args.top_k < 1:
        logger.error("--top-k must be at least 1")
        return 2
    return promote(cfg, args) if args.promote else rank(cfg, args)


if __name__ == "__main__":
    setup_logger(name="hiervl")
    setup_logger(name="fvcore")
    sys.exit(main())
