"""Pseudo-labels and CutMix: tensor functions of the semi-supervised step (METHOD §8), and the
labelled class prior that distribution alignment reads once from the masks."""

import math
from typing import Iterable, Optional, Tuple, Union

import numpy as np
import torch

from hiervl.data.image_io import load_semseg_mask

__all__ = [
    "pseudo_labels_from_probs",
    "class_pixel_prior",
    "align_distribution",
    "mean_class_probability",
    "class_peak_probability",
    "class_balanced_thresholds",
    "finalize_pseudo_labels",
    "sample_cutmix_masks",
    "cutmix",
    "unsup_rampup",
]


@torch.no_grad()
def pseudo_labels_from_probs(probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels and confidences of per-pixel class distributions.

    Args:
        probs: ``[B, C, H, W]`` class distribution (teacher's ``semantic_probs``).

    Returns:
        labels ``[B, H, W]`` long (argmax) and confidence ``[B, H, W]`` float (its probability).
    """
    conf, labels = probs.float().max(dim=1)
    return labels, conf


def class_pixel_prior(
    mask_files: Iterable[str], num_classes: int, ignore_label: int = 255
) -> torch.Tensor:
    """Class frequencies of the labelled pixels of a split: the target of
    :func:`align_distribution`.

    Args:
        mask_files: label PNGs (train ids, ``ignore_label`` = unlabelled).
        num_classes: ``C``.
        ignore_label: pixels left out.

    Returns:
        ``[C]`` float64 summing to 1.

    Raises:
        ValueError: no mask file, or no labelled pixel in them.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    files = list(mask_files)
    if not files:
        raise ValueError("distribution alignment needs the masks of a labelled split; got none")
    for name in files:
        mask = load_semseg_mask(name)
        mask = mask[(mask != ignore_label) & (mask >= 0) & (mask < num_classes)]
        counts += np.bincount(mask, minlength=num_classes)
    if counts.sum() == 0:
        raise ValueError(f"no labelled pixel in {len(files)} masks (all ignore_label?)")
    return torch.from_numpy(counts / counts.sum())


@torch.no_grad()
def align_distribution(
    probs: torch.Tensor,
    prior: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    *,
    batch_mean: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Distribution alignment of per-pixel class distributions to a class prior.

    ``p'(c | x) ∝ p(c | x) · prior(c) / p̄(c)``, with ``p̄`` the mean prediction over the
    valid pixels of the batch: classes the teacher predicts more often than the labelled data
    has them are damped, the rarer ones raised, before the confidence threshold picks the
    pseudo-labels.

    Args:
        probs: ``[B, C, H, W]`` distributions over classes.
        prior: ``[C]`` target class frequencies (:func:`class_pixel_prior`).
        valid: ``[B, H, W]`` bool pixels that count in ``p̄`` (e.g. not padding); None = all.
        batch_mean: ``[C]`` a ``p̄`` computed by the caller (e.g. averaged over processes);
            None computes it from ``probs`` and ``valid``.
        eps: keeps the ratio finite for classes with no predicted mass.

    Returns:
        ``[B, C, H, W]`` aligned distributions (summing to 1 over classes).
    """
    if batch_mean is None:
        batch_mean = mean_class_probability(probs, valid)
    ratio = (prior.to(probs.device, torch.float32) + eps) / (batch_mean.to(probs.device) + eps)
    aligned = probs.float() * ratio[None, :, None, None]
    return aligned / aligned.sum(1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def mean_class_probability(probs: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """``[C]`` mean of ``probs [B, C, H, W]`` over the ``valid [B, H, W]`` pixels (all if None)."""
    flat = probs.float().permute(1, 0, 2, 3).reshape(probs.shape[1], -1)
    if valid is not None:
        flat = flat[:, valid.reshape(-1).to(flat.device)]
    if flat.shape[1] == 0:
        return torch.full((probs.shape[1],), 1.0 / probs.shape[1], device=probs.device)
    return flat.mean(1)


@torch.no_grad()
def class_peak_probability(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` largest probability of each class over the ``valid [B, H, W]`` pixels of each
    image of ``probs [B, C, H, W]`` (0 for an image without a valid pixel)."""
    valid = valid.to(probs.device)[:, None]
    return torch.where(valid, probs.float(), torch.zeros((), device=probs.device)).amax((2, 3))


@torch.no_grad()
def class_balanced_thresholds(
    labels: torch.Tensor,
    conf: torch.Tensor,
    ignore_mask: Optional[torch.Tensor],
    *,
    num_classes: int,
    threshold: float,
    keep_ratio: float,
) -> torch.Tensor:
    """Per-class confidence thresholds of class-balanced self-training (Zou et al., CBST).

    A single global threshold keeps the large, easy classes and drops every pixel of the small,
    hard ones, whose confidences stay lower; the student then learns on the unlabelled images
    that those classes are absent ("no object" for their class rows) and forgets them. Here
    each class predicted in the batch keeps at least the ``keep_ratio`` most confident of its
    pixels: ``τ_c = min(threshold, quantile(conf[labels == c], 1 - keep_ratio))``.

    Args:
        labels: ``[B, H, W]`` long teacher argmax labels (before CutMix).
        conf: ``[B, H, W]`` float confidences.
        ignore_mask: ``[B, H, W]`` bool, True on padded pixels (left out), or None.
        num_classes: ``C``.
        threshold: the global threshold (upper bound of every ``τ_c``).
        keep_ratio: fraction in ``[0, 1]`` of each class's pixels that is always kept; 0 gives
            the global threshold for every class.

    Returns:
        ``[C]`` float thresholds (``threshold`` for classes not predicted in the batch).
    """
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
    thresholds = torch.full((num_classes,), float(threshold))
    if keep_ratio <= 0:
        return thresholds
    valid = torch.isfinite(conf)
    if ignore_mask is not None:
        valid = valid & ~ignore_mask
    labels, conf = labels[valid].cpu(), conf[valid].float().cpu()
    for c in torch.unique(labels).tolist():
        if 0 <= c < num_classes:
            quantile = torch.quantile(conf[labels == c], 1.0 - keep_ratio)
            thresholds[c] = min(float(threshold), float(quantile))
    return thresholds


@torch.no_grad()
def finalize_pseudo_labels(
    labels: torch.Tensor,
    conf: torch.Tensor,
    ignore_mask: Optional[torch.Tensor],
    *,
    mode: str,
    threshold: Union[float, torch.Tensor],
    ignore_label: int = 255,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Turn (possibly CutMix'ed) pseudo-labels into training targets.

    Args:
        labels: ``[B, H, W]`` long class ids.
        conf: ``[B, H, W]`` float confidences in ``[0, 1]``.
        ignore_mask: ``[B, H, W]`` bool, True on padded pixels (always ignored), or None.
            Pixels with a non-finite confidence are ignored too.
        mode: "threshold" — pixels with ``conf < threshold`` become ``ignore_label``, no weight;
            "weight" — every pixel is kept with loss weight ``conf``.
        threshold: confidence threshold of the "threshold" mode: a float, or ``[C]`` per-class
            thresholds (:func:`class_balanced_thresholds`) applied by each pixel's label.
        ignore_label: label of ignored pixels.

    Returns:
        targets ``[B, H, W]`` long and per-pixel weights ``[B, H, W]`` float (None in
        "threshold" mode).
    """
    targets = labels.clone()
    drop = ~torch.isfinite(conf)
    if ignore_mask is not None:
        drop = drop | ignore_mask
    if mode == "threshold":
        if torch.is_tensor(threshold):
            per_class = threshold.to(conf.device, torch.float32)
            threshold = per_class[labels.clamp(0, per_class.numel() - 1)]
        targets[drop | (conf < threshold)] = ignore_label
        return targets, None
    if mode == "weight":
        targets[drop] = ignore_label
        return targets, conf.float().masked_fill(drop, 0.0)
    raise ValueError(f"Unknown SEMI.PSEUDO_LABEL_MODE {mode!r}: use 'threshold' or 'weight'")


def sample_cutmix_masks(
    batch_size: int,
    height: int,
    width: int,
    *,
    prob: float,
    area_range: Tuple[float, float] = (0.02, 0.4),
    ratio_range: Tuple[float, float] = (0.3, 1 / 0.3),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """One CutMix box per image, present with probability ``prob`` (UniMatch's box recipe).

    Args:
        batch_size, height, width: shape of the masks.
        prob: probability that an image gets a box.
        area_range: box area as a fraction of the image, uniform.
        ratio_range: box aspect ratio (h / w), log-uniform.
        generator: torch generator (default: the global one).

    Returns:
        ``[B, H, W]`` bool, True inside the box (pixels taken from the partner image).
    """
    masks = torch.zeros(batch_size, height, width, dtype=torch.bool)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    for i in range(batch_size):
        if torch.rand((), generator=generator).item() >= prob:
            continue
        area = uniform(*area_range) * height * width
        ratio = math.exp(uniform(math.log(ratio_range[0]), math.log(ratio_range[1])))
        box_h = min(height, max(1, int(round(math.sqrt(area * ratio)))))
        box_w = min(width, max(1, int(round(math.sqrt(area / ratio)))))
        y0 = int(torch.randint(0, height - box_h + 1, (), generator=generator))
        x0 = int(torch.randint(0, width - box_w + 1, (), generator=generator))
        masks[i, y0 : y0 + box_h, x0 : x0 + box_w] = True
    return masks


def cutmix(x: torch.Tensor, partner: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """CutMix: ``partner`` pasted into ``x`` inside ``masks``.

    Args:
        x: ``[B, ..., H, W]`` (images ``[B, 3, H, W]``, labels / confidences ``[B, H, W]``).
        partner: like ``x``, each image's mix partner (e.g. from a second unlabelled batch).
        masks: ``[B, H, W]`` bool, True where the partner's pixels are taken.

    Returns:
        tensor like ``x``: ``x[i]`` outside ``masks[i]``, ``partner[i]`` inside.
    """
    m = masks.to(x.device)
    m = m.view(m.shape[0], *([1] * (x.dim() - 3)), *m.shape[-2:])
    return torch.where(m, partner.to(x.device), x)


def unsup_rampup(step: int, length: int) -> float:
    """Factor in ``[0, 1]`` of the unlabelled losses ``step`` iterations after they switch on:
    ``exp(-5 (1 - x)^2)`` with ``x = clip(step / length, 0, 1)`` (Laine & Aila's ramp-up), 1
    when ``length <= 0``. It keeps the first, worst pseudo-labels from pulling the student
    away from what the labelled images taught it."""
    if length <= 0:
        return 1.0
    x = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - x) ** 2)
