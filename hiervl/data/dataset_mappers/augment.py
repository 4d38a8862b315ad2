"""Augmentation primitives of the mappers, with explicit random generators.

Geometric steps work on numpy ``H x W (x 3)`` arrays; photometric steps on uint8 tensors
``[3, H, W]`` through ``torchvision.transforms.v2.functional``. Random parameters are drawn
from a ``numpy.random.Generator`` passed in, so a sample's views are reproducible from a seed.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import transforms as T
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "apply_photometric",
    "crop_params",
    "random_photometric_params",
    "resize_pad_crop",
    "resize_for_test",
]


def resize_for_test(min_size: int, max_size: int) -> Optional[T.ResizeShortestEdge]:
    """detectron2's test-time resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``): the shortest
    edge to ``min_size``, the longest at most ``max_size``; None when ``min_size`` is 0 (images
    at their own size). The one rule of the test mapper, the predictor and the tools."""
    if min_size <= 0:
        return None
    return T.ResizeShortestEdge([min_size, min_size], max_size)


def crop_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    ratio_range: Sequence[float],
    crop_size: Optional[Sequence[int]],
) -> Dict[str, float]:
    """Draw a random resize ratio, crop offset and flip for an ``height x width`` image.

    Args:
        rng: generator of the sample.
        height, width: size of the input image.
        ratio_range: ``(low, high)`` of the uniform resize ratio (relative to the input size).
        crop_size: ``(h, w)`` of the crop, or None for no crop.

    Returns:
        dict with ``scale`` (float), ``y0``, ``x0`` (crop offset in the resized, padded image)
        and ``flip`` (bool).
    """
    scale = float(rng.uniform(ratio_range[0], ratio_range[1]))
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    y0 = x0 = 0
    if crop_size is not None:
        ch, cw = crop_size
        y0 = int(rng.integers(0, max(new_h, ch) - ch + 1))
        x0 = int(rng.integers(0, max(new_w, cw) - cw + 1))
    return {"scale": scale, "y0": y0, "x0": x0, "flip": bool(rng.random() < 0.5)}


def resize_pad_crop(
    image: np.ndarray,
    mask: Optional[np.ndarray],
    *,
    scale: float,
    crop_size: Optional[Sequence[int]],
    y0: int,
    x0: int,
    flip: bool,
    ignore_value: int = 255,
) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Resize by ``scale``, pad up to the crop, crop at ``(y0, x0)`` and optionally flip.

    Args:
        image: ``[H, W, 3]`` uint8.
        mask: ``[H, W]`` integer class ids, or None.
        scale: resize ratio (bilinear for the image, nearest for the mask).
        crop_size: ``(h, w)`` or None (no pad, no crop).
        y0, x0: crop offset in the padded image.
        flip: horizontal flip.
        ignore_value: mask value of padded pixels (images are padded with 0).

    Returns:
        image ``[h, w, 3]`` uint8, mask ``[h, w]`` (or None), and ``padded`` ``[h, w]`` bool
        (True where the pixel is padding).
    """
    height, width = image.shape[:2]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) != (height, width):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if mask is not None:
            mask = cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    padded = np.zeros((new_h, new_w), dtype=bool)
    if crop_size is not None:
        ch, cw = crop_size
        pad_h, pad_w = max(ch - new_h, 0), max(cw - new_w, 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
            padded = np.pad(padded, ((0, pad_h), (0, pad_w)), constant_values=True)
            if mask is not None:
                mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=ignore_value)
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        padded = padded[y0 : y0 + ch, x0 : x0 + cw]
        if mask is not None:
            mask = mask[y0 : y0 + ch, x0 : x0 + cw]
    if flip:
        image, padded = image[:, ::-1], padded[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    image = np.ascontiguousarray(image)
    mask = np.ascontiguousarray(mask) if mask is not None else None
    return image, mask, np.ascontiguousarray(padded)


def random_photometric_params(
    rng: np.random.Generator,
    *,
    jitter_prob: float,
    jitter_strength: Sequence[float],
    grayscale_prob: float,
    blur_prob: float,
) -> Dict[str, object]:
    """Draw the parameters of one strong view (UniMatch / SemiVL recipe).

    Args:
        rng: generator of the sample.
        jitter_prob: probability of colour jitter.
        jitter_strength: ``(brightness, contrast, saturation, hue)`` strengths; factors are
            uniform in ``[1 - s, 1 + s]`` (hue: ``[-s, s]``), applied in random order.
        grayscale_prob: probability of converting to grayscale.
        blur_prob: probability of a Gaussian blur with sigma uniform in ``[0.1, 2.0]``.

    Returns:
        dict with ``jitter`` (list of ``(op, factor)`` in application order, empty when
        skipped), ``grayscale`` (bool), ``blur_sigma`` (float, 0 = no blur).
    """
    jitter = []
    if rng.random() < jitter_prob:
        b, c, s, h = jitter_strength
        ops = [
            ("brightness", float(rng.uniform(max(0.0, 1 - b), 1 + b))),
            ("contrast", float(rng.uniform(max(0.0, 1 - c), 1 + c))),
            ("saturation", float(rng.uniform(max(0.0, 1 - s), 1 + s))),
            ("hue", float(rng.uniform(-h, h))),
        ]
        jitter = [ops[i] for i in rng.permutation(len(ops))]
    grayscale = bool(rng.random() < grayscale_prob)
    blur_sigma = float(rng.uniform(0.1, 2.0)) if rng.random() < blur_prob else 0.0
    return {"jitter": jitter, "grayscale": grayscale, "blur_sigma": blur_sigma}


_JITTER_OPS = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": TF.adjust_hue,
}


def apply_photometric(image: torch.Tensor, params: Dict[str, object]) -> torch.Tensor:
    """Apply the photometric parameters of :func:`random_photometric_params`.

    Args:
        image: ``[3, H, W]`` uint8 RGB.
        params: output of :func:`random_photometric_params`.

    Returns:
        ``[3, H, W]`` uint8.
    """
    for op, factor in params["jitter"]:
        if op != "hue" or factor != 0.0:
            image = _JITTER_OPS[op](image, factor)
    if params["grayscale"]:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    sigma = params["blur_sigma"]
    if sigma > 0:
        radius = max(1, math.ceil(3 * sigma))
        limit = (min(image.shape[-2:]) - 1) // 2
        radius = max(1, min(radius, limit)) if limit >= 1 else 0
        if radius:
            image = TF.gaussian_blur(image, kernel_size=[2 * radius + 1] * 2, sigma=[sigma] * 2)
    return image
