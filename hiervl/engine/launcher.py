"""What ``train_net.py`` scripts share: config setup and the train / eval-only entry."""

import argparse
import importlib
import importlib.util
from typing import Callable, Iterable, Type

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hiervl.utils.checkpoint import load_inference_weights

from .trainer import HierVLTrainer

__all__ = ["setup_cfg", "register_custom_dataset", "run_train_or_eval"]

_FOLDER_MODULE = "hiervl.data.datasets.folder"


def register_custom_dataset(cfg: CfgNode) -> None:
    """Register the folder dataset of ``DATASETS.CUSTOM.ROOT`` (nothing when ROOT is "")."""
    if not cfg.DATASETS.CUSTOM.ROOT:
        return
    if importlib.util.find_spec(_FOLDER_MODULE) is None:
        raise RuntimeError(f"DATASETS.CUSTOM.ROOT is set but {_FOLDER_MODULE} is not installed")
    importlib.import_module(_FOLDER_MODULE).register_folder_from_cfg(cfg)


def setup_cfg(
    args: argparse.Namespace, config_hooks: Iterable[Callable[[CfgNode], None]]
) -> CfgNode:
    """detectron2 defaults + ``config_hooks`` (``add_hiervl_config``, project hooks) + the
    config file + command-line opts; registers a custom folder dataset; freezes; runs
    detectron2's ``default_setup`` (logging, seeding, config dump into OUTPUT_DIR)."""
    cfg = get_cfg()
    for hook in config_hooks:
        hook(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_custom_dataset(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # HierVL's own loggers (per-class IoU table, checkpoint choice) next to detectron2's.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hiervl")
    return cfg


def run_train_or_eval(
    args: argparse.Namespace, cfg: CfgNode, trainer_cls: Type[HierVLTrainer] = HierVLTrainer
):
    """``--eval-only``: load ``MODEL.WEIGHTS`` (the teacher when the checkpoint has one and
    ``MODEL.HIERVL.TEST.USE_TEACHER``) and evaluate on ``DATASETS.TEST``. Otherwise train,
    resuming from ``OUTPUT_DIR`` with ``--resume``."""
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        which = load_inference_weights(
            model, cfg.MODEL.WEIGHTS, use_teacher=cfg.MODEL.HIERVL.TEST.USE_TEACHER
        )
        return trainer_cls.test_model(cfg, model, which)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
