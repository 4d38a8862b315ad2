"""What ``train_net.py`` scripts share: config setup and the train / eval-only entry."""

import argparse
import logging
import logging.handlers
from typing import Callable, Iterable, List, Tuple, Type

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hiervl.config import load_config
from hiervl.utils.checkpoint import load_inference_weights

from .output_dir import claim_output_dir
from .trainer import HierVLTrainer

__all__ = ["setup_cfg", "run_train_or_eval", "launch_from_command_line"]


def _load_config_buffering_logs(
    args: argparse.Namespace, config_hooks: Iterable[Callable[[CfgNode], None]]
) -> Tuple[CfgNode, List[logging.LogRecord]]:
    """``load_config`` of the command line, and the records HierVL logged meanwhile (the
    folder registration's drawn split and class count, the device fallback): they come before
    OUTPUT_DIR, hence before the log file and the console handler, exist."""
    log = logging.getLogger("hiervl")
    if log.handlers:  # logging already set up in this process: the records reach it
        return load_config(args.config_file, args.opts, hooks=config_hooks), []
    buffer = logging.handlers.BufferingHandler(capacity=100_000)
    level, propagate = log.level, log.propagate
    log.addHandler(buffer)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    loaded = False
    try:
        cfg = load_config(args.config_file, args.opts, hooks=config_hooks)
        loaded = True
    finally:
        log.removeHandler(buffer)
        log.setLevel(level)
        log.propagate = propagate
        if not loaded:
            _replay(buffer.buffer)  # the warnings that led to the error, on stderr
    return cfg, buffer.buffer


def _replay(records: List[logging.LogRecord]) -> None:
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def setup_cfg(
    args: argparse.Namespace, config_hooks: Iterable[Callable[[CfgNode], None]]
) -> CfgNode:
    """``hiervl.config.load_config`` of the command line (defaults + ``config_hooks`` + config
    file + opts, custom folder dataset registered, device resolved, frozen); for training,
    ``OUTPUT_DIR`` claimed (:func:`~hiervl.engine.output_dir.claim_output_dir`: locked, refused
    when it holds another run's checkpoints without ``--resume``) before anything is written
    into it; then detectron2's ``default_setup`` (logging, seeding, config dump into
    OUTPUT_DIR) and HierVL's loggers, into which the config's own log records are replayed."""
    cfg, records = _load_config_buffering_logs(args, config_hooks)
    if not args.eval_only:
        claim_output_dir(
            cfg.OUTPUT_DIR,
            resume=args.resume,
            overwrite=cfg.SOLVER.OVERWRITE_OUTPUT_DIR,
            main_process=comm.is_main_process(),
        )
    default_setup(cfg, args)
    # HierVL's own loggers (per-class IoU table, checkpoint choice) next to detectron2's.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hiervl")
    _replay(records)
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


def launch_from_command_line(main: Callable[[argparse.Namespace], object]) -> None:
    """Parse detectron2's standard arguments and run ``main(args)`` in every process of
    ``--num-gpus`` x ``--num-machines`` (the body of a ``train_net.py``)."""
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
