"""HVLFormer's semi-supervised step: the core step plus CMCR over three views (METHOD §7).

Per unlabelled image the student sees the original view (the teacher's geometric crop), a
weak view (light colour jitter) and the CutMix'ed strong view. Besides the core losses
(supervised + pseudo-labelled strong views, exactly as the core step builds them), CMCR ties
the weak and the strong view's predictions (every decoder layer, and CMSAM's pixel-text
attention) to the original view's (detached): on confident pixels
(``HVLFORMER.CMCR_CONF_THRESHOLD``), and for the strong view outside its CutMix box (its class
term only on images without a box, whose rows still describe the same image). The original and
weak views need no targets: they run the model's forward without losses
(``HierVL.view_outputs``: no matching, no Eq. 6-7 encoder passes).
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode

from hiervl.engine import (
    HierVLTrainer,
    SemiSupervisedObjective,
    SemiSupervisedStep,
    UnlabeledBatch,
    stack_views,
)

from .cmcr import cmcr_losses

__all__ = ["HVLFormerObjective", "HVLFormerStep", "HVLFormerTrainer"]


class HVLFormerObjective(SemiSupervisedObjective):
    """Core objective + CMCR, in one forward (DDP-safe)."""

    def __init__(self, model, *, mask_weight: float, class_weight: float, attn_weight: float, **kw):
        """
        Args:
            model: the student META_ARCH (``losses(..., return_attn=True)`` and
                ``view_outputs``).
            mask_weight, class_weight, attn_weight: weights of the three CMCR terms.
            kw: the core objective's (``entropy_weight``, ``feature_dropout``).
        """
        super().__init__(model, **kw)
        self.weights = {"mask": mask_weight, "class": class_weight, "attn": attn_weight}

    def unlabeled_losses(
        self, batch: UnlabeledBatch, views: Optional[Dict[str, torch.Tensor]] = None
    ) -> Dict[str, torch.Tensor]:
        """The core unlabelled terms plus CMCR (``loss_cmcr_{mask,class,attn}_{weak,strong}``).

        Args:
            batch: the step's pseudo-labelled strong views.
            views: ``original`` / ``weak`` uint8 ``[B, 3, H, W]`` images (the strong views'
                size), ``valid`` ``[B, H, W]`` bool, ``strong_valid`` ``[B, H, W]`` bool,
                ``strong_class_weight`` ``[B]``; None = the core terms only.
        """
        if views is None:
            return super().unlabeled_losses(batch)
        strong_losses, strong_out = self.strong_view_losses(batch, return_attn=True)
        losses = {f"{name}_unsup": value for name, value in strong_losses.items()}
        with torch.no_grad():
            original_out = self.model.view_outputs(views["original"])
        weak_out = self.model.view_outputs(views["weak"])
        pairs = {
            "weak": cmcr_losses(original_out, weak_out, views["valid"]),
            "strong": cmcr_losses(
                original_out, strong_out, views["strong_valid"], views["strong_class_weight"]
            ),
        }
        for view, terms in pairs.items():
            for term, value in terms.items():
                losses[f"loss_cmcr_{term}_{view}"] = value * self.weights[term]
        return losses


class HVLFormerStep(SemiSupervisedStep):
    """:class:`SemiSupervisedStep` that also builds the original and weak views for CMCR."""

    def __init__(self, *args, cmcr_conf_threshold: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.cmcr_conf_threshold = cmcr_conf_threshold

    def compute_losses(
        self,
        labeled: List[dict],
        unlabeled_batch: Optional[List[dict]],
        mix_batch: Optional[List[dict]] = None,
    ):
        if unlabeled_batch is None:
            return super().compute_losses(labeled, None)
        # the core step's pseudo-labels, CutMix and strong views (one code path)
        batch = self.prepare_unlabeled(unlabeled_batch, mix_batch)
        weak_images, _ = stack_views(
            [d["image_weak"] for d in unlabeled_batch], size=batch.weak.shape[-2:]
        )
        valid = (batch.conf >= self.cmcr_conf_threshold) & ~batch.ignore
        views = {
            "original": batch.weak,
            "weak": weak_images,
            "valid": valid,
            "strong_valid": valid & ~batch.cutmix,
            "strong_class_weight": (~batch.cutmix.flatten(1).any(1)).float(),
        }
        with self.autocast():
            loss_dict = self.model(labeled, batch, self.current_unsup_weight(), views)
        stats = self.pseudo_label_stats(batch)
        stats["semi/cmcr_valid_ratio"] = float(valid.float().mean())
        return loss_dict, stats


class HVLFormerTrainer(HierVLTrainer):
    """:class:`HierVLTrainer` with the HVLFormer objective and step."""

    objective_class = HVLFormerObjective
    step_class = HVLFormerStep

    @classmethod
    def objective_kwargs(cls, cfg: CfgNode) -> Dict:
        hvlformer_cfg = cfg.HVLFORMER
        return {
            **super().objective_kwargs(cfg),
            "mask_weight": hvlformer_cfg.CMCR_MASK_WEIGHT,
            "class_weight": hvlformer_cfg.CMCR_CLASS_WEIGHT,
            "attn_weight": hvlformer_cfg.CMCR_ATTN_WEIGHT,
        }

    @classmethod
    def step_kwargs(cls, cfg: CfgNode) -> Dict:
        kwargs = super().step_kwargs(cfg)
        kwargs["cmcr_conf_threshold"] = cfg.HVLFORMER.CMCR_CONF_THRESHOLD
        return kwargs
