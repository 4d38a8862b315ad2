"""Model components of HierVL; the META_ARCH that wires them is ``hiervl.hiervl_model.HierVL``."""

from .clip import CLIPImageEncoder, PromptTextEncoder, build_open_clip
from .criterion import HierVLCriterion, semantic_targets
from .heads import (
    HSQG,
    TRANSFORMER_DECODER_REGISTRY,
    DualQueryTransformerDecoder,
    build_transformer_decoder,
)
from .matcher import HungarianMatcher
from .pixel_decoder import PIXEL_DECODER_REGISTRY, HierVLPixelDecoder, build_pixel_decoder

__all__ = [
    "CLIPImageEncoder",
    "DualQueryTransformerDecoder",
    "HSQG",
    "HierVLCriterion",
    "HierVLPixelDecoder",
    "HungarianMatcher",
    "PIXEL_DECODER_REGISTRY",
    "PromptTextEncoder",
    "TRANSFORMER_DECODER_REGISTRY",
    "build_open_clip",
    "build_pixel_decoder",
    "build_transformer_decoder",
    "semantic_targets",
]
