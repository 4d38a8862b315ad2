"""The student's objective of one semi-supervised step (METHOD §8).

:class:`SemiSupervisedObjective` is the loss the optimiser steps on: the student's supervised
losses on the labelled batch plus ``SEMI.UNSUP_WEIGHT`` × the unlabelled objective — its
losses on the mixed strong views against their pseudo-labels (confidence weights, ruled-out
classes and pixels), with feature dropout, and the entropy of its predictions. The step
(:mod:`hiervl.engine.semi_step`) builds the pseudo-labelled views and hands them over as one
:class:`UnlabeledBatch`.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from hiervl.modeling.inference import semantic_map

__all__ = ["SemiSupervisedObjective", "UnlabeledBatch", "prediction_entropy"]


@dataclass
class UnlabeledBatch:
    """The pseudo-labelled unlabelled batch of one step (steps 2-4), what the student's
    unlabelled objective reads. Tensors are ``[B, ...]`` on the CPU.

    Attributes:
        weak: ``[B, 3, H, W]`` uint8 weak views, the teacher's input (not mixed).
        strong: ``[B, 3, H, W]`` uint8 strong views (not mixed).
        strong_mixed: ``[B, 3, H, W]`` uint8 strong views with the CutMix boxes pasted in: the
            student's input.
        labels: ``[B, H, W]`` long teacher argmax labels of the weak views (not mixed).
        conf: ``[B, H, W]`` float their confidences (not mixed).
        ignore: ``[B, H, W]`` bool padding and ignored pixels of the weak views (not mixed).
        cutmix: ``[B, H, W]`` bool, True where the pixels come from the mix partner.
        targets: ``[B, H, W]`` long mixed pseudo-labels, 255 = ignored.
        weights: ``[B, H, W]`` float confidence weights of the targets ("weight" mode), or
            None ("threshold" mode).
        absent: ``[B, C]`` bool classes each mixed image rules out (METHOD §8): their rows
            learn "no object"; never a class with target pixels.
        conf_threshold: ``SEMI.CONF_THRESHOLD``: "threshold" mode drops pixels below it (or
            below ``class_thresholds``); a class whose probability stays below
            ``1 - conf_threshold`` on every pixel is absent.
        ruled_out: ``[B, C, H, W]`` bool with ``SEMI.RULE_OUT_CLASSES_PER_PIXEL``: the
            pixels where the (mixed) teacher gives each class less than ``1 -
            conf_threshold``; a segment's mask learns "not here" on those of its class that
            have no target. None: off.
        class_thresholds: ``[C]`` class-balanced thresholds used in place of
            ``conf_threshold`` for the targets, or None.
        ground_truth: ``[B, H, W]`` long mixed ground truth of the crops (255 = ignore) with
            ``SEMI.UNLABELED_GROUND_TRUTH`` (a diagnosis), else None.
    """

    weak: torch.Tensor
    strong: torch.Tensor
    strong_mixed: torch.Tensor
    labels: torch.Tensor
    conf: torch.Tensor
    ignore: torch.Tensor
    cutmix: torch.Tensor
    targets: torch.Tensor
    weights: Optional[torch.Tensor]
    absent: torch.Tensor
    conf_threshold: float
    class_thresholds: Optional[torch.Tensor] = None
    ground_truth: Optional[torch.Tensor] = None
    ruled_out: Optional[torch.Tensor] = None


def prediction_entropy(outputs: Dict) -> torch.Tensor:
    """Mean per-pixel entropy of the normalised class distribution ``S(c, x)`` of decoder
    outputs (``pred_logits``, ``pred_masks``, ``keep``; ``semantic_map`` over the kept rows)."""
    sem = semantic_map(outputs, outputs["keep"])
    probs = sem / sem.sum(1, keepdim=True).clamp(min=1e-6)
    return -(probs * probs.clamp(min=1e-8).log()).sum(1).mean()


class SemiSupervisedObjective(nn.Module):
    """Student loss of one step: supervised + weighted unsupervised, in one ``forward``.

    Wrapping the student in this module (and this module in DDP) keeps one forward per
    backward, which DDP requires, although the student runs on two batches. The unlabelled
    objective lives here: the student's losses on the mixed strong views against their
    pseudo-labels (confidence weights, ruled-out classes: :class:`UnlabeledBatch`), with
    feature dropout, plus entropy minimisation of its predictions.
    """

    def __init__(self, model: nn.Module, *, entropy_weight: float = 0.0, feature_dropout=0.0):
        """
        Args:
            model: the student META_ARCH: ``model(labelled dicts)`` returns a dict of losses,
                ``model.losses(images, targets, labeled=False, weights=, absent=, ruled_out=,
                feature_dropout=, return_attn=)`` returns the losses and the decoder outputs
                of pseudo-labelled images (:meth:`hiervl.hiervl_model.HierVL.losses`).
            entropy_weight: weight of the mean entropy of the strong views' predictions
                (``SEMI.ENTROPY_WEIGHT``; 0 = off).
            feature_dropout: channel-dropout probability on the student's encoder features of
                the strong views (``SEMI.FEATURE_DROPOUT``; 0 = none).
        """
        super().__init__()
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"SEMI.FEATURE_DROPOUT must be in [0, 1), got {feature_dropout}")
        self.model = model
        self.entropy_weight = entropy_weight
        self.feature_dropout = feature_dropout

    def forward(
        self,
        labeled: List[dict],
        unlabeled: Optional[UnlabeledBatch] = None,
        unsup_weight: float = 1.0,
        views: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            labeled: mapped labelled dicts (``image``, ``sem_seg``).
            unlabeled: the step's pseudo-labelled strong views, or None.
            unsup_weight: factor of every unlabelled loss term.
            views: extra views for subclasses (HVLFormer); unused here.

        Returns:
            loss dict; unlabelled terms are suffixed ``_unsup``.
        """
        losses = dict(self.model(labeled))
        if unlabeled is not None:
            for name, value in self.unlabeled_losses(unlabeled, views).items():
                losses[name] = value * unsup_weight
        return losses

    def unlabeled_losses(
        self, batch: UnlabeledBatch, views: Optional[Dict[str, torch.Tensor]] = None
    ) -> Dict[str, torch.Tensor]:
        """The unlabelled terms (before ``unsup_weight``), named ``<term>_unsup``."""
        losses, _ = self.strong_view_losses(batch)
        return {f"{name}_unsup": value for name, value in losses.items()}

    def strong_view_losses(
        self, batch: UnlabeledBatch, return_attn: bool = False
    ) -> Tuple[Dict[str, torch.Tensor], Dict]:
        """The student's losses on the mixed strong views (``loss_entropy`` included) and its
        outputs (with CMSAM's attention when ``return_attn``)."""
        losses, outputs = self.model.losses(
            batch.strong_mixed,
            batch.targets,
            labeled=False,
            weights=batch.weights,
            absent=batch.absent,
            ruled_out=batch.ruled_out,
            feature_dropout=self.feature_dropout,
            return_attn=return_attn,
        )
        if self.entropy_weight > 0:
            losses["loss_entropy"] = self.entropy_weight * prediction_entropy(outputs)
        return losses, outputs
