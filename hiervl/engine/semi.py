"""Pseudo-labels and CutMix: pure tensor functions of the semi-supervised step (METHOD §8)."""

import math
from typing import Optional, Tuple

import torch

__all__ = [
    "pseudo_labels_from_probs",
    "finalize_pseudo_labels",
    "sample_cutmix_masks",
    "mix_with_partner",
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


@torch.no_grad()
def finalize_pseudo_labels(
    labels: torch.Tensor,
    conf: torch.Tensor,
    ignore_mask: Optional[torch.Tensor],
    *,
    mode: str,
    threshold: float,
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
        threshold: confidence threshold of the "threshold" mode.
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


def mix_with_partner(x: torch.Tensor, masks: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """CutMix ``x`` with ``x[partner]`` inside ``masks``.

    Args:
        x: ``[B, ..., H, W]`` (images ``[B, 3, H, W]``, labels / confidences ``[B, H, W]``).
        masks: ``[B, H, W]`` bool, True where the partner's pixels are taken.
        partner: ``[B]`` long, index of each image's partner in the batch.

    Returns:
        tensor like ``x``: ``x[i]`` outside ``masks[i]``, ``x[partner[i]]`` inside.
    """
    m = masks.to(x.device)
    m = m.view(m.shape[0], *([1] * (x.dim() - 3)), *m.shape[-2:])
    return torch.where(m, x[partner.to(x.device)], x)
