"""Optimiser parameter groups, gradient clipping and the poly learning-rate schedule (METHOD §8).

The groups are our own loop, as Mask2Former's are: detectron2's
``get_default_optimizer_params`` has no rule for embeddings (``nn.Embedding`` weights, prompt
tokens and other free-standing embeddings: ``SOLVER.WEIGHT_DECAY_EMBED``), lets a bias
override beat the norm-layer rule, and merges the groups, so that they lose their names.
Clipping is detectron2's (``maybe_add_gradient_clipping``: "value", "norm" per parameter)
plus Mask2Former's "full_model" (one norm over all gradients), inside ``optimizer.step``,
hence after ``GradScaler`` unscaled the gradients.
"""

import logging
import re
from typing import Dict, List, Sequence, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch import nn

__all__ = [
    "BACKBONE_MODULES",
    "CLIP_TYPES",
    "NORM_TYPES",
    "EMBED_NAME_PATTERN",
    "build_param_groups",
    "build_hiervl_optimizer",
    "build_poly_lr_scheduler",
    "build_hiervl_lr_scheduler",
    "optimizer_with_clipping",
    "warn_long_warmup",
]

logger = logging.getLogger(__name__)

# Modules of the HierVL META_ARCH whose parameters get SOLVER.BACKBONE_MULTIPLIER: the
# pretrained CLIP visual tower only. Every other trainable parameter, the feature pyramid
# added inside the image encoder included, gets SOLVER.HEAD_MULTIPLIER (build_param_groups).
BACKBONE_MODULES = ("image_encoder.visual",)

# SOLVER.CLIP_GRADIENTS.CLIP_TYPE: detectron2's two and Mask2Former's "full_model".
CLIP_TYPES = ("full_model", "norm", "value")

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)
# Names of free-standing parameters (not the weight of a Linear / conv layer, so a classifier
# called ``class_embed`` still decays) treated as embeddings under SOLVER.WEIGHT_DECAY_EMBED:
# prompt tokens, query / level / position / class embeddings.
EMBED_NAME_PATTERN = re.compile(
    r"(embed|embedding|prompt|token|query_feat|queries|query_pos|pos_emb|level_emb)", re.I
)

_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    backbone_prefixes: Sequence[str],
    backbone_multiplier: float,
    head_multiplier: float,
    weight_decay_norm: float,
    weight_decay_bias: float,
    weight_decay_embed: float,
) -> List[Dict]:
    """Parameter groups of AdamW: one group per trainable parameter.

    Learning rate: parameters under ``backbone_prefixes`` (module names: the pretrained CLIP
    tower, e.g. ``image_encoder.visual``) get ``base_lr · backbone_multiplier``; every other
    trainable parameter (layers added to the tower such as the feature pyramid, the pixel
    decoder, query generator, transformer decoder, prompt tokens, projections) gets
    ``base_lr · head_multiplier``: only pretrained weights are fine-tuned slowly. Weight decay:
    ``weight_decay_norm``
    for parameters of normalisation layers, ``weight_decay_embed`` for ``nn.Embedding`` and
    free-standing parameters (not of a Linear / conv) named like :data:`EMBED_NAME_PATTERN`,
    ``weight_decay_bias`` for biases, ``weight_decay`` otherwise. Frozen parameters
    (``requires_grad=False``) are left out, and a parameter shared by modules appears once.

    Returns:
        list of ``{"params": [p], "lr", "weight_decay", "name"}``.
    """
    groups: List[Dict] = []
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            if _matches(full, backbone_prefixes):
                lr = base_lr * backbone_multiplier
            else:
                lr = base_lr * head_multiplier
            if isinstance(module, NORM_TYPES):
                wd = weight_decay_norm
            elif isinstance(module, nn.Embedding) or (
                not isinstance(module, _WEIGHT_LAYERS) and EMBED_NAME_PATTERN.search(param_name)
            ):
                wd = weight_decay_embed
            elif param_name == "bias" or param_name.endswith("_bias"):
                wd = weight_decay_bias
            else:
                wd = weight_decay
            groups.append({"params": [param], "lr": lr, "weight_decay": wd, "name": full})
    return groups


