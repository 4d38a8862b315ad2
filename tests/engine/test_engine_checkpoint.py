"""Checkpoints and OUTPUT_DIR on real files and processes: whole-model loads, files that are not
checkpoints, non-finite weights, interrupted and failed saves, one run per folder, no run
overwritten unasked (issue 17, items 1, 4, 5, 9, 10)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from engine_toys import toy_config

from hiervl.engine import HierVLTrainer
from hiervl.engine.output_dir import LOCK_FILE, OutputDirError
from hiervl.utils.checkpoint import (
    TEACHER_CHECKPOINT_KEY,
    AtomicCheckpointer,
    CheckpointError,
    load_inference_weights,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """A separate interpreter running ``code`` (the repository importable)."""
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _train(cfg, resume=False):
    seed_all_rng(cfg.SEED)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _tiny(tmp_path, *opts, **overrides):
    from hiervl.utils.testing import tiny_config

    cfg = tiny_config(*opts, **overrides)
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def _tiny_model(**overrides):
    from detectron2.modeling import build_model

    import hiervl.hiervl_model  # noqa: F401
    from hiervl.utils.testing import tiny_config

    torch.manual_seed(0)
    return build_model(tiny_config(**overrides))


# ---- item 4: a checkpoint of another model is an error, a partial load is explicit ----------


def test_checkpoint_of_another_model_size_is_an_error(tmp_path):
    small = _tiny_model()
    path = str(tmp_path / "small.pth")
    torch.save({"model": small.state_dict(), TEACHER_CHECKPOINT_KEY: small.state_dict()}, path)
    wider = _tiny_model(MODEL__HIERVL__DECODER__HIDDEN_DIM=48)
    with pytest.raises(CheckpointError) as info:
        load_inference_weights(wider, path)
    message = str(info.value)
    assert path in message and "does not fit the model" in message
    # the first mismatching keys with both shapes
    assert re.search(r"\n  \S+: checkpoint \[[^]]*32[^]]*\], model \[[^]]*48", message), message
    assert "MODEL.WEIGHTS_ALLOW_PARTIAL" in message
    # same size: loads (the teacher), so the check does not refuse good checkpoints
    assert load_inference_weights(_tiny_model(), path) == "teacher"


def test_missing_entries_are_an_error_and_partial_load_is_explicit(tmp_path):
    # "CLIP-only weights": a checkpoint holding the image encoder of the tiny model only
    source = _tiny_model()
    clip_only = {k: v for k, v in source.state_dict().items() if k.startswith("image_encoder.")}
    assert 0 < len(clip_only) < len(source.state_dict())
    path = str(tmp_path / "clip_only.pth")
    torch.save(clip_only, path)  # a bare state_dict is accepted

    with pytest.raises(CheckpointError, match="not in the checkpoint"):
        load_inference_weights(_tiny_model(), path)

    cfg = _tiny(tmp_path, "MODEL.WEIGHTS", path)
    trainer = HierVLTrainer(cfg)
    with pytest.raises(CheckpointError, match="clip_only.pth does not fit the model"):
        trainer.resume_or_load(resume=False)

    cfg = _tiny(tmp_path, "MODEL.WEIGHTS", path, "MODEL.WEIGHTS_ALLOW_PARTIAL", True)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    student = trainer.student.state_dict()
    for key, value in clip_only.items():
        assert torch.equal(student[key], value), key
    # the teacher starts as the partially loaded student
    assert torch.equal(trainer.teacher.state_dict()[key], value)


def test_partial_load_still_refuses_a_checkpoint_of_which_nothing_fits(tmp_path):
    path = str(tmp_path / "other.pth")
    torch.save({"model": {"visual.conv1.weight": torch.zeros(3)}}, path)
    cfg = _tiny(tmp_path, "MODEL.WEIGHTS", path, "MODEL.WEIGHTS_ALLOW_PARTIAL", True)
    with pytest.raises(CheckpointError, match="No entry of it fits"):
        HierVLTrainer(cfg).resume_or_load(resume=False)


# ---- item 9: a file that is not a checkpoint -------------------------------------------------


def test_text_file_as_weights_says_it_is_not_a_checkpoint(tmp_path):
    notes = tmp_path / "model_final.pth"
    notes.write_text("training notes: lr 1e-4\n")
    with pytest.raises(CheckpointError) as info:
        load_inference_weights(_tiny_model(), str(notes))
    message = str(info.value)
    assert str(notes) in message and "is not a checkpoint" in message
    assert "text file starting with 'training notes" in message
    assert "torch.save" in message and ".pkl" in message  # the kinds accepted

    # a truncated checkpoint (a copy interrupted half-way)
    good = tmp_path / "good.pth"
    torch.save({"model": _tiny_model().state_dict()}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pth cannot be read as a checkpoint"):
        load_inference_weights(_tiny_model(), str(cut))

    # a checkpoint of something else: its "model" entry is not a state_dict
    other = tmp_path / "other.pth"
    torch.save({"model": {"epoch": 3}}, other)
    with pytest.raises(CheckpointError, match="its key 'epoch' holds an object of type int"):
        load_inference_weights(_tiny_model(), str(other))

    # the training path (MODEL.WEIGHTS of train_net.py) says the same
    cfg = _tiny(tmp_path, "MODEL.WEIGHTS", str(notes))
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        HierVLTrainer(cfg).resume_or_load(resume=False)


# ---- item 1: no checkpoint from non-finite weights -------------------------------------------


def test_no_checkpoint_from_non_finite_teacher(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=3, CHECKPOINT_PERIOD=1)

    class BreakTeacher(HookBase):
        # the teacher alone (an EMA, not checked every step) goes bad after the second step
        def after_step(self):
            if self.trainer.iter == 1:
                with torch.no_grad():
                    self.trainer.teacher.head.bias.fill_(float("inf"))

    seed_all_rng(cfg.SEED)
    trainer = HierVLTrainer(cfg)
    trainer._hooks.insert(3, BreakTeacher())
    trainer._hooks[3].trainer = trainer._hooks[0].trainer
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert "model_0000001.pth" in message and "'teacher'" in message and "head.bias" in message
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert not (out / "model_0000001.pth").exists()
    assert not [f for f in os.listdir(out) if ".tmp." in f]


def test_non_finite_student_update_stops_before_the_checkpoint(tmp_path):
    # A finite loss, then an update that breaks one weight: the loss check cannot see it.
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=3, CHECKPOINT_PERIOD=1)
    seed_all_rng(cfg.SEED)
    trainer = HierVLTrainer(cfg)
    step = trainer._trainer
    real_step = step.optimizer.step

    def breaking_step(*args, **kwargs):
        real_step(*args, **kwargs)
        if step.iter == 1:
            with torch.no_grad():
                trainer.student.conv.weight[0, 0, 0, 0] = float("nan")

    step.optimizer.step = breaking_step
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert "iteration 1" in message and "conv.weight" in message and "loss_ce=" in message
    assert "last_checkpoint still names" in message and "model_0000000.pth" in message
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    saved = torch.load(out / "model_0000000.pth", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


# ---- item 10: temporary files of interrupted and failed saves --------------------------------


def test_temporary_file_of_a_killed_save_is_removed_at_the_next_start(tmp_path):
    out = tmp_path / "out"
    writer = _python(
        """
        import sys, time, torch
        from torch import nn
        from hiervl.utils.checkpoint import AtomicCheckpointer

        real_save = torch.save

        def save_then_hang(obj, f):  # the process is killed while the file is open
            real_save(obj, f)
            f.flush()
            print("writing", flush=True)
            time.sleep(600)

        torch.save = save_then_hang
        AtomicCheckpointer(nn.Linear(256, 256), sys.argv[1]).save("model_0000001")
        """,
        str(out),
    )
    try:
        assert writer.stdout.readline().strip() == "writing", writer.stderr.read()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    stale = out / f"model_0000001.pth.tmp.{writer.pid}"
    assert stale.is_file() and stale.stat().st_size > 256 * 256 * 4
    # a temporary file of a live process (a save in progress) is left alone
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = out / f"model_0000002.pth.tmp.{alive.pid}"
        live.write_bytes(b"partial")
        cfg = toy_config(str(tmp_path / "data"), str(out), MAX_ITER=1)
        HierVLTrainer(cfg).resume_or_load(resume=False)
        assert not stale.exists()
        assert live.exists()
    finally:
        alive.kill()
        alive.wait()


def test_failed_save_removes_its_partial_file(tmp_path):
    # A real write failure: the file-size limit (EFBIG), as a full disk (ENOSPC) would.
    out = tmp_path / "out"
    proc = _python(
        """
        import resource, signal, sys
        import torch
        from torch import nn
        from hiervl.utils.checkpoint import AtomicCheckpointer

        checkpointer = AtomicCheckpointer(nn.Linear(512, 512), sys.argv[1])
        checkpointer.save("model_0000000")  # 1 MB: fits
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            checkpointer.save("model_0000001")
        except (OSError, RuntimeError) as e:
            print("save failed:", type(e).__name__)
        """,
        str(out),
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert "save failed" in stdout, stderr
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_0000000.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"


# ---- item 5: one run per OUTPUT_DIR, no run overwritten unasked ------------------------------


def test_new_run_into_a_finished_output_dir_is_refused(tmp_path):
    data, out = str(tmp_path / "data"), tmp_path / "out"
    _train(toy_config(data, str(out), MAX_ITER=2, CHECKPOINT_PERIOD=1))
    final = (out / "model_final.pth").read_bytes()
    metrics = (out / "metrics.json").read_text()
    assert metrics

    trainer = HierVLTrainer(toy_config(data, str(out), MAX_ITER=2, CHECKPOINT_PERIOD=1))
    with pytest.raises(OutputDirError) as info:
        trainer.resume_or_load(resume=False)
    message = str(info.value)
    assert str(out) in message and "model_final.pth" in message
    assert "--resume" in message and "OUTPUT_DIR" in message
    assert "SOLVER.OVERWRITE_OUTPUT_DIR" in message
    assert (out / "model_final.pth").read_bytes() == final
    assert (out / "metrics.json").read_text() == metrics

    # --resume continues it (finished: nothing left to train)
    resumed = _train(toy_config(data, str(out), MAX_ITER=2, CHECKPOINT_PERIOD=1), resume=True)
    assert resumed.start_iter == 2
    assert (out / "model_final.pth").read_bytes() == final

    # the explicit option trains over it, from a clean last_checkpoint and metrics.json
    cfg = toy_config(data, str(out), MAX_ITER=1, CHECKPOINT_PERIOD=1000)
    cfg.SOLVER.OVERWRITE_OUTPUT_DIR = True
    _train(cfg)
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (out / "model_final.pth").read_bytes() != final
    assert (out / "model_0000000.pth").exists()  # the old run's files are never deleted
    # this run's lines only: its step 0 and the evaluation after it
    lines = (out / "metrics.json").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1]


def test_second_run_into_a_busy_output_dir_is_refused_until_the_first_dies(tmp_path):
    out = tmp_path / "out"
    holder = _python(
        """
        import sys, time
        from hiervl.engine.output_dir import claim_output_dir

        claim_output_dir(sys.argv[1], resume=False)
        print("claimed", flush=True)
        time.sleep(600)
        """,
        str(out),
    )
    try:
        assert holder.stdout.readline().strip() == "claimed", holder.stderr.read()
        cfg = toy_config(str(tmp_path / "data"), str(out), MAX_ITER=1)
        with pytest.raises(OutputDirError, match=f"Another run is training into .*{holder.pid}"):
            HierVLTrainer(cfg).resume_or_load(resume=False)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without cleaning up
        holder.wait()
    assert (out / LOCK_FILE).exists()  # the file stays; its lock went with the process
    _train(toy_config(str(tmp_path / "data"), str(out), MAX_ITER=1))
    assert (out / "model_final.pth").exists()


def test_checkpointer_save_and_load_round_trip(tmp_path):
    # the strict loader accepts what the trainer's checkpointer writes
    model = _tiny_model()
    AtomicCheckpointer(model, str(tmp_path)).save("model_final")
    other = _tiny_model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    assert load_inference_weights(other, str(tmp_path / "model_final.pth")) == "student"
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
