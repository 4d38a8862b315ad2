"""HVLFormer's semi-supervised step: the core step plus CMCR over three views (METHOD §7).

Per unlabelled image the student sees the original view (the teacher's geometric crop), a
weak view (light colour jitter) and the CutMix'ed strong view. Besides the core losses
(supervised + pseudo-labelled strong views), CMCR ties, at every decoder layer, the weak and
the strong view's predictions to the original view's (detached): on confident pixels
(``HVLFORMER.CMCR_CONF_THRESHOLD``), and for the strong view outside its CutMix box (its class
term only on images without a box, whose rows still describe the same image).
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode

from hiervl.engine import HierVLTrainer, SemiSupervisedObjective, SemiSupervisedStep
from hiervl.engine.semi import finalize_pseudo_labels

from .cmcr import cmcr_losses

__all__ = ["HVLFormerObjective", "HVLFormerStep", "HVLFormerTrainer"]


class HVLFormerObjective(SemiSupervisedObjective):
    """Core objective + CMCR, in one forward (DDP-safe)."""

    def __init__(self, model, *, mask_weight: float, class_weight: float, attn_weight: float):
        """
        Args:
            model: the student META_ARCH (``forward(..., return_outputs=True)``).
            mask_weight, class_weight, attn_weight: weights of the three CMCR terms.
        """
        super().__init__(model)
        self.weights = {"mask": mask_weight, "class": class_weight, "attn": attn_weight}

    def forward(
        self,
        labeled: List[dict],
        unlabeled: Optional[List[dict]] = None,
        unsup_weight: float = 1.0,
        views: Optional[Dict] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            labeled, unlabeled, unsup_weight: as in :class:`SemiSupervisedObjective`.
            views: ``original`` / ``weak`` (lists of dicts like ``unlabeled``), ``valid``
                ``[B, H, W]`` bool, ``strong_valid`` ``[B, H, W]`` bool, ``strong_class_weight``
                ``[B]``; None = the core objective.

        Returns:
            loss dict; CMCR terms are ``loss_cmcr_{mask,class,attn}_{weak,strong}``.
        """
        if not unlabeled or views is None:
            return super().forward(labeled, unlabeled, unsup_weight)
        losses = dict(self.model(labeled))
        strong_losses, strong_out = self.model(unlabeled, return_outputs=True)
        for name, value in strong_losses.items():
            losses[f"{name}_unsup"] = value * unsup_weight
        with torch.no_grad():
            _, original_out = self.model(views["original"], return_outputs=True)
        _, weak_out = self.model(views["weak"], return_outputs=True)
        pairs = {
            "weak": cmcr_losses(original_out, weak_out, views["valid"]),
            "strong": cmcr_losses(
                original_out, strong_out, views["strong_valid"], views["strong_class_weight"]
            ),
        }
        for view, terms in pairs.items():
            for term, value in terms.items():
                losses[f"loss_cmcr_{term}_{view}"] = value * self.weights[term] * unsup_weight
        return losses


class HVLFormerStep(SemiSupervisedStep):
    """:class:`SemiSupervisedStep` that also builds the original and weak views for CMCR."""

    def __init__(self, *args, cmcr_conf_threshold: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.cmcr_conf_threshold = cmcr_conf_threshold

    def compute_losses(self, labeled: List[dict], unlabeled_batch: Optional[List[dict]]):
        if unlabeled_batch is None:
            return super().compute_losses(labeled, None)
        prep = self.prepare_unlabeled(unlabeled_batch)
        strong = self.strong_inputs(unlabeled_batch, prep)
        targets, weights = finalize_pseudo_labels(
            prep["labels"],
            prep["conf"],
            prep["ignore"],
            mode=self.pseudo_label_mode,
            threshold=self.conf_threshold,
        )
        weak_images = torch.stack([d["image_weak"] for d in unlabeled_batch])
        valid = (prep["conf"] >= self.cmcr_conf_threshold) & ~prep["ignore"]
        views = {
            "original": self.student_inputs(unlabeled_batch, prep["weak"], targets, weights),
            "weak": self.student_inputs(unlabeled_batch, weak_images, targets, weights),
            "valid": valid,
            "strong_valid": valid & ~prep["cutmix"],
            "strong_class_weight": (~prep["cutmix"].flatten(1).any(1)).float(),
        }
        with self.autocast():
            loss_dict = self.model(labeled, strong, self.current_unsup_weight(), views)
        stats = self.pseudo_label_stats(prep)
        stats["semi/cmcr_valid_ratio"] = float(valid.float().mean())
        return loss_dict, stats


class HVLFormerTrainer(HierVLTrainer):
    """:class:`HierVLTrainer` with the HVLFormer objective and step."""

    objective_class = HVLFormerObjective
    step_class = HVLFormerStep

    @classmethod
    def build_objective(cls, cfg: CfgNode, student):
        hv = cfg.HVLFORMER
        return HVLFormerObjective(
            student,
            mask_weight=hv.CMCR_MASK_WEIGHT,
            class_weight=hv.CMCR_CLASS_WEIGHT,
            attn_weight=hv.CMCR_ATTN_WEIGHT,
        )

    @classmethod
    def step_kwargs(cls, cfg: CfgNode) -> Dict:
        kwargs = super().step_kwargs(cfg)
        kwargs["cmcr_conf_threshold"] = cfg.HVLFORMER.CMCR_CONF_THRESHOLD
        return kwargs