def optimizer_with_clipping(
    cfg: CfgNode, optimizer_type: Type[torch.optim.Optimizer]
) -> Type[torch.optim.Optimizer]:
    """``optimizer_type`` whose ``step`` first clips the gradients (``SOLVER.CLIP_GRADIENTS``).

    "value" / "norm": detectron2's ``maybe_add_gradient_clipping`` (each parameter on its
    own); "full_model": one norm over every gradient of the param groups
    (``clip_grad_norm_``), as Mask2Former clips. Clipping off: ``optimizer_type`` itself.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return optimizer_type
    if clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(
            f"Unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip.CLIP_TYPE!r}: use one of {CLIP_TYPES}"
        )
    if clip.CLIP_TYPE != "full_model":
        return maybe_add_gradient_clipping(cfg, optimizer_type)
    max_norm, norm_type = clip.CLIP_VALUE, clip.NORM_TYPE

    class FullModelGradientClipping(optimizer_type):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = f"{optimizer_type.__name__}WithFullModelGradientClip"
    return FullModelGradientClipping


def build_hiervl_optimizer(
    cfg: CfgNode,
    model: nn.Module,
    *,
    backbone_prefixes: Sequence[str] = BACKBONE_MODULES,
) -> torch.optim.Optimizer:
    """AdamW (``SOLVER.OPTIMIZER`` "ADAMW") or SGD over :func:`build_param_groups`, clipping
    the gradients in its ``step`` (:func:`optimizer_with_clipping`).

    ``backbone_prefixes``: module names of the pretrained weights
    (``SOLVER.BACKBONE_MULTIPLIER``); every other trainable parameter gets
    ``SOLVER.HEAD_MULTIPLIER``.
    """
    weight_decay_bias = cfg.SOLVER.WEIGHT_DECAY_BIAS
    groups = build_param_groups(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        backbone_prefixes=backbone_prefixes,
        backbone_multiplier=cfg.SOLVER.BACKBONE_MULTIPLIER,
        head_multiplier=cfg.SOLVER.HEAD_MULTIPLIER,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_bias=(
            cfg.SOLVER.WEIGHT_DECAY if weight_decay_bias is None else weight_decay_bias
        ),
        weight_decay_embed=cfg.SOLVER.WEIGHT_DECAY_EMBED,
    )
    if not groups:
        raise ValueError("The model has no trainable parameters")
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        return optimizer_with_clipping(cfg, torch.optim.AdamW)(groups, lr=cfg.SOLVER.BASE_LR)
    if name == "SGD":
        sgd = optimizer_with_clipping(cfg, torch.optim.SGD)
        return sgd(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)
    raise ValueError(f"Unknown SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}: use ADAMW or SGD")


def build_poly_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    max_iter: int,
    power: float,
    warmup_iters: int,
    warmup_factor: float,
    warmup_method: str = "linear",
) -> LRMultiplier:
    """Poly decay ``(1 - t / max_iter) ** power`` after a warm-up of ``warmup_iters`` steps.

    The warm-up ramps the multiplier from ``warmup_factor`` to the poly value (detectron2's
    ``WarmupParamScheduler``); every group keeps its own base lr (multipliers included).
    """
    poly = PolynomialDecayParamScheduler(1.0, power)
    sched = WarmupParamScheduler(
        poly, warmup_factor, min(warmup_iters / max(max_iter, 1), 1.0), warmup_method
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)


# A warm-up longer than this share of SOLVER.MAX_ITER is reported (warn_long_warmup).
LONG_WARMUP_SHARE = 0.25


def warn_long_warmup(*, max_iter: int, warmup_iters: int, warmup_factor: float) -> bool:
    """Log one warning when the learning-rate warm-up is not well below the run's length.

    The paper's recipes warm up for 1500 steps of 20k-80k; a config that keeps that warm-up for
    a short run trains at a fraction of its learning rate throughout, without a word.

    Args:
        max_iter: ``SOLVER.MAX_ITER``.
        warmup_iters: ``SOLVER.WARMUP_ITERS``.
        warmup_factor: ``SOLVER.WARMUP_FACTOR``, the multiplier the linear warm-up starts at.

    Returns:
        True when the warning was logged (warm-up longer than :data:`LONG_WARMUP_SHARE` of the
        run).
    """
    if max_iter <= 0 or warmup_iters <= LONG_WARMUP_SHARE * max_iter:
        return False
    if warmup_iters >= max_iter:
        # linear warm-up: the multiplier at the last step, before any decay
        reached = warmup_factor + (1.0 - warmup_factor) * max_iter / warmup_iters
        what = f"the whole run is warm-up, its learning rate stays below {reached:.1%} of BASE_LR"
    else:
        what = f"{warmup_iters / max_iter:.0%} of the run is warm-up"
    logger.warning(
        "SOLVER.WARMUP_ITERS %d is not well below SOLVER.MAX_ITER %d: %s. For a short run set "
        "WARMUP_ITERS to a few %% of MAX_ITER (docs/CUSTOM_DATA.md, short runs).",
        warmup_iters,
        max_iter,
        what,
    )
    return True


def build_hiervl_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``SOLVER.LR_SCHEDULER_NAME`` "WarmupPolyLR" → poly; any other name → detectron2's.
    A warm-up that is not well below ``SOLVER.MAX_ITER`` is reported (:func:`warn_long_warmup`)."""
    warn_long_warmup(
        max_iter=cfg.SOLVER.MAX_ITER,
        warmup_iters=cfg.SOLVER.WARMUP_ITERS,
        warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
    )
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
        return build_poly_lr_scheduler(
            optimizer,
            max_iter=cfg.SOLVER.MAX_ITER,
            power=cfg.SOLVER.POLY_LR_POWER,
            warmup_iters=cfg.SOLVER.WARMUP_ITERS,
            warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
            warmup_method=cfg.SOLVER.WARMUP_METHOD,
        )
    return d2_build_lr_scheduler(cfg, optimizer)
