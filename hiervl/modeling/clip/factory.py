"""Build open_clip models: our model configs, random init, pretrained tags and local checkpoints."""

import logging
import os
import threading
from pathlib import Path
from typing import Optional

import open_clip
from torch import nn

__all__ = [
    "MODEL_CONFIG_DIR",
    "register_model_configs",
    "build_open_clip",
    "build_open_clip_from_config",
    "build_tokenizer",
]

logger = logging.getLogger(__name__)

# Folder of the project's own open_clip model configs (``HierVL-Tiny-ViT`` for tests and the demo).
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
_registered = False
_register_lock = threading.Lock()


def register_model_configs() -> None:
    """Add ``MODEL_CONFIG_DIR`` to open_clip's model-config registry (once per process)."""
    global _registered
    with _register_lock:
        if not _registered:
            open_clip.add_model_config(MODEL_CONFIG_DIR)
            _registered = True


def _is_path_like(pretrained: str) -> bool:
    return "/" in pretrained or os.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)


def build_open_clip(model_name: str, pretrained: str, image_size: Optional[int]) -> nn.Module:
    """Build an open_clip CLIP model.

    Args:
        model_name: open_clip model name, e.g. ``"ViT-B-16"`` or our ``"HierVL-Tiny-ViT"``.
        pretrained: ``""`` for random init; an open_clip tag such as ``"openai"`` (open_clip
            downloads it into its cache); or a local checkpoint path (anything containing a
            path separator or ending in .pt/.pth/.bin/.safetensors/.npz), loaded by open_clip.
        image_size: side of the image the ViT position embedding is built for (open_clip's
            ``force_image_size``; a pretrained embedding is resized bicubically); None keeps the
            model config's size.

    Returns:
        The open_clip model (``CLIP`` or ``CustomTextCLIP``), in train mode, on the CPU.

    Raises:
        FileNotFoundError: ``pretrained`` is a path and no file exists there.
    """
    register_model_configs()
    pretrained = pretrained or ""
    if pretrained and _is_path_like(pretrained):
        path = os.path.expanduser(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"CLIP checkpoint not found: {path!r} (MODEL.HIERVL.CLIP.PRETRAINED); give an "
                f"existing file, an open_clip tag such as 'openai', or '' for random init"
            )
        pretrained = path
    logger.info(
        "Building open_clip %s (pretrained=%r, image_size=%s)",
        model_name,
        pretrained or "random init",
        image_size,
    )
    return open_clip.create_model(
        model_name, pretrained=pretrained or None, force_image_size=image_size
    )


def build_open_clip_from_config(cfg) -> nn.Module:
    """:func:`build_open_clip` of ``MODEL.HIERVL.CLIP`` (model name, weights, image size)."""
    clip_cfg = cfg.MODEL.HIERVL.CLIP
    return build_open_clip(clip_cfg.MODEL_NAME, clip_cfg.PRETRAINED, clip_cfg.IMAGE_SIZE)


def build_tokenizer(model_name: str):
    """The open_clip tokenizer of ``model_name`` (callable: list of str -> LongTensor [N, L])."""
    register_model_configs()
    return open_clip.get_tokenizer(model_name)
