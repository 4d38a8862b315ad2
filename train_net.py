#!/usr/bin/env python
"""HierVL training and evaluation (Detectron2 style).

    python train_net.py --config-file configs/demo/hiervl_demo.yaml OUTPUT_DIR output/demo
    python train_net.py --config-file ... --resume                 # continue a killed run
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/demo/model_final.pth
    python train_net.py --config-file ... --num-gpus 8             # DDP

The trainer (two loaders, EMA teacher, pseudo-labels, CutMix, checkpoints) is
``hiervl.engine.HierVLTrainer``; projects (``projects/HVLFormer``) have their own train_net.py.
"""
import hiervl.data  # noqa: F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: F401  (registers the HierVL META_ARCH)
from hiervl.config import add_hiervl_config
from hiervl.engine import HierVLTrainer
from hiervl.engine.launcher import launch_from_command_line, run_train_or_eval, setup_cfg

CONFIG_HOOKS = (add_hiervl_config,)


def setup(args):
    """Config of ``args``: defaults + HierVL keys + config file + opts, frozen."""
    return setup_cfg(args, CONFIG_HOOKS)


def main(args):
    return run_train_or_eval(args, setup(args), HierVLTrainer)


if __name__ == "__main__":
    launch_from_command_line(main)
