"""Semi-supervised training (METHOD §8): the trainer's wiring, the step, the student's objective,
pseudo-labels and CutMix, EMA teacher, optimiser, resumable loaders, hooks, OUTPUT_DIR."""

from .ema import build_teacher, ema_momentum, ema_update
from .hooks import FiniteWeightsHook, RNGStateHook
from .loaders import ResumableLoader, StreamDataset, StreamSampler, build_resumable_loader
from .objective import SemiSupervisedObjective, UnlabeledBatch, prediction_entropy
from .optim import (
    build_hiervl_lr_scheduler,
    build_hiervl_optimizer,
    build_param_groups,
    build_poly_lr_scheduler,
    optimizer_with_clipping,
)
from .semi import cutmix, finalize_pseudo_labels, pseudo_labels_from_probs, sample_cutmix_masks
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
    "cutmix",
    "ema_momentum",
    "ema_update",
    "finalize_pseudo_labels",
    "optimizer_with_clipping",
    "prediction_entropy",
    "pseudo_labels_from_probs",
    "sample_cutmix_masks",
    "stack_views",
]
