"""HVLFormer (METHOD §7): HierVL with three unlabelled views and layer-wise CMCR, built on the
core trainer (``hiervl.engine``)."""

from . import mapper  # noqa: F401  (registers the "hvlformer_unlabeled" mapper)
from .cmcr import attention_consistency, cmcr_layer_losses, cmcr_losses, js_divergence
from .config import add_hvlformer_config
from .mapper import HVLFormerUnlabeledMapper
from .trainer import HVLFormerObjective, HVLFormerStep, HVLFormerTrainer

__all__ = [
    "HVLFormerObjective",
    "HVLFormerStep",
    "HVLFormerTrainer",
    "HVLFormerUnlabeledMapper",
    "add_hvlformer_config",
    "attention_consistency",
    "cmcr_layer_losses",
    "cmcr_losses",
    "js_divergence",
]
