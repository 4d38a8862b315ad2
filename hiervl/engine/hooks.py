"""Training hooks of the HierVL trainer: a weight check after every step, and the RNG state
that travels with the checkpoints."""

import logging
import pickle
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from hiervl.utils.checkpoint import AtomicCheckpointer, all_finite, first_non_finite

__all__ = ["FiniteWeightsHook", "RNGStateHook", "get_rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


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
        bad = (~all_finite(self._params)).float()
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
