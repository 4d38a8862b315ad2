"""Registry of pixel decoders and its build function."""

from typing import Dict

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder"]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Registry for pixel decoders: modules that turn the image encoder's multi-scale features
(``{"res2".."res5": [B, C, H/s, W/s]}``) and, optionally, the class queries into the stride-4
mask features, the multi-scale features of the transformer decoder (strides 32, 16, 8) and the
refined queries.

A registered class is built as ``cls(cfg, input_shape)`` with ``input_shape`` a dict of
detectron2 ``ShapeSpec`` (so ``@configurable`` classes take their arguments from ``from_config``).
"""


def build_pixel_decoder(cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by ``cfg.MODEL.HIERVL.PIXEL_DECODER.NAME``.

    Args:
        cfg: a config with ``add_hiervl_config`` applied.
        input_shape: ``{"res2": ShapeSpec(channels=, stride=4), ..., "res5": ...}`` of the
            image encoder's pixel features.
    """
    name = cfg.MODEL.HIERVL.PIXEL_DECODER.NAME
    return PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
