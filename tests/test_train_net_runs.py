"""train_net.py runs that go wrong as a user's would (issue 17): a learning rate that breaks the
weights, a re-run into a finished OUTPUT_DIR, a checkpoint of another model size, a folder
dataset's registration messages and a config asking for a GPU the machine does not have.

Each test runs train_net.py in a subprocess on the demo config (tiny CLIP, a few steps): about
10 s per run on an idle 2-core machine.
"""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiervl.config import load_config
from hiervl.utils.testing import load_script

REPO = Path(__file__).resolve().parents[1]
DEMO = "configs/demo/hiervl_demo.yaml"
# Few steps, no loader workers, no evaluation of the demo val split unless asked.
QUICK = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0"]


def _train_net(*args: str, env=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env or {}), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_learning_rate_that_breaks_the_weights_writes_no_checkpoint(tmp_path):
    # The case: the loss of step 1 is finite (~1e10) and its update makes most
    # weights NaN; the checkpoint of step 1 (period 2) used to be written from them.
    out = tmp_path / "out"
    run = _train_net(
        "--config-file",
        DEMO,
        *QUICK,
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.BASE_LR",
        "1e6",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "OUTPUT_DIR",
        str(out),
    )
    assert run.returncode != 0, run.stdout[-2000:]
    assert "FloatingPointError: Non-finite weights after the optimiser step of iteration 1" in (
        run.stderr
    ), run.stderr[-3000:]
    # the first non-finite parameter and the step's (finite) loss terms are named
    assert "parameter tensors, the first image_encoder." in run.stderr
    assert "loss_mask=" in run.stderr and "loss_ce=" in run.stderr
    assert "no checkpoint was written" in run.stderr
    assert not list(out.glob("model_*.pth")) and not (out / "last_checkpoint").exists()
    assert not list(out.glob("*.tmp.*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step demo run: its OUTPUT_DIR."""
    out = tmp_path_factory.mktemp("finished") / "out"
    run = _train_net("--config-file", DEMO, *QUICK, "OUTPUT_DIR", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    return out


def test_rerun_without_resume_into_a_finished_output_dir_is_refused(finished_run):
    out = finished_run
    # (the lock file names the last process that held the folder)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.suffix != ".lock"}
    run = _train_net("--config-file", DEMO, *QUICK, "OUTPUT_DIR", str(out))
    assert run.returncode != 0
    assert "OutputDirError" in run.stderr and "model_final.pth" in run.stderr, run.stderr[-3000:]
    for hint in ("--resume", "another OUTPUT_DIR", "SOLVER.OVERWRITE_OUTPUT_DIR True"):
        assert hint in run.stderr, hint
    # nothing of the finished run changed: checkpoints, metrics.json, config.yaml, log.txt
    after = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.suffix != ".lock"}
    assert after == before


def test_eval_only_with_a_checkpoint_of_another_size_fails(finished_run):
    weights = finished_run / "model_final.pth"
    run = _train_net(
        "--config-file",
        DEMO,
        "--eval-only",
        "MODEL.HIERVL.DECODER.HIDDEN_DIM",
        "48",
        "MODEL.WEIGHTS",
        str(weights),
        "OUTPUT_DIR",
        str(finished_run.parent / "eval"),
    )
    assert run.returncode != 0, run.stdout[-2000:]
    assert f"CheckpointError: {weights} does not fit the model" in run.stderr, run.stderr[-3000:]
    assert re.search(r"\n  \S+: checkpoint \[[^]]*32[^]]*\], model \[[^]]*48", run.stderr)
    # no flood of detectron2's per-parameter warnings, no evaluation of a half-random model
    assert "Skip loading parameter" not in run.stdout + run.stderr
    assert "copypaste" not in run.stdout + run.stderr  # detectron2's evaluation summary


def test_folder_registration_messages_reach_the_log_and_no_gpu_means_cpu(tmp_path):
    folder_tests = load_script("folder_test_helpers", REPO / "tests" / "data" / "test_folder.py")
    root = folder_tests.make_folder(tmp_path / "my_data", n_labeled=5, n_unlabeled=3, hw=(64, 80))
    out = tmp_path / "out"
    run = _train_net(
        "--config-file",
        DEMO,
        *QUICK,
        "SOLVER.MAX_ITER",
        "1",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SEMI.IMS_PER_BATCH_UNLABELED",
        "2",
        "DATASETS.CUSTOM.ROOT",
        str(root),
        "DATASETS.TRAIN",
        "('custom_train_labeled',)",
        "SEMI.UNLABELED_DATASETS",
        "('custom_train_unlabeled',)",
        "DATASETS.TEST",
        "()",
        # what configs/custom/hiervl_folder.yaml asks for (detectron2's default)
        "MODEL.DEVICE",
        "cuda",
        "OUTPUT_DIR",
        str(out),
        env={"HIERVL_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "drew 4 train / 1 val labelled images" in log and str(root / "splits") in log, log[:3000]
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES set to 3" in log
    assert (root / "splits" / "labeled.txt").is_file()
    if not torch.cuda.is_available():
        assert "MODEL.DEVICE is 'cuda' but no CUDA GPU is available: running on the CPU" in log
        assert "model_final.pth" in (out / "last_checkpoint").read_text()


def test_readme_folder_config_picks_the_cpu_without_a_gpu(tmp_path, monkeypatch):
    folder_tests = load_script("folder_test_helpers", REPO / "tests" / "data" / "test_folder.py")
    root = folder_tests.make_folder(tmp_path / "my_data")
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    config_logger = logging.getLogger("hiervl.config")
    config_logger.addHandler(handler)
    try:
        cfg = load_config(
            str(REPO / "configs/custom/hiervl_folder.yaml"),
            ["DATASETS.CUSTOM.ROOT", str(root), "DATASETS.CUSTOM.NAME", "issue17_cpu"],
        )
    finally:
        config_logger.removeHandler(handler)
        folder_tests._unregister("issue17_cpu")
    assert cfg.MODEL.DEVICE == "cpu"
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == ["MODEL.DEVICE is 'cuda' but no CUDA GPU is available: running on the CPU"]
    # an explicit CPU asks nothing
    cfg = load_config(str(REPO / DEMO), [])
    assert cfg.MODEL.DEVICE == "cpu"


def test_benchmark_semi_runs_again_into_the_same_output(tmp_path):
    # Its per-seed folders are scratch: a second benchmark run trains over them instead of
    # being refused as a re-run into a finished OUTPUT_DIR.
    command = [
        sys.executable,
        str(REPO / "tools" / "benchmark_semi.py"),
        "--iters",
        "1",
        "--seeds",
        "0",
        "--only",
        "supervised",
        "--output",
        str(tmp_path / "bench"),
        "DATALOADER.NUM_WORKERS",
        "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for _ in range(2):
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "supervised-only" in run.stdout
