"""Set losses of the dual-query decoder (METHOD.md §4-5): class CE + point-sampled mask BCE and
dice + the alignment loss (Eq. 2), with deep supervision over every decoder layer.

Assignment: a class row ``(c, e)`` is tied to class ``c`` — its target is the segment of ``c``
when ``c`` occurs in the image and the row is kept, otherwise "no object"; instance rows are
Hungarian-matched (``matcher.py``) to the image's segments (one per present class for semantic
ground truth). Pixels with label ``ignore_value`` or weight 0 take no part in the mask losses;
``weight`` maps (confidence-weighted pseudo-labels) scale the per-pixel mask losses, and may be
per segment (pseudo-labels with pixels where a class is ruled out: ``semantic_targets``).

Targets that may be incomplete (pseudo-labels, METHOD §8): ``absent`` names the classes known to
be absent from each image. A row with no segment then targets "no object" only when that is
known — a class row whose class is known absent, an instance row that claims (argmax) no class,
a class known absent, or a class that has a segment (a duplicate) — and takes no part in the
classification loss otherwise.

Mask losses are computed at points (PointRend / Mask2Former): detectron2's ``point_sample`` and
``get_uncertain_point_coords_with_randomness`` pick them, mostly where the prediction is
uncertain, among the pixels that have a target.
"""

import logging
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from torch import nn

from hiervl.utils.comm import all_reduce_mean

from .matcher import HungarianMatcher

__all__ = ["HierVLCriterion", "segment_weights", "semantic_targets"]

logger = logging.getLogger(__name__)


