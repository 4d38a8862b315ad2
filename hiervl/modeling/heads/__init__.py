"""Heads of HierVL: the hierarchical query generator (HSQG) and the dual-query decoder (DQTD)."""

from .dqtd import (
    TRANSFORMER_DECODER_REGISTRY,
    DualQueryTransformerDecoder,
    build_transformer_decoder,
)
from .hsqg import HSQG

__all__ = [
    "HSQG",
    "TRANSFORMER_DECODER_REGISTRY",
    "DualQueryTransformerDecoder",
    "build_transformer_decoder",
]
