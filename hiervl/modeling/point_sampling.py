"""Point sampling of mask logits and targets (the memory-flat mask losses of PointRend /
Mask2Former): values of a map at continuous points, and uncertainty-guided point selection."""

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["point_sample", "uncertain_point_coords", "logit_uncertainty"]


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``maps`` at normalised points.

    Args:
        maps: ``[N, C, H, W]`` maps.
        coords: ``[N, P, 2]`` points as ``(x, y)`` in ``[0, 1]`` (pixel-area convention: 0 and 1
            are the outer borders of the map).

    Returns:
        ``[N, C, P]`` sampled values (zero padding outside the map).
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=False).squeeze(3)


def logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of binary mask logits: ``-|logit|`` (highest at the decision boundary).

    Args:
        logits: ``[N, 1, P]`` sampled logits.

    Returns:
        ``[N, 1, P]`` uncertainty.
    """
    return -logits.abs()


def uncertain_point_coords(
    logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Pick points for the mask losses: mostly where the prediction is uncertain, rest uniform.

    ``num_points * oversample_ratio`` uniform candidates are drawn per mask; the
    ``importance_sample_ratio * num_points`` most uncertain of them are kept and the remaining
    points are drawn uniformly.

    Args:
        logits: ``[N, 1, H, W]`` mask logits (no gradient is needed).
        uncertainty_fn: maps ``[N, 1, P]`` sampled logits to ``[N, 1, P]`` uncertainties.
        num_points: points per mask ``P``.
        oversample_ratio: candidates per kept point (>= 1).
        importance_sample_ratio: fraction of points chosen by uncertainty, in ``[0, 1]``.

    Returns:
        ``[N, P, 2]`` points, ``(x, y)`` in ``[0, 1]``.
    """
    if oversample_ratio < 1.0:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    num_masks = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = torch.rand(num_masks, num_candidates, 2, device=logits.device)
    if num_uncertain > 0:
        uncertainty = uncertainty_fn(point_sample(logits, coords))[:, 0, :]
        top = uncertainty.topk(num_uncertain, dim=1).indices
        coords = torch.gather(coords, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    else:
        coords = coords[:, :0]
    if num_random > 0:
        extra = torch.rand(num_masks, num_random, 2, device=logits.device)
        coords = torch.cat([coords, extra], dim=1)
    return coords
