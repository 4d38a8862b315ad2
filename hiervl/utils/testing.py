"""Configs for tests and quick experiments: the tiny CLIP and small dimensions on the demo data.

``tiny_config()`` is the one home of the "tiny model" settings used by the model, trainer and
evaluation tests, so that every test builds the same small HierVL (random init, CPU, seconds).
"""

import contextlib
import importlib.util
import os
from types import ModuleType
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from hiervl.config import add_hiervl_config

__all__ = ["TINY_CLIP_NAME", "load_script", "recorded_texts", "tiny_config", "train_tiny_model"]

TINY_CLIP_NAME = "HierVL-Tiny-ViT"

# (key, value) pairs applied over detectron2's defaults + add_hiervl_config.
_TINY_SETTINGS = (
    ("MODEL.DEVICE", "cpu"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 8),
    ("MODEL.HIERVL.CLIP.MODEL_NAME", TINY_CLIP_NAME),
    ("MODEL.HIERVL.CLIP.PRETRAINED", ""),
    ("MODEL.HIERVL.CLIP.IMAGE_SIZE", 64),
    ("MODEL.HIERVL.CLIP.FEATURE_LAYERS", [0, 1, 2, 3]),
    ("MODEL.HIERVL.CLIP.PROMPT_LENGTH", 4),
    ("MODEL.HIERVL.PIXEL_DECODER.CONV_DIM", 32),
    ("MODEL.HIERVL.PIXEL_DECODER.MASK_DIM", 32),
    ("MODEL.HIERVL.PIXEL_DECODER.NUM_LAYERS", 2),
    ("MODEL.HIERVL.PIXEL_DECODER.NUM_HEADS", 4),
    ("MODEL.HIERVL.PIXEL_DECODER.NUM_POINTS", 2),
    ("MODEL.HIERVL.PIXEL_DECODER.FFN_DIM", 64),
    ("MODEL.HIERVL.PIXEL_DECODER.CMSAM_NUM_HEADS", 4),
    ("MODEL.HIERVL.PIXEL_DECODER.MSDA_IMPL", "reference"),
    ("MODEL.HIERVL.HSQG.NUM_LEVELS", 2),
    ("MODEL.HIERVL.DECODER.NUM_LAYERS", 2),
    ("MODEL.HIERVL.DECODER.NUM_INSTANCE_QUERIES", 4),
    ("MODEL.HIERVL.DECODER.HIDDEN_DIM", 32),
    ("MODEL.HIERVL.DECODER.NUM_HEADS", 4),
    ("MODEL.HIERVL.DECODER.FFN_DIM", 64),
    ("MODEL.HIERVL.LOSS.TRAIN_NUM_POINTS", 256),
    ("MODEL.HIERVL.TEST.CROP_SIZE", [64, 64]),
    ("MODEL.HIERVL.TEST.STRIDE", [48, 48]),
    ("INPUT.CROP.SIZE", (64, 64)),
    ("INPUT.MIN_SIZE_TEST", 64),
    ("INPUT.MAX_SIZE_TEST", 128),
    ("DATASETS.TRAIN", ("hiervl_demo_train_labeled",)),
    ("DATASETS.TEST", ("hiervl_demo_val",)),
    ("SEMI.UNLABELED_DATASETS", ("hiervl_demo_train_unlabeled",)),
    ("SOLVER.IMS_PER_BATCH", 2),
    ("SEMI.IMS_PER_BATCH_UNLABELED", 2),
    ("SOLVER.WARMUP_ITERS", 0),
    ("DATALOADER.NUM_WORKERS", 0),
)


def _set(cfg: CfgNode, dotted: str, value: Any) -> None:
    node = cfg
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = getattr(node, name)
    if leaf not in node:
        raise KeyError(f"tiny_config: unknown config key {dotted!r}")
    node[leaf] = value


def tiny_config(*opts: Sequence[Any], **overrides: Any) -> CfgNode:
    """A HierVL config with the tiny random-init CLIP and small dimensions, on the demo dataset.

    Settings: ``HierVL-Tiny-ViT`` (random init, 64 px, blocks 0-3), 8 demo classes, pixel decoder
    and decoder width 32 (2 layers each, 4 instance queries), 2 HSQG levels, 256 loss points,
    64 px training crops and test windows (stride 48), CPU, batch 2 + 2, no workers. Importing
    it registers the demo dataset (``hiervl_demo_*``).

    The config is returned unfrozen, so callers may edit it further and ``freeze()`` it.

    Args:
        opts: a flat ``[key, value, key, value, ...]`` list in detectron2's ``merge_from_list``
            format (values as Python objects or strings), applied after the tiny settings.
        overrides: more settings as keyword arguments, the key path written with ``__`` in
            place of dots, e.g. ``tiny_config(MODEL__HIERVL__DECODER__NUM_LAYERS=3)``; applied
            last. Unknown keys raise ``KeyError``.

    Returns:
        detectron2 ``CfgNode`` (unfrozen).
    """
    # The demo dataset names of the tiny config must resolve in MetadataCatalog.
    import hiervl.data.datasets  # noqa: F401

    cfg = get_cfg()
    add_hiervl_config(cfg)
    for key, value in _TINY_SETTINGS:
        _set(cfg, key, value)
    if len(opts) == 1 and isinstance(opts[0], (list, tuple)):
        opts = tuple(opts[0])
    if opts:
        cfg.merge_from_list(list(opts))
    for key, value in overrides.items():
        _set(cfg, key.replace("__", "."), value)
    return cfg


_TRAINED_STATES: Dict[Tuple, Dict[str, torch.Tensor]] = {}


def train_tiny_model(iters: int = 40, seed: int = 0, num_images: int = 4) -> torch.nn.Module:
    """The tiny HierVL of ``tiny_config()`` trained supervised for ``iters`` AdamW steps on
    ``num_images`` demo scenes of 64 px (the demo's 8 classes; seconds on the CPU).

    The trained weights are kept for the process, so that test modules share one training;
    every call returns a new model (in eval mode) that the caller may change.
    """
    import hiervl.hiervl_model  # noqa: F401  (registers the META_ARCH)
    from hiervl.data.datasets.demo import render_scene

    key = (iters, seed, num_images)
    torch.manual_seed(seed)
    model = build_model(tiny_config())
    if key not in _TRAINED_STATES:
        data = []
        for i in range(num_images):
            image, mask = render_scene(np.random.default_rng([seed, i]), 64)
            data.append(
                {
                    "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                    "sem_seg": torch.from_numpy(mask.astype(np.int64)),
                }
            )
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        for _ in range(iters):
            loss = sum(model(data).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _TRAINED_STATES[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(_TRAINED_STATES[key])
    return model.eval()


@contextlib.contextmanager
def recorded_texts() -> Iterator[List]:
    """Every matplotlib text drawn meanwhile (detectron2's ``Visualizer`` draws its labels with
    ``Axes.text``): the list of artists, for tests of where labels are and what they say."""
    from matplotlib.axes import Axes

    texts: List = []
    original = Axes.text

    def text(self, *args, **kwargs):
        artist = original(self, *args, **kwargs)
        texts.append(artist)
        return artist

    Axes.text = text
    try:
        yield texts
    finally:
        Axes.text = original


def load_script(name: str, path: os.PathLike) -> ModuleType:
    """Import a script that is not in a package (``tools/*.py``, ``datasets/prepare_*.py``, a
    test file's helpers) as a fresh module called ``name``; its ``__main__`` block does not run.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
