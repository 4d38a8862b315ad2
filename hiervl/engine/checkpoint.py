"""Training checkpoints and their folder: atomic, finite, one run at a time.

- Checkpoints and the ``last_checkpoint`` tag are written to a temporary file and renamed over
  the target (a save killed half-way never leaves a truncated checkpoint; a failed save removes
  its temporary file; temporary files of runs that died while saving are removed at the next
  start).
- A checkpoint is written only from finite weights (student and teacher), and
  :class:`FiniteWeightsHook` stops training at the step whose update made a weight non-finite.
- ``OUTPUT_DIR`` is claimed by one training run at a time (an ``flock`` the OS releases when
  the process dies), and a new run does not train over another run's checkpoints unless asked.
- The per-rank RNG state travels with the checkpoint (:class:`RNGStateHook`).
"""

import errno
import logging
import os
import pickle
import random
import re
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from hiervl.utils.checkpoint import TEACHER_CHECKPOINT_KEY, StrictCheckpointer

try:
    import fcntl
except ImportError:  # not POSIX: OUTPUT_DIR is not locked
    fcntl = None

__all__ = [
    "AtomicCheckpointer",
    "FiniteWeightsHook",
    "LOCK_FILE",
    "ModuleState",
    "OutputDirError",
    "RNGStateHook",
    "claim_output_dir",
    "first_non_finite",
    "get_rng_state",
    "release_output_dir",
    "remove_stale_temporary_files",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

# The lock file of a training run in OUTPUT_DIR (holds "pid host" of the run holding it).
LOCK_FILE = ".train.lock"
# Files a training run writes that a new run must not silently replace.
_CHECKPOINT_NAME = re.compile(r"^(model_.*\.pth|last_checkpoint)$")
# Temporary files of _atomic_write: "<target>.tmp.<pid>".
_TEMPORARY_NAME = re.compile(r"^.+\.tmp\.(\d+)$")
# OUTPUT_DIRs whose lock this process holds: real path -> open lock file.
_HELD_LOCKS: Dict[str, IO] = {}


class OutputDirError(RuntimeError):
    """OUTPUT_DIR is in use by another run, or holds a run that this one would overwrite."""


def _atomic_write(path: str, write: Callable[[IO], None]) -> None:
    """``write(f)`` into ``<path>.tmp.<pid>``, then rename it over ``path``; the temporary
    file is removed when writing fails (full disk, file-size limit, an exception)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # any failure, KeyboardInterrupt included: no partial file stays behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _all_finite(tensors: List[torch.Tensor]) -> torch.Tensor:
    """0-dim bool tensor: the total L2 norm of ``tensors`` is finite, i.e. no element is NaN or
    inf (and the norm does not overflow float32: weights of ~1e19 count as broken too). One
    fused pass per device and dtype (``torch._foreach_norm`` under ``get_total_norm``)."""
    if not tensors:
        return torch.tensor(True)
    return torch.isfinite(torch.nn.utils.get_total_norm(tensors, 2.0))


def first_non_finite(named: Iterable[Tuple[str, torch.Tensor]]) -> Tuple[Optional[str], int]:
    """Name of the first floating-point tensor of ``named`` with a NaN or inf (or whose norm
    overflows), and how many such tensors there are; ``(None, 0)`` when all are finite."""
    items = [(n, t.detach()) for n, t in named if torch.is_tensor(t) and t.is_floating_point()]
    if bool(_all_finite([t for _, t in items])):
        return None, 0
    bad = [n for n, t in items if not bool(_all_finite([t]))]
    if not bad:  # only the norm over all of them overflows
        return "(none alone: their total norm overflows)", len(items)
    return bad[0], len(bad)


class AtomicCheckpointer(StrictCheckpointer):
    """The trainer's checkpointer: :class:`~hiervl.utils.checkpoint.StrictCheckpointer`
    (whole-checkpoint loads) whose checkpoint and ``last_checkpoint`` tag are written
    atomically (a temporary file in the same folder renamed over the target), and only from
    finite weights: a NaN or inf in the ``model`` or ``teacher`` entry raises
    ``FloatingPointError`` and nothing is written, so ``last_checkpoint`` keeps naming the
    last good checkpoint. Local folders only (``OUTPUT_DIR``)."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        os.makedirs(self.save_dir, exist_ok=True)
        save_file = os.path.join(self.save_dir, basename)
        for entry in ("model", TEACHER_CHECKPOINT_KEY):
            bad, count = first_non_finite(data.get(entry, {}).items())
            if bad is not None:
                last = self.get_checkpoint_file() if self.has_checkpoint() else "none"
                raise FloatingPointError(
                    f"Not saving {save_file}: {count} tensors of its {entry!r} weights are not "
                    f"finite, the first {bad}. last_checkpoint still names the last good "
                    f"checkpoint ({last})."
                )
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


class FiniteWeightsHook(HookBase):
    """Stops training at the step whose optimiser update left a NaN or inf in the student.

    The loss check of the step (``SemiSupervisedStep.check_finite``) sees a finite loss when
    a finite but huge gradient (a too-high learning rate) breaks the weights; without this
    hook the checkpoint of that step would be written from them. After every step it takes
    one fused norm of the student's parameters and one sync (the step already syncs for its
    loss check); on a non-finite value it raises ``FloatingPointError`` naming the
    first non-finite parameter and the step's loss terms (``last_losses`` of the inner
    trainer). Register it before the ``PeriodicCheckpointer``. The teacher, an EMA of finite
    students, and the buffers are checked when a checkpoint is written
    (:class:`AtomicCheckpointer`).
    """

    def __init__(self, model: torch.nn.Module, checkpointer: Optional[AtomicCheckpointer] = None):
        """
        Args:
            model: the unwrapped student.
            checkpointer: named in the error (its ``last_checkpoint``), when given.
        """
        self.model = model
        self.checkpointer = checkpointer
        self._params: List[torch.Tensor] = []

    def before_train(self) -> None:
        self._params = [p for p in self.model.parameters()]

    def after_step(self) -> None:
        bad = (~_all_finite(self._params)).float()
        if comm.get_world_size() > 1:
            dist.all_reduce(bad)
        if not bool(bad):
            return
        name, count = first_non_finite(self.model.named_parameters())
        losses = getattr(getattr(self.trainer, "_trainer", None), "last_losses", None) or {}
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(losses.items()))
        if self.checkpointer is not None and self.checkpointer.has_checkpoint():
            kept = f"last_checkpoint still names {self.checkpointer.get_checkpoint_file()}"
        else:
            kept = "no checkpoint was written"
        raise FloatingPointError(
            f"Non-finite weights after the optimiser step of iteration {self.trainer.iter}: "
            f"{count} of {len(self._params)} parameter tensors, the first "
            f"{name or '(on another rank)'}. The step's losses: {terms or 'n/a'}. Training "
            f"stops before saving them ({kept}). Lower SOLVER.BASE_LR (or clip gradients, "
            "SOLVER.CLIP_GRADIENTS) and start a new run: a resumed run keeps the learning rate "
            "of its checkpoint."
        )


