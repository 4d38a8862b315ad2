"""Heads of HierVL: the hierarchical query generator (HSQG) and the dual-query decoder (DQTD)."""

from .dqtd import (
    MLP,
    TRANSFORMER_DECODER_REGISTRY,
    DualQueryTransformerDecoder,
    build_transformer_decoder,
)
from .hsqg import HSQG

__all__ = [
    "HSQG",
    "MLP",
    "TRANSFORMER_DECODER_REGISTRY",
    "DualQueryTransformerDecoder",
    "build_transformer_decoder",
]
