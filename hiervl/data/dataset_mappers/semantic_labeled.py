"""Mapper of labelled images: random resize, crop, flip."""

import copy
import logging
from typing import Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable

from ..datasets.semseg import validate_semseg_sample
from ..image_io import read_image
from .augment import crop_params, resize_for_test, resize_pad_crop
from .build import DATASET_MAPPER_REGISTRY

__all__ = ["SemanticLabeledMapper"]

logger = logging.getLogger(__name__)


def _largest_class_fraction(mask: np.ndarray, ignore_label: int) -> float:
    """Fraction of the non-ignored pixels taken by the most frequent class (0 if none)."""
    valid = mask[mask != ignore_label]
    if valid.size == 0:
        return 0.0
    return float(np.bincount(valid.ravel()).max()) / valid.size


class SemanticLabeledMapper:
    """Turn a labelled dataset dict into the model's training (or test) input.

    Training steps:
        1. deep-copy the dict; read ``file_name`` (``INPUT.FORMAT``) and ``sem_seg_file_name``;
           the mask must have the image's size and hold ids ``0..num_classes-1`` or
           ``ignore_label`` only, else a ``ValueError`` names the files (an unreadable file
           raises :class:`~hiervl.data.image_io.ImageReadError` naming it);
        2. resize by a ratio uniform in ``INPUT.RESIZE_RATIO_RANGE`` (bilinear / nearest);
        3. pad to the crop (image 0, mask ``ignore_label``) and take a random
           ``INPUT.CROP.SIZE`` crop, re-drawn up to 10 times while one class covers more than
           ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` of it;
        4. horizontal flip with probability 0.5;
        5. return ``image`` uint8 ``[3, H, W]`` and ``sem_seg`` long ``[H, W]``.
    Test steps: read the image only and resize it as detectron2's test mapper does
    (``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``; its own size when
    ``MIN_SIZE_TEST`` is 0): ``image`` uint8 ``[3, H, W]``, with ``height`` / ``width`` of the
    original (the model's output size).
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        image_format: str,
        ratio_range: Tuple[float, float],
        crop_size: Optional[Tuple[int, int]],
        single_category_max_area: float = 1.0,
        num_classes: Optional[int] = None,
        ignore_label: int = 255,
        min_size_test: int = 0,
        max_size_test: int = 1333,
    ):
        """
        Args:
            is_train: training (augment, load the mask) or test (image only).
            image_format: image format for ``read_image`` ("RGB").
            ratio_range: ``(low, high)`` random resize ratio relative to the image size.
            crop_size: ``(h, w)`` training crop, None for no crop.
            single_category_max_area: maximum fraction of a crop one class may cover.
            num_classes: ``C``, the model's class count: a mask id outside ``0..C-1`` that is
                not ``ignore_label`` is an error (the loss would crash on it or drop it
                silently). None checks the size only.
            ignore_label: mask value of ignored and padded pixels.
            min_size_test / max_size_test: test-time resize (:func:`~.augment.resize_for_test`);
                ``min_size_test`` 0 keeps test images at their size.
        """
        self.is_train = is_train
        self.image_format = image_format
        self.ratio_range = tuple(ratio_range)
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.single_category_max_area = single_category_max_area
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.resize_test = resize_for_test(min_size_test, max_size_test)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "ratio_range": tuple(cfg.INPUT.RESIZE_RATIO_RANGE),
            "crop_size": tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None,
            "single_category_max_area": cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
            "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        }

    def __call__(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """
        Args:
            dataset_dict: ``file_name``, ``sem_seg_file_name`` (training), ``image_id``.
            rng: generator of this sample; default: seeded from numpy's global generator.

        Returns:
            a new dict with ``image`` uint8 ``[3, H, W]``, ``height``, ``width`` and, in
            training, ``sem_seg`` long ``[H, W]`` (``ignore_label`` on ignored / padded pixels).
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        height, width = image.shape[:2]
        dataset_dict.setdefault("height", height)
        dataset_dict.setdefault("width", width)
        if not self.is_train:
            if self.resize_test is not None:
                image = self.resize_test.get_transform(image).apply_image(image)
            dataset_dict["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return dataset_dict
        if rng is None:
            rng = np.random.default_rng(np.random.randint(2**31))
        mask_file = dataset_dict.pop("sem_seg_file_name")
        mask = read_image(mask_file, kind="mask")
        if mask.ndim == 3:
            mask = mask[..., 0]
        validate_semseg_sample(
            (height, width),
            mask,
            num_classes=self.num_classes if self.num_classes is not None else 256,
            ignore_label=self.ignore_label,
            file_name=mask_file,
            image_file=dataset_dict["file_name"],
        )
        mask = mask.astype(np.uint8)
        for _ in range(10):
            params = crop_params(rng, height, width, self.ratio_range, self.crop_size)
            out_image, out_mask, _ = resize_pad_crop(
                image, mask, crop_size=self.crop_size, ignore_value=self.ignore_label, **params
            )
            if (
                self.single_category_max_area >= 1.0
                or _largest_class_fraction(out_mask, self.ignore_label)
                < self.single_category_max_area
            ):
                break
        dataset_dict["image"] = torch.from_numpy(np.ascontiguousarray(out_image.transpose(2, 0, 1)))
        dataset_dict["sem_seg"] = torch.from_numpy(out_mask.astype(np.int64))
        return dataset_dict


@DATASET_MAPPER_REGISTRY.register()
def semantic_labeled(cfg, is_train: bool = True) -> SemanticLabeledMapper:
    """Labelled view: random resize, crop, flip (test: the image as it is)."""
    return SemanticLabeledMapper(cfg, is_train=is_train)
