"""Pixel decoder of HierVL: a multi-scale deformable-attention encoder with CMSAM (§3.3)."""

from .build import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .cmsam import CMSAM
from .hiervl_pixel_decoder import HierVLPixelDecoder, MSDeformAttnEncoderLayer
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "CMSAM",
    "HierVLPixelDecoder",
    "MSDeformAttnEncoderLayer",
    "PIXEL_DECODER_REGISTRY",
    "PositionEmbeddingSine",
    "build_pixel_decoder",
]