# ---- OUTPUT_DIR: one run at a time, no run overwritten unasked ------------------------------


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporary_files(folder: str) -> List[str]:
    """Remove the ``*.tmp.<pid>`` files of interrupted saves (SIGKILL, power loss) in
    ``folder`` whose process is no longer alive; those of live processes are kept.

    Returns:
        the names removed.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        m = _TEMPORARY_NAME.match(name)
        path = os.path.join(folder, name)
        if not m or not os.path.isfile(path) or _pid_alive(int(m.group(1))):
            continue
        size = os.path.getsize(path)
        os.remove(path)
        removed.append(name)
        logger.warning(
            "Removed %s (%.1f MB), the temporary file of a save interrupted in process %s",
            path,
            size / 2**20,
            m.group(1),
        )
    return removed


def lock_output_dir(output_dir: str) -> None:
    """Take this process's exclusive lock on ``output_dir`` (``flock`` of ``LOCK_FILE``, held
    until :func:`release_output_dir` or the process ends, however it ends). A second call in
    the same process does nothing.

    Raises:
        OutputDirError: another live process holds it.
    """
    path = os.path.realpath(output_dir)
    if path in _HELD_LOCKS or fcntl is None:
        return
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_FILE)
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            logger.warning(
                "Cannot lock %s (%s): a second run into it at the same time is not detected",
                lock_path,
                e.strerror,
            )
            return
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise OutputDirError(
            f"Another run is training into {output_dir} (process and host: {holder}; lock file "
            f"{lock_path}). Wait for it to end or stop it, or give this run another OUTPUT_DIR."
        ) from e
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()} {os.uname().nodename}\n")
    f.flush()
    _HELD_LOCKS[path] = f


def release_output_dir(output_dir: str) -> None:
    """Release this process's lock on ``output_dir`` (if it holds one)."""
    f = _HELD_LOCKS.pop(os.path.realpath(output_dir), None)
    if f is not None:
        f.close()


