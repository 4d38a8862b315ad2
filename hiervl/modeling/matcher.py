"""Hungarian matching of the decoder's instance rows to ground-truth segments (METHOD.md §5).

Class rows are tied to their class by construction (see ``criterion.py``); only the learnable
instance rows are matched, with Mask2Former's cost: class probability + point-sampled mask BCE +
dice, evaluated on points shared by all predictions and targets of an image. Ignored pixels
(weight 0) take no part in the mask costs.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["HungarianMatcher", "batch_sigmoid_bce_cost", "batch_dice_cost"]


def batch_sigmoid_bce_cost(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Pairwise weighted binary cross-entropy between predictions and targets on shared points.

    Args:
        logits: ``[Q, P]`` mask logits at ``P`` points.
        targets: ``[T, P]`` target masks in ``[0, 1]`` at the same points.
        weights: ``[P]`` per-point weights (0 = ignored), or ``[T, P]`` per target.

    Returns:
        ``[Q, T]`` mean weighted BCE over the points.
    """
    num_points = max(logits.shape[1], 1)
    weights = weights.expand_as(targets)
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost = pos @ (targets * weights).T + neg @ ((1.0 - targets) * weights).T
    return cost / num_points


def batch_dice_cost(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Pairwise weighted dice loss ``1 - (2|p t| + 1) / (|p| + |t| + 1)`` on shared points.

    Args:
        logits: ``[Q, P]`` mask logits.
        targets: ``[T, P]`` target masks in ``[0, 1]``.
        weights: ``[P]`` per-point weights (0 = ignored), or ``[T, P]`` per target.

    Returns:
        ``[Q, T]`` dice costs.
    """
    weights = weights.expand_as(targets)
    probs = logits.sigmoid()
    weighted_targets = targets * weights
    numerator = 2.0 * probs @ weighted_targets.T
    denominator = probs @ weights.T + weighted_targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of prediction rows to ground-truth segments, per image.

    Built by the criterion (which reads the cost weights from the loss weights of the config);
    it holds no parameters.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ):
        """
        Args:
            cost_class: weight of ``-p_k(label)`` in the cost.
            cost_mask: weight of the point-sampled sigmoid BCE.
            cost_dice: weight of the point-sampled dice cost.
            num_points: uniformly drawn points per image on which mask costs are evaluated.
        """
        super().__init__()
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        rows: torch.Tensor,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            pred_logits: ``[B, K, C+1]`` class logits (last = no object).
            pred_masks: ``[B, K, h, w]`` mask logits.
            targets: per image ``{"labels": [T] long, "masks": [T, H, W] float,
                "weight": [H, W] or [T, H, W] float}`` (``H, W`` the padded image size, any
                multiple of ``h, w``; weight 0 = ignored pixel).
            rows: ``[K]`` bool, the rows that take part in the matching.

        Returns:
            per image ``(row_index [M] long, target_index [M] long)`` with
            ``M = min(#rows, T)``; row indices index the full ``K`` rows.
        """
        row_ids = torch.nonzero(rows, as_tuple=False).flatten()
        matches = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            if row_ids.numel() == 0 or labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.long)
                matches.append((empty, empty.clone()))
                continue
            logits = pred_logits[b, row_ids].float()
            masks = pred_masks[b, row_ids].float()
            cost = -self.cost_class * logits.softmax(-1)[:, labels]
            if self.cost_mask != 0.0 or self.cost_dice != 0.0:
                coords = torch.rand(1, self.num_points, 2, device=masks.device)
                pred_points = point_sample(masks[None], coords, align_corners=False)[0]
                tgt_points = point_sample(
                    target["masks"][None].float(), coords, align_corners=False
                )[0]
                # [1, P] shared by the segments, or [T, P] (per-segment weights): the costs
                # broadcast either to the targets
                weight = target["weight"].float()
                weight = point_sample(
                    weight.view(1, -1, *weight.shape[-2:]), coords, align_corners=False
                )[0]
                if self.cost_mask != 0.0:
                    cost = cost + self.cost_mask * batch_sigmoid_bce_cost(
                        pred_points, tgt_points, weight
                    )
                if self.cost_dice != 0.0:
                    cost = cost + self.cost_dice * batch_dice_cost(pred_points, tgt_points, weight)
            cost = torch.nan_to_num(cost, nan=1e4, posinf=1e4, neginf=-1e4).cpu()
            row, col = linear_sum_assignment(cost.numpy())
            matches.append(
                (
                    row_ids.cpu()[torch.as_tensor(row, dtype=torch.long)],
                    torch.as_tensor(col, dtype=torch.long),
                )
            )
        return matches

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
