"""Build open_clip models: our model configs, random init, pretrained tags and local checkpoints.

The activation of the transformer blocks is the one the weights were trained with: OpenAI's CLIP
weights need QuickGELU, while open_clip's ``ViT-B-16`` config builds ``nn.GELU`` unless told
(:func:`resolve_quick_gelu`). A local file is checked to be a checkpoint before open_clip reads
it (:func:`checkpoint_kind`), and a pretrained tag that would have to be downloaded while the
download host cannot be reached fails at once with the offline instructions.
"""

import logging
import os
import socket
import struct
import threading
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import urlparse

import open_clip
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import has_hf_hub
from open_clip.transformer import QuickGELU
from torch import nn

__all__ = [
    "MODEL_CONFIG_DIR",
    "QUICK_GELU_CHOICES",
    "register_model_configs",
    "checkpoint_kind",
    "resolve_quick_gelu",
    "build_open_clip",
    "build_open_clip_from_config",
    "build_tokenizer",
]

logger = logging.getLogger(__name__)

# Folder of the project's own open_clip model configs (``HierVL-Tiny-ViT`` for tests and the demo).
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
# Values of MODEL.HIERVL.CLIP.QUICK_GELU → the ``quick_gelu`` argument of build_open_clip.
QUICK_GELU_CHOICES = {"auto": None, "true": True, "false": False}
# Seconds the connectivity probe of a download host waits before the tag is declared unreachable.
_PROBE_TIMEOUT_S = 3.0
_ACCEPTED_KINDS = (
    "a state dict saved by torch.save (.pt / .pth / .bin, e.g. open_clip's downloads), "
    "OpenAI's TorchScript archive (e.g. ViT-B-16.pt from openaipublic.azureedge.net), "
    "a .safetensors file, or big_vision .npz / .npy weights"
)
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


def checkpoint_kind(path: str) -> str:
    """What kind of checkpoint the file at ``path`` is, from its first bytes.

    Returns:
        ``"torchscript"`` (a TorchScript archive such as OpenAI's ``ViT-B-16.pt``), ``"torch"``
        (``torch.save``, zip or legacy format), ``"safetensors"`` or ``"numpy"`` (.npz / .npy).

    Raises:
        ValueError: the file is none of these (a text file, an image, an empty file, ...) or a
            safetensors / numpy file whose name does not end as open_clip needs to read it.
    """
    where = f"{path} (MODEL.HIERVL.CLIP.PRETRAINED)"
    with open(path, "rb") as f:
        head = f.read(16)
    size = os.path.getsize(path)
    kind = None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
            kind = "torchscript"
        elif any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            kind = "torch"
        elif names and all(n.endswith(".npy") for n in names):
            kind = "numpy"
    elif len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        kind = "torch"  # torch.save's legacy format: a pickle (protocol 2..5)
    elif head.startswith(b"\x93NUMPY"):
        kind = "numpy"
    elif len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        kind = "safetensors"  # 8-byte little-endian header length, then the JSON header
    if kind is None:
        raise ValueError(
            f"{where} is not a checkpoint (it starts with {head!r}); accepted: {_ACCEPTED_KINDS}"
        )
    if kind == "safetensors" and not path.endswith(".safetensors"):
        raise ValueError(f"{where} is a safetensors file: name it *.safetensors to load it")
    if kind == "numpy" and not path.endswith((".npz", ".npy")):
        raise ValueError(f"{where} holds numpy arrays: name it *.npz (big_vision weights)")
    return kind


def resolve_quick_gelu(
    model_name: str, pretrained: str, kind: Optional[str], quick_gelu: Optional[bool]
) -> Tuple[bool, str]:
    """Whether to build QuickGELU blocks, and why.

    Args:
        model_name: open_clip model name.
        pretrained: ``""``, an open_clip tag, or a local file (then ``kind`` is its
            :func:`checkpoint_kind`).
        kind: the local file's kind, or None for a tag / random init.
        quick_gelu: True / False to force; None ("auto"): a tag's pretrained config
            (``quick_gelu``), QuickGELU for a TorchScript archive (how OpenAI ships its CLIP
            weights, all trained with QuickGELU), else the model config's default.

    Returns:
        ``(use_quick_gelu, reason)``.
    """
    if quick_gelu is not None:
        return bool(quick_gelu), f"MODEL.HIERVL.CLIP.QUICK_GELU {str(bool(quick_gelu)).lower()}"
    if pretrained and kind is None:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if tag_cfg:
            return bool(tag_cfg.get("quick_gelu", False)), f"open_clip's config of {pretrained!r}"
    if kind == "torchscript":
        return True, "a TorchScript archive holds OpenAI's weights, trained with QuickGELU"
    model_cfg = open_clip.get_model_config(model_name) or {}
    return bool(model_cfg.get("quick_gelu", False)), f"the default of model config {model_name}"


