"""Semi-supervised training: trainer, EMA teacher, pseudo-labels, CutMix, optimiser, checkpoints."""

from .hooks import FiniteWeightsHook, RNGStateHook
from .loaders import ResumableLoader, StreamDataset, StreamSampler, build_resumable_loader
from .ema import build_teacher, ema_momentum, ema_update
from .optim import (
    build_hiervl_lr_scheduler,
    build_hiervl_optimizer,
    build_param_groups,
    build_poly_lr_scheduler,
    optimizer_with_clipping,
)
from .semi import (
    cutmix,
    finalize_pseudo_labels,
    pseudo_labels_from_probs,
    sample_cutmix_masks,
)
from .objective import SemiSupervisedObjective, UnlabeledBatch, prediction_entropy
from .semi_step import SemiSupervisedStep, stack_views
from .trainer import HierVLTrainer

__all__ = [
    "FiniteWeightsHook",
    "HierVLTrainer",
    "RNGStateHook",
    "ResumableLoader",
    "SemiSupervisedObjective",
    "SemiSupervisedStep",
    "StreamDataset",
    "StreamSampler",
    "UnlabeledBatch",
    "build_hiervl_lr_scheduler",
    "build_hiervl_optimizer",
    "build_param_groups",
    "build_poly_lr_scheduler",
    "build_resumable_loader",
    "build_teacher",
    "optimizer_with_clipping",
    "cutmix",
    "ema_momentum",
    "ema_update",
    "finalize_pseudo_labels",
    "prediction_entropy",
    "pseudo_labels_from_probs",
    "sample_cutmix_masks",
    "stack_views",
]
