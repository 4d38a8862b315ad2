"""open_clip encoders of HierVL: the fine-tuned image encoder and the prompted text encoder."""

from .factory import (
    MODEL_CONFIG_DIR,
    build_open_clip,
    build_open_clip_from_config,
    build_tokenizer,
    register_model_configs,
)
from .image_encoder import PYRAMID_NAMES, PYRAMID_STRIDES, CLIPImageEncoder
from .text_encoder import PromptTextEncoder, load_class_descriptions

__all__ = [
    "MODEL_CONFIG_DIR",
    "PYRAMID_NAMES",
    "PYRAMID_STRIDES",
    "CLIPImageEncoder",
    "PromptTextEncoder",
    "build_open_clip",
    "build_open_clip_from_config",
    "build_tokenizer",
    "load_class_descriptions",
    "register_model_configs",
]