def _built_activation(model: nn.Module) -> str:
    """Name(s) of the activation of the built model's transformer blocks."""
    found = {type(m).__name__ for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    return "+".join(sorted(found)) or "neither GELU nor QuickGELU"


def _openai_quick_gelu_tag(model_name: str) -> bool:
    """Whether ``model_name`` has an OpenAI tag trained with QuickGELU (a state dict of it does
    not say so: its activation must be set by hand)."""
    return bool(open_clip.get_pretrained_cfg(model_name, "openai").get("quick_gelu", False))


# ---- offline: fail at once when a tag has to be downloaded and cannot be -------------------
def _can_reach(host: str, port: int = 443, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` (or the HTTPS proxy in the environment) opens."""
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parsed.hostname or host, parsed.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        logger.debug("Cannot reach %s:%d: %s", host, port, err)
        return False
    return True


def _hub_files(tag_cfg: dict) -> Tuple[str, Tuple[str, ...]]:
    """Hub repository and the file names open_clip tries there, in its order."""
    model_id, filename = os.path.split(tag_cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return model_id, (HF_SAFE_WEIGHTS_NAME, filename)
    if filename.endswith((".bin", ".pth")):
        return model_id, (filename[:-4] + ".safetensors", filename)
    return model_id, (filename,)


def _cached_weights(tag_cfg: dict) -> Optional[str]:
    """The local copy open_clip would use for a tag without downloading, or None."""
    if tag_cfg.get("file"):
        return tag_cfg["file"]
    if has_hf_hub() and tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        model_id, names = _hub_files(tag_cfg)
        for name in names:
            cached = try_to_load_from_cache(model_id, name)
            if isinstance(cached, str):
                return cached
        return None
    url = tag_cfg.get("url", "")
    cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return cached if url and os.path.isfile(cached) else None


def _check_download_can_start(model_name: str, tag: str, quick_gelu: bool) -> None:
    """Raise at once, with the offline instructions, when the weights of ``tag`` are not in
    open_clip's cache and their download host cannot be reached (or HF_HUB_OFFLINE is set):
    open_clip itself would retry for about a minute and end in a traceback."""
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not tag_cfg or _cached_weights(tag_cfg) is not None:
        return
    if has_hf_hub() and tag_cfg.get("hf_hub"):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE is set and they are not in the Hugging Face cache"
        elif _can_reach(urlparse(constants.ENDPOINT).hostname or ""):
            return
        else:
            reason = f"{constants.ENDPOINT} cannot be reached"
    elif tag_cfg.get("url"):
        host = urlparse(tag_cfg["url"]).hostname or ""
        if _can_reach(host):
            return
        reason = f"{host} cannot be reached"
    else:
        return
    sources = []
    if tag_cfg.get("url"):
        sources.append(
            f"  {tag_cfg['url']}\n    (a TorchScript archive: QUICK_GELU auto recognises it)"
        )
    if tag_cfg.get("hf_hub"):
        model_id, names = _hub_files(tag_cfg)
        sources.append(
            f"  https://huggingface.co/{model_id}/resolve/main/{names[-1]}\n    (a state dict: "
            f"also set MODEL.HIERVL.CLIP.QUICK_GELU {str(quick_gelu).lower()})"
        )
    raise RuntimeError(
        f"Cannot download the CLIP weights {tag!r} of {model_name} "
        f"(MODEL.HIERVL.CLIP.PRETRAINED): {reason}. Offline, download the checkpoint on a "
        "machine with internet access, copy it here and set "
        "MODEL.HIERVL.CLIP.PRETRAINED /path/to/file; sources:\n" + "\n".join(sources)
    )


# ---- the builder -------------------------------------------------------------------------
def build_open_clip(
    model_name: str,
    pretrained: str,
    image_size: Optional[int],
    quick_gelu: Optional[bool] = None,
) -> nn.Module:
    """Build an open_clip CLIP model.

    Args:
        model_name: open_clip model name, e.g. ``"ViT-B-16"`` or our ``"HierVL-Tiny-ViT"``.
        pretrained: ``""`` for random init; an open_clip tag such as ``"openai"`` (open_clip
            downloads it into its cache); or a local checkpoint path (anything containing a
            path separator or ending in .pt/.pth/.bin/.safetensors/.npz, or an existing file
            that is not a tag), loaded by open_clip
            (a TorchScript archive through ``torch.jit.load``: load only files you trust).
        image_size: side of the image the ViT position embedding is built for (open_clip's
            ``force_image_size``; a pretrained embedding is resized bicubically); None keeps the
            model config's size.
        quick_gelu: activation of the transformer blocks: True QuickGELU, False ``nn.GELU``,
            None decides as :func:`resolve_quick_gelu` (from the tag or the file). The
            activation built is logged.

    Returns:
        The open_clip model (``CLIP`` or ``CustomTextCLIP``), in train mode, on the CPU.

    Raises:
        FileNotFoundError: ``pretrained`` is a path and no file exists there.
        ValueError: the file is not a checkpoint (:func:`checkpoint_kind`).
        RuntimeError: ``pretrained`` is a tag that must be downloaded and cannot be.
    """
    register_model_configs()
    pretrained = pretrained or ""
    kind = None
    is_tag = bool(pretrained and open_clip.get_pretrained_cfg(model_name, pretrained))
    if pretrained and (_is_path_like(pretrained) or (not is_tag and os.path.isfile(pretrained))):
        path = os.path.expanduser(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"CLIP checkpoint not found: {path!r} (MODEL.HIERVL.CLIP.PRETRAINED); give an "
                f"existing file, an open_clip tag such as 'openai', or '' for random init"
            )
        pretrained = path
        kind = checkpoint_kind(path)
    use_quick_gelu, reason = resolve_quick_gelu(model_name, pretrained, kind, quick_gelu)
    if pretrained and kind is None:
        _check_download_can_start(model_name, pretrained, use_quick_gelu)
    logger.info(
        "Building open_clip %s (pretrained=%r, image_size=%s)",
        model_name,
        pretrained or "random init",
        image_size,
    )
    # force_quick_gelu sets the model config (open_clip then sees no mismatch with the tag);
    # quick_gelu=False as a constructor argument also overrides a "-quickgelu" model config.
    kwargs = {"force_quick_gelu": True} if use_quick_gelu else {"quick_gelu": False}
    model = open_clip.create_model(
        model_name,
        pretrained=pretrained or None,
        force_image_size=image_size,
        weights_only=kind != "torchscript",  # torch.load refuses TorchScript with weights_only
        **kwargs,
    )
    activation = _built_activation(model)
    if (
        quick_gelu is None
        and kind in ("torch", "safetensors")
        and not use_quick_gelu
        and _openai_quick_gelu_tag(model_name)
    ):
        logger.warning(
            "open_clip %s built with %s (%s). If %s holds OpenAI's weights saved as a state dict "
            "(e.g. open_clip's 'openai' download), they need QuickGELU: set "
            "MODEL.HIERVL.CLIP.QUICK_GELU true (or false to silence this warning).",
            model_name,
            activation,
            reason,
            pretrained,
        )
    else:
        logger.info("open_clip %s built with %s (%s)", model_name, activation, reason)
    return model


def build_open_clip_from_config(cfg) -> nn.Module:
    """:func:`build_open_clip` of ``MODEL.HIERVL.CLIP`` (model name, weights, image size,
    activation)."""
    clip_cfg = cfg.MODEL.HIERVL.CLIP
    choice = str(clip_cfg.QUICK_GELU).strip().lower()
    if choice not in QUICK_GELU_CHOICES:
        raise ValueError(
            f"MODEL.HIERVL.CLIP.QUICK_GELU must be one of {sorted(QUICK_GELU_CHOICES)} (a "
            f"string; quote it in YAML), got {clip_cfg.QUICK_GELU!r}"
        )
    return build_open_clip(
        clip_cfg.MODEL_NAME,
        clip_cfg.PRETRAINED,
        clip_cfg.IMAGE_SIZE,
        quick_gelu=QUICK_GELU_CHOICES[choice],
    )


def build_tokenizer(model_name: str):
    """The open_clip tokenizer of ``model_name`` (callable: list of str -> LongTensor [N, L])."""
    register_model_configs()
    return open_clip.get_tokenizer(model_name)
