#!/usr/bin/env python
"""HVLFormer training and evaluation (run from the repository root):

    python projects/HVLFormer/train_net.py \\
        --config-file projects/HVLFormer/configs/demo/hvlformer_demo.yaml
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hiervl.data  # noqa: E402,F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: E402,F401  (registers the HierVL META_ARCH)
from hiervl.config import add_hiervl_config  # noqa: E402
from hiervl.engine.launcher import (  # noqa: E402
    launch_from_command_line,
    run_train_or_eval,
    setup_cfg,
)
from hvlformer import HVLFormerTrainer, add_hvlformer_config  # noqa: E402

CONFIG_HOOKS = (add_hiervl_config, add_hvlformer_config)


def setup(args):
    return setup_cfg(args, CONFIG_HOOKS)


def main(args):
    return run_train_or_eval(args, setup(args), HVLFormerTrainer)


if __name__ == "__main__":
    launch_from_command_line(main)
