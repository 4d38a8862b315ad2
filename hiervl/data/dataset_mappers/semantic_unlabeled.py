"""Mapper of unlabelled images: a weak view and strong view(s) of one crop."""

import copy
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable

from ..image_io import load_semseg_mask, read_image
from .augment import apply_photometric, crop_params, random_photometric_params, resize_pad_crop
from .build import DATASET_MAPPER_REGISTRY

__all__ = ["SemanticUnlabeledMapper"]


class SemanticUnlabeledMapper:
    """Turn an unlabelled dataset dict into a weak view and strong views of the same crop.

    Steps:
        1. deep-copy the dict; read ``file_name`` (``INPUT.FORMAT``); its mask is read only with
           ``keep_ground_truth`` (``SEMI.UNLABELED_GROUND_TRUTH``, a diagnosis);
        2. weak view: random resize (``INPUT.RESIZE_RATIO_RANGE``), pad to ``INPUT.CROP.SIZE``
           (image 0), random crop, horizontal flip with probability 0.5 — ``ignore_mask`` marks
           the padded pixels;
        3. each strong view: the weak view's pixels with colour jitter
           (``SEMI.COLOR_JITTER_PROB`` / ``_STRENGTH``), grayscale (``SEMI.GRAYSCALE_PROB``) and
           Gaussian blur (``SEMI.BLUR_PROB``), drawn independently per view; padded pixels are
           set back to 0;
        4. return ``image`` (weak) uint8 ``[3, H, W]``, ``image_strong`` uint8 ``[3, H, W]``
           (the first strong view), ``image_strongs`` (list of all of them) and ``ignore_mask``
           bool ``[H, W]``; with ``keep_ground_truth`` also ``sem_seg_gt`` long ``[H, W]`` (the
           mask through the weak view's resize, crop and flip; 255 = ignore and padding).
    CutMix mixes whole batches and lives in :mod:`hiervl.engine.semi`, not here.
    """

    @configurable
    def __init__(
        self,
        *,
        image_format: str,
        ratio_range: Tuple[float, float],
        crop_size: Optional[Tuple[int, int]],
        color_jitter_prob: float,
        color_jitter_strength: Sequence[float],
        grayscale_prob: float,
        blur_prob: float,
        num_strong_views: int = 1,
        keep_ground_truth: bool = False,
    ):
        """
        Args:
            image_format: image format for ``read_image`` ("RGB").
            ratio_range: ``(low, high)`` random resize ratio relative to the image size.
            crop_size: ``(h, w)`` crop, None for no crop (then nothing is padded).
            color_jitter_prob: probability of colour jitter in a strong view.
            color_jitter_strength: ``(brightness, contrast, saturation, hue)`` strengths.
            grayscale_prob: probability of grayscale in a strong view.
            blur_prob: probability of Gaussian blur in a strong view.
            num_strong_views: number of independently drawn strong views (>= 1).
            keep_ground_truth: read each image's mask (``sem_seg_file_name``, an error when
                there is none) and return it as ``sem_seg_gt`` aligned with the weak view; for
                diagnosis only (the random draws, hence the views, are the same either way).
        """
        if num_strong_views < 1:
            raise ValueError(f"num_strong_views must be >= 1, got {num_strong_views}")
        self.image_format = image_format
        self.ratio_range = tuple(ratio_range)
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.photometric = {
            "jitter_prob": color_jitter_prob,
            "jitter_strength": tuple(color_jitter_strength),
            "grayscale_prob": grayscale_prob,
            "blur_prob": blur_prob,
        }
        self.num_strong_views = num_strong_views
        self.keep_ground_truth = keep_ground_truth

    @classmethod
    def from_config(cls, cfg):
        return {
            "image_format": cfg.INPUT.FORMAT,
            "ratio_range": tuple(cfg.INPUT.RESIZE_RATIO_RANGE),
            "crop_size": tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None,
            "color_jitter_prob": cfg.SEMI.COLOR_JITTER_PROB,
            "color_jitter_strength": tuple(cfg.SEMI.COLOR_JITTER_STRENGTH),
            "grayscale_prob": cfg.SEMI.GRAYSCALE_PROB,
            "blur_prob": cfg.SEMI.BLUR_PROB,
            "keep_ground_truth": cfg.SEMI.UNLABELED_GROUND_TRUTH != "none",
        }

    def strong_view(self, weak: torch.Tensor, padded: torch.Tensor, rng) -> torch.Tensor:
        """One strong view ``[3, H, W]`` uint8 of the weak view ``weak`` ``[3, H, W]`` uint8."""
        params = random_photometric_params(rng, **self.photometric)
        strong = apply_photometric(weak, params)
        return strong.masked_fill(padded[None], 0)

    def geometric_view(self, dataset_dict: dict, rng) -> Tuple[torch.Tensor, torch.Tensor]:
        """Read the image and return its weak view ``[3, H, W]`` uint8 and padding ``[H, W]``
        (with ``keep_ground_truth``, the mask's view goes to ``dataset_dict["sem_seg_gt"]``)."""
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        mask = None
        if self.keep_ground_truth:
            mask_file = dataset_dict.get("sem_seg_file_name")
            if not mask_file:
                raise ValueError(
                    f"SEMI.UNLABELED_GROUND_TRUTH needs the masks of the unlabelled images, but "
                    f"{dataset_dict['file_name']} has none in its dataset dict"
                )
            mask = load_semseg_mask(mask_file)
        height, width = image.shape[:2]
        dataset_dict.setdefault("height", height)
        dataset_dict.setdefault("width", width)
        params = crop_params(rng, height, width, self.ratio_range, self.crop_size)
        image, mask, padded = resize_pad_crop(image, mask, crop_size=self.crop_size, **params)
        if mask is not None:
            dataset_dict["sem_seg_gt"] = torch.as_tensor(
                np.ascontiguousarray(mask), dtype=torch.long
            )
        weak = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return weak, torch.from_numpy(padded)

    def __call__(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """
        Args:
            dataset_dict: ``file_name``, ``image_id`` (a ``sem_seg_file_name`` is dropped, after
                use with ``keep_ground_truth``).
            rng: generator of this sample; default: seeded from numpy's global generator.

        Returns:
            a new dict with ``image`` / ``image_strong`` uint8 ``[3, H, W]``, ``image_strongs``
            (list of ``num_strong_views`` such tensors) and ``ignore_mask`` bool ``[H, W]``.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        if rng is None:
            rng = np.random.default_rng(np.random.randint(2**31))
        weak, padded = self.geometric_view(dataset_dict, rng)
        dataset_dict.pop("sem_seg_file_name", None)
        strongs: List[torch.Tensor] = [
            self.strong_view(weak, padded, rng) for _ in range(self.num_strong_views)
        ]
        dataset_dict["image"] = weak
        dataset_dict["image_strong"] = strongs[0]
        dataset_dict["image_strongs"] = strongs
        dataset_dict["ignore_mask"] = padded
        return dataset_dict


@DATASET_MAPPER_REGISTRY.register()
def semantic_unlabeled(cfg, is_train: bool = True) -> SemanticUnlabeledMapper:
    """Unlabelled views: weak (geometric) and strong (photometric) of the same crop."""
    return SemanticUnlabeledMapper(cfg)
