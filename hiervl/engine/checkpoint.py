"""Training checkpoints written atomically, and the per-rank RNG state they carry."""

import logging
import os
import pickle
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["AtomicCheckpointer", "ModuleState", "RNGStateHook", "get_rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose checkpoint and ``last_checkpoint`` tag are written to a
    temporary file in the same folder and renamed over the target, so a run killed while saving
    never leaves a truncated checkpoint behind. Local folders only (``OUTPUT_DIR``)."""

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
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


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
