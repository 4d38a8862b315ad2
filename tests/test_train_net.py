"""train_net.py: the command-line interface."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_net_help_lists_flags():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    for flag in (
        "--config-file",
        "--eval-only",
        "--resume",
        "--num-gpus",
        "--num-machines",
        "--dist-url",
    ):
        assert flag in out.stdout, flag
