#!/usr/bin/env python
"""Draw what a split gives the trainer: ground truth, or the teacher's pseudo-labels.

Labelled split → one PNG per image: ``[image | ground truth]`` (2× the image's width).
Unlabelled split (metadata ``labeled=False``) → ``[image | pseudo-labels | kept pseudo-labels]``
(3× wide): the EMA teacher of ``MODEL.WEIGHTS`` (the student when the checkpoint has no
teacher) predicts the per-pixel class distribution with ``HierVL.semantic_probs`` — the
trainer's pseudo-label source — on the image resized like the test loader; the middle panel
draws every pixel's arg-max, the right panel greys out the pixels whose confidence is below
``SEMI.CONF_THRESHOLD`` (what threshold-mode self-training ignores; weight mode scales them by
the confidence instead). The share of kept pixels is logged per image and overall.

Examples::

    python tools/visualize_data.py --dataset hiervl_demo_train_labeled --output vis/ --limit 8
    python tools/visualize_data.py --config-file configs/demo/hiervl_demo.yaml \\
        --dataset hiervl_demo_train_unlabeled --output vis/ --limit 8 \\
        --opts MODEL.WEIGHTS output/model_final.pth SEMI.CONF_THRESHOLD 0.9
"""
import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

import hiervl.data  # noqa: F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: F401  (registers the HierVL META_ARCH)
from hiervl.config import load_config
from hiervl.data.dataset_mappers.augment import resize_for_test
from hiervl.data.image_io import load_semseg_mask
from hiervl.evaluation.visualization import (
    draw_semseg,
    grey_out,
    labels_and_confidence,
    metadata_of,
    side_by_side,
)
from hiervl.utils.checkpoint import load_inference_weights

logger = logging.getLogger("hiervl.visualize_data")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw a split's labels or pseudo-labels")
    parser.add_argument("--dataset", required=True, help="registered split")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument(
        "--config-file", default="", metavar="FILE", help="model config (unlabelled splits)"
    )
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0 = all)")
    parser.add_argument("--alpha", type=float, default=0.6, help="overlay opacity")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    return load_config(args.config_file, args.opts)


class TeacherPseudoLabeler:
    """The teacher's per-pixel class distribution on whole images (``semantic_probs``)."""

    def __init__(self, cfg: CfgNode):
        """
        Args:
            cfg: reads the model keys, ``MODEL.WEIGHTS``, ``MODEL.HIERVL.TEST.USE_TEACHER``,
                ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``.
        """
        self.model = build_model(cfg)
        self.model.eval()
        self.loaded = load_inference_weights(
            self.model, cfg.MODEL.WEIGHTS, use_teacher=cfg.MODEL.HIERVL.TEST.USE_TEACHER
        )
        device = next(self.model.parameters()).device
        self.mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=device).view(3, 1, 1)
        self.std = torch.tensor(cfg.MODEL.PIXEL_STD, device=device).view(3, 1, 1)
        self.device = device
        self.resize = resize_for_test(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """
        Args:
            image: ``[H, W, 3]`` uint8 RGB.

        Returns:
            ``[C, H, W]`` class distribution at the image's size (CPU).
        """
        height, width = image.shape[:2]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        x = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), device=self.device)
        x = (x.float() - self.mean) / self.std
        probs = self.model.semantic_probs(x[None])
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        return probs[0].float().cpu()


def draw_labelled(image: np.ndarray, gt: np.ndarray, metadata, alpha: float) -> np.ndarray:
    """``[image | ground truth]``, ``[H, 2W, 3]``."""
    return side_by_side([image, draw_semseg(image, gt, metadata, alpha=alpha)])


def draw_pseudo_labels(
    image: np.ndarray, probs: torch.Tensor, metadata, *, threshold: float, alpha: float
) -> Tuple[np.ndarray, float]:
    """``[image | pseudo-labels | kept pseudo-labels, rest greyed]`` (``[H, 3W, 3]``) and the
    fraction of pixels at or above ``threshold``."""
    labels, confidence = labels_and_confidence(probs)
    low = confidence < threshold
    every = draw_semseg(image, labels, metadata, alpha=alpha)
    kept_labels = labels.copy()
    kept_labels[low] = getattr(metadata, "ignore_label", 255)
    kept = grey_out(draw_semseg(image, kept_labels, metadata, alpha=alpha), low)
    return side_by_side([image, every, kept]), float(1.0 - low.mean())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = setup_cfg(args)
    metadata = metadata_of(args.dataset)
    records = DatasetCatalog.get(args.dataset)
    if args.limit > 0:
        records = records[: args.limit]
    labelled = getattr(metadata, "labeled", True) and all("sem_seg_file_name" in r for r in records)
    labeler = None
    if not labelled:
        labeler = TeacherPseudoLabeler(cfg)
        logger.info(
            "%s is unlabelled: pseudo-labels of the %s weights, threshold %.2f",
            args.dataset,
            labeler.loaded,
            cfg.SEMI.CONF_THRESHOLD,
        )
    os.makedirs(args.output, exist_ok=True)
    kept_fractions: List[float] = []
    failures: List[str] = []
    for record in tqdm(records, desc=args.dataset, unit="img"):
        path = record["file_name"]
        try:
            image = np.asarray(read_image(path, format="RGB"))
        except (OSError, ValueError) as e:
            logger.error("Cannot read image %s: %s", path, e)
            failures.append(path)
            continue
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        if labelled:
            gt = load_semseg_mask(record["sem_seg_file_name"])
            picture = draw_labelled(image, gt, metadata, args.alpha)
        else:
            picture, kept = draw_pseudo_labels(
                image,
                labeler(image),
                metadata,
                threshold=cfg.SEMI.CONF_THRESHOLD,
                alpha=args.alpha,
            )
            kept_fractions.append(kept)
            logger.info("%s: %.1f%% of pixels kept", name, 100 * kept)
        Image.fromarray(picture).save(os.path.join(args.output, name))
    if kept_fractions:
        logger.info(
            "Pixels at or above the threshold: %.1f%% on average over %d images",
            100 * float(np.mean(kept_fractions)),
            len(kept_fractions),
        )
    logger.info("Wrote %d picture(s) to %s", len(records) - len(failures), args.output)
    return 1 if failures else 0


if __name__ == "__main__":
    setup_logger(name="hiervl")
    sys.exit(main())