def claim_output_dir(
    output_dir: str, *, resume: bool, overwrite: bool = False, main_process: bool = True
) -> None:
    """Make ``output_dir`` this training run's, before anything is written into it.

    The main process takes the folder's lock (:func:`lock_output_dir`) and removes the
    temporary files of dead runs' interrupted saves. A run that does not resume (``resume``
    False, or no ``last_checkpoint`` to resume from) is refused when the folder holds another
    run's checkpoints, unless ``overwrite``: then ``last_checkpoint`` is removed (a later
    ``--resume`` cannot pick the old run's checkpoint) and ``metrics.json`` emptied, and the
    old ``model_*.pth`` files are replaced as this run saves under the same names.

    Args:
        output_dir: ``OUTPUT_DIR``.
        resume: the run resumes from ``last_checkpoint`` when there is one (``--resume``).
        overwrite: ``SOLVER.OVERWRITE_OUTPUT_DIR``.
        main_process: lock, clean and overwrite here (the other ranks only check).

    Raises:
        OutputDirError: another run holds the folder, or the folder holds another run.
    """
    if main_process:
        lock_output_dir(output_dir)
        remove_stale_temporary_files(output_dir)
    last = os.path.join(output_dir, "last_checkpoint")
    if resume and os.path.isfile(last):
        return
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    found = sorted((n for n in names if _CHECKPOINT_NAME.match(n)), reverse=True)
    if not found:
        return
    if not overwrite:
        if resume:
            how = "There is no last_checkpoint to resume from. Give this run"
        else:
            how = (
                "Continue that run with --resume (a finished run is then evaluated, not "
                "trained again), or give this run"
            )
        listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise OutputDirError(
            f"{output_dir} already holds the checkpoints of a run ({listed}): this run would "
            f"overwrite them. {how} another OUTPUT_DIR, or set SOLVER.OVERWRITE_OUTPUT_DIR "
            "True to train over them."
        )
    if main_process:
        logger.warning(
            "SOLVER.OVERWRITE_OUTPUT_DIR: training over the run in %s (%s); last_checkpoint "
            "and metrics.json start afresh, its model_*.pth are replaced as this run saves",
            output_dir,
            ", ".join(found),
        )
        if os.path.isfile(last):
            os.remove(last)
        metrics = os.path.join(output_dir, "metrics.json")
        if os.path.isfile(metrics):
            # truncated, not removed: a JSONWriter may already hold it open for appending
            open(metrics, "w").close()


class ModuleState:
    """Checkpointable view of a module that records whether a checkpoint was loaded into it."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.loaded = False

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
        self.loaded = True


def get_rng_state() -> Dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`'s output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateHook(HookBase):
    """Gathers every rank's RNG state to the main process at checkpoint iterations, so that a
    resumed run draws the same random numbers (point sampling, CutMix boxes) as an
    uninterrupted one. Register it on all ranks, before ``PeriodicCheckpointer``."""

    def __init__(self, period: int, max_iter: int):
        self.period = period
        self.max_iter = max_iter
        self._states: Optional[List[bytes]] = None

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if (self.period > 0 and it % self.period == 0) or it >= self.max_iter:
            # Pickled bytes: gather goes through detectron2's CPU (gloo) group.
            self._states = comm.gather(pickle.dumps(get_rng_state()), dst=0)

    def state_dict(self) -> Dict[str, Any]:
        return {"states": self._states} if self._states else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        states = state.get("states")
        if not states:
            return
        rank = comm.get_rank()
        if len(states) != comm.get_world_size():
            logger.warning(
                "Checkpoint holds RNG states of %d processes, this run has %d: RNG streams are "
                "not restored",
                len(states),
                comm.get_world_size(),
            )
            return
        set_rng_state(pickle.loads(states[rank]))