def semantic_targets(
    sem_seg: torch.Tensor,
    num_classes: int,
    *,
    weight: Optional[torch.Tensor] = None,
    ignore_value: int = 255,
    ruled_out: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Turn a semantic label map into per-class segments.

    Args:
        sem_seg: ``[H, W]`` long, train ids ``0..C-1`` and ``ignore_value``.
        num_classes: ``C``; ids outside ``[0, C)`` are treated as ignored.
        weight: optional ``[H, W]`` float per-pixel loss weight (default 1).
        ignore_value: label of ignored pixels.
        ruled_out: optional ``[C, H, W]`` bool, pseudo-labels only: where each class is known
            not to be. A segment's mask then also has a target on the pixels without a label
            where its class is ruled out: 0 ("not this class here"), weight 1.

    Returns:
        ``{"labels": [T] long, "masks": [T, H, W] float, "weight": [H, W] float}``: the present
        classes in increasing order, their binary masks, and the pixel weights (0 where ignored);
        with ``ruled_out`` the weights are per segment, ``[T, H, W]``.
    """
    valid = (sem_seg != ignore_value) & (sem_seg >= 0) & (sem_seg < num_classes)
    pixel_weight = valid.float() if weight is None else weight.float() * valid.float()
    labels = torch.unique(sem_seg[valid & (pixel_weight > 0)])
    masks = (sem_seg[None] == labels[:, None, None]).float()
    if ruled_out is not None:
        if tuple(ruled_out.shape) != (num_classes, *sem_seg.shape):
            raise ValueError(
                f"ruled_out must be {[num_classes, *sem_seg.shape]}, got {list(ruled_out.shape)}"
            )
        negatives = ruled_out.to(sem_seg.device)[labels] & (pixel_weight == 0)[None]
        pixel_weight = torch.where(negatives, 1.0, pixel_weight[None].expand_as(masks))
    return {"labels": labels.long(), "masks": masks, "weight": pixel_weight}


def segment_weights(target: Dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """The pixel weights ``[N, H, W]`` of the segments ``index [N]`` of a target of
    :func:`semantic_targets` (shared ``[H, W]`` weights or per-segment ``[T, H, W]``)."""
    weight = target["weight"]
    if weight.dim() == 3:
        return weight[index]
    return weight[None].expand(index.numel(), -1, -1)


def logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of sampled binary mask logits ``[N, 1, P]``: ``-|logit|`` (highest at the
    decision boundary)."""
    return -logits.abs()


def _labelled_logit_uncertainty(points: torch.Tensor) -> torch.Tensor:
    """Uncertainty of sampled ``[N, 2, P]`` (mask logit, pixel weight) pairs: the logit's
    uncertainty where the weight is positive, ``-inf`` on ignored pixels."""
    logits, weight = points[:, :1], points[:, 1:]
    return torch.where(weight > 0, logit_uncertainty(logits), torch.full_like(logits, -math.inf))


def _reduced_count(count: float, device: torch.device) -> float:
    """Average a count over distributed workers (unchanged outside distributed training)."""
    value = all_reduce_mean(torch.tensor([count], dtype=torch.float32, device=device))
    return max(value.item(), 1.0)


class HierVLCriterion(nn.Module):
    """Weighted losses of one or all decoder layers. A term whose weight is 0 is not computed."""

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float,
        mask_weight: float,
        dice_weight: float,
        align_weight: float,
        no_object_weight: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        deep_supervision: bool = True,
    ):
        """
        Args:
            num_classes: number of classes ``C`` (the no-object class is ``C``).
            matcher: assigns instance rows to segments.
            class_weight: weight of the classification cross-entropy.
            mask_weight: weight of the point-sampled mask BCE.
            dice_weight: weight of the point-sampled dice loss.
            align_weight: weight of the alignment loss (Eq. 2).
            no_object_weight: CE weight of the "no object" class.
            num_points: points per mask for the mask losses.
            oversample_ratio: candidate points per kept point for importance sampling.
            importance_sample_ratio: fraction of points chosen by uncertainty.
            deep_supervision: also supervise ``outputs["aux_outputs"]`` (suffix ``_<i>``).

        Raises:
            ValueError: ``oversample_ratio`` below 1 or ``importance_sample_ratio`` outside
                ``[0, 1]``.
        """
        super().__init__()
        if oversample_ratio < 1.0:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
        if not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(
                f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.align_weight = align_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        loss = cfg.MODEL.HIERVL.LOSS
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(
                cost_class=loss.CLASS_WEIGHT,
                cost_mask=loss.MASK_WEIGHT,
                cost_dice=loss.DICE_WEIGHT,
                num_points=loss.TRAIN_NUM_POINTS,
            ),
            "class_weight": loss.CLASS_WEIGHT,
            "mask_weight": loss.MASK_WEIGHT,
            "dice_weight": loss.DICE_WEIGHT,
            "align_weight": loss.ALIGN_WEIGHT,
            "no_object_weight": loss.NO_OBJECT_WEIGHT,
            "num_points": loss.TRAIN_NUM_POINTS,
            "oversample_ratio": loss.OVERSAMPLE_RATIO,
            "importance_sample_ratio": loss.IMPORTANCE_SAMPLE_RATIO,
            "deep_supervision": cfg.MODEL.HIERVL.DECODER.DEEP_SUPERVISION,
        }

    def forward(
        self,
        outputs: Dict,
        targets: List[Dict[str, torch.Tensor]],
        *,
        row_classes: torch.Tensor,
        row_keep: torch.Tensor,
        text_embeds: Optional[torch.Tensor] = None,
        absent: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: decoder outputs ``{"pred_logits": [B,K,C+1], "pred_masks": [B,K,h,w],
                "pred_embeds": [B,K,Dt], "aux_outputs": [same keys, ...]}``.
            targets: per image, the output of :func:`semantic_targets` on the padded label map
                (``H, W`` the padded input size).
            row_classes: ``[K]`` long, the class of each class row, ``-1`` for instance rows.
            row_keep: ``[B, K]`` bool, rows taking part in attention (masked class rows are
                supervised as "no object").
            text_embeds: ``[C, Dt]`` class text embeddings (required when the alignment weight
                is non-zero).
            absent: ``[B, C]`` bool, classes known to be absent from each image's target; rows
                without a segment whose "no object" target is not known take no part in the
                classification loss (module docstring). None: the targets are complete (ground
                truth), every row without a segment targets "no object".

        Returns:
            weighted losses ``loss_ce``, ``loss_mask``, ``loss_dice``, ``loss_align`` of the last
            layer, and the same names with suffix ``_<i>`` for auxiliary layer ``i``.
        """
        if self.align_weight != 0.0 and text_embeds is None:
            raise ValueError("text_embeds are required when the alignment loss is enabled")
        num_masks = self._count_masks(outputs, targets, row_classes, row_keep)
        losses = self._layer_losses(
            outputs, targets, row_classes, row_keep, text_embeds, num_masks, absent
        )
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._layer_losses(
                    aux, targets, row_classes, row_keep, text_embeds, num_masks, absent
                )
                losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def _count_masks(self, outputs, targets, row_classes, row_keep) -> float:
        """Number of supervised (row, segment) pairs in the batch, averaged over workers."""
        num_instance_rows = int((row_classes < 0).sum())
        count = 0
        for b, target in enumerate(targets):
            labels = target["labels"]
            tied = row_classes[(row_classes >= 0) & row_keep[b]]
            count += int(torch.isin(tied, labels).sum()) + min(num_instance_rows, labels.numel())
        return _reduced_count(count, outputs["pred_logits"].device)

    def assign(
        self,
        outputs: Dict,
        targets: List[Dict[str, torch.Tensor]],
        row_classes: torch.Tensor,
        row_keep: torch.Tensor,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Targets of the rows of one layer's outputs.

        Returns:
            per image ``(row_index [M], target_index [M])`` on the device of the outputs: the
            tied class rows (kept rows whose class is present) and the matched instance rows.
        """
        device = outputs["pred_logits"].device
        instance_rows = row_classes < 0
        if bool(instance_rows.any()):
            matched = self.matcher(
                outputs["pred_logits"], outputs["pred_masks"], targets, instance_rows
            )
        else:
            matched = None
        assignments = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            # position of each class in `labels`, -1 when absent
            lookup = torch.full((self.num_classes,), -1, dtype=torch.long, device=device)
            lookup[labels] = torch.arange(labels.numel(), device=device)
            safe = row_classes.clamp(min=0)
            target_of_row = torch.where(row_classes >= 0, lookup[safe], -1)
            tied = (target_of_row >= 0) & row_keep[b]
            rows = [torch.nonzero(tied, as_tuple=False).flatten()]
            cols = [target_of_row[rows[0]]]
            if matched is not None:
                rows.append(matched[b][0].to(device))
                cols.append(matched[b][1].to(device))
            assignments.append((torch.cat(rows), torch.cat(cols)))
        return assignments

    def _layer_losses(
        self, outputs, targets, row_classes, row_keep, text_embeds, num_masks, absent=None
    ):
        assignments = self.assign(outputs, targets, row_classes, row_keep)
        losses = {}
        if self.class_weight != 0.0:
            losses["loss_ce"] = self.class_weight * self._class_loss(
                outputs, targets, assignments, row_classes, absent
            )
        if self.mask_weight != 0.0 or self.dice_weight != 0.0:
            bce, dice = self._mask_losses(outputs, targets, assignments, num_masks)
            if self.mask_weight != 0.0:
                losses["loss_mask"] = self.mask_weight * bce
            if self.dice_weight != 0.0:
                losses["loss_dice"] = self.dice_weight * dice
        if self.align_weight != 0.0:
            losses["loss_align"] = self.align_weight * self._align_loss(
                outputs, targets, assignments, text_embeds
            )
        return losses

    def _class_loss(self, outputs, targets, assignments, row_classes, absent=None):
        """Cross-entropy over the rows; assigned rows target their segment's class, the others
        "no object" — with ``absent`` given, only where that is known (:meth:`_unknown_rows`).
        Images without a single valid pixel carry no information on presence and are left out.
        """
        logits = outputs["pred_logits"].float()
        batch, num_rows, _ = logits.shape
        target_classes = torch.full(
            (batch, num_rows), self.num_classes, dtype=torch.long, device=logits.device
        )
        assigned = torch.zeros(batch, num_rows, dtype=torch.bool, device=logits.device)
        image_valid = torch.ones(batch, dtype=torch.bool, device=logits.device)
        for b, ((rows, cols), target) in enumerate(zip(assignments, targets)):
            target_classes[b, rows] = target["labels"][cols]
            assigned[b, rows] = True
            image_valid[b] = bool((target["weight"] > 0).any())
        if absent is not None:
            unknown = self._unknown_rows(logits, targets, row_classes, absent) & ~assigned
            target_classes[unknown] = -100  # cross_entropy's ignore_index
            image_valid &= (target_classes != -100).any(1)
        if not bool(image_valid.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits[image_valid].transpose(1, 2),
            target_classes[image_valid],
            weight=self.empty_weight.to(logits.dtype),
            ignore_index=-100,
        )

    def _unknown_rows(self, logits, targets, row_classes, absent) -> torch.Tensor:
        """``[B, K]`` bool: rows whose "no object" target is not known, were they unassigned.

        A class row speaks for its class: "no object" is known when the class is known absent
        (a present class's row without a segment was dropped by the relevance gate: unknown).
        An instance row speaks for the class it claims (argmax of its logits, no gradient):
        "no object" is known when it claims no object, a class known absent, or a class that has
        a segment (which another row is matched to); a row claiming a class the target cannot
        speak for may be the one that would describe it.
        """
        device = logits.device
        absent = absent.to(device=device, dtype=torch.bool)
        present = torch.zeros_like(absent)
        for b, target in enumerate(targets):
            present[b, target["labels"].to(device)] = True
        row_classes = row_classes.to(device)
        class_rows = row_classes >= 0
        claim = logits.detach().argmax(-1)  # [B, K], C = no object
        claim_real = claim.clamp(max=self.num_classes - 1)
        claim_known = (claim == self.num_classes) | torch.gather(absent | present, 1, claim_real)
        row_known = absent[:, row_classes.clamp(min=0)]
        return torch.where(class_rows[None], ~row_known, ~claim_known)

    def _mask_losses(self, outputs, targets, assignments, num_masks):
        """Point-sampled weighted BCE and dice over the assigned (row, segment) pairs."""
        pred_masks = outputs["pred_masks"]
        batch_ids = torch.cat([torch.full_like(rows, b) for b, (rows, _) in enumerate(assignments)])
        row_ids = torch.cat([rows for rows, _ in assignments])
        if row_ids.numel() == 0:
            zero = pred_masks.sum() * 0.0
            return zero, zero
        src = pred_masks[batch_ids, row_ids].float()[:, None]
        tgt = torch.cat([t["masks"][cols] for t, (_, cols) in zip(targets, assignments)])[:, None]
        weight = torch.cat(
            [segment_weights(t, cols) for t, (_, cols) in zip(targets, assignments)]
        )[:, None]
        with torch.no_grad():
            # Uncertain points are chosen among pixels with a target (weight > 0): ignored
            # pixels (unsure pseudo-labels, padding) carry no loss and would waste points.
            # (the weights at the mask logits' resolution: > 0 where any pixel has a target)
            coarse_weight = F.adaptive_avg_pool2d(weight.float(), src.shape[-2:])
            coords = get_uncertain_point_coords_with_randomness(
                torch.cat([src.detach(), coarse_weight], dim=1),
                _labelled_logit_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            tgt_points = point_sample(tgt.float(), coords, align_corners=False)[:, 0]
            weight_points = point_sample(weight.float(), coords, align_corners=False)[:, 0]
        src_points = point_sample(src, coords, align_corners=False)[:, 0]
        bce = F.binary_cross_entropy_with_logits(src_points, tgt_points, reduction="none")
        # Mean over the points that have a target, so that a mask's BCE does not shrink with
        # the ignored fraction of its image (dice is already normalised by its own sums).
        counted = (weight_points > 0).sum(1).clamp(min=1)
        bce = ((bce * weight_points).sum(1) / counted).sum() / num_masks
        probs = src_points.sigmoid() * weight_points
        numerator = 2.0 * (probs * tgt_points).sum(-1)
        denominator = probs.sum(-1) + (tgt_points * weight_points).sum(-1)
        dice = (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks
        return bce, dice

    def _align_loss(self, outputs, targets, assignments, text_embeds) -> torch.Tensor:
        """Eq. 2: ``||phi(z_k) - t_{y_k}||^2`` between normalised vectors, mean over assigned
        rows."""
        embeds = outputs["pred_embeds"]
        picked, labels = [], []
        for b, ((rows, cols), target) in enumerate(zip(assignments, targets)):
            picked.append(embeds[b, rows])
            labels.append(target["labels"][cols])
        picked = torch.cat(picked)
        if picked.shape[0] == 0:
            return embeds.sum() * 0.0
        text = F.normalize(text_embeds.float(), dim=-1)[torch.cat(labels)]
        picked = F.normalize(picked.float(), dim=-1)
        return (picked - text).pow(2).sum(-1).mean()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, class_weight={self.class_weight}, "
            f"mask_weight={self.mask_weight}, dice_weight={self.dice_weight}, "
            f"align_weight={self.align_weight}, num_points={self.num_points}"
        )
