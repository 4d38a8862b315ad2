"""HierVL checkpoints, loaded and saved: one module for the file format.

Loading. Every HierVL checkpointer derives from :class:`StrictCheckpointer`: a file that is
not a checkpoint, and a checkpoint that does not fit the model (a parameter missing from it,
or of another shape), are errors that name the file and the first offending keys, instead of
detectron2's "Skip loading parameter" warnings and a half-initialised model. A deliberate
partial load (training from weights of a part of the model) is an explicit option.
Evaluation (``train_net.py --eval-only``), the demo and the tools all load through
:func:`load_inference_weights`, so "the EMA teacher if present" has one implementation.

Saving. The semi-supervised trainer saves the teacher's ``state_dict`` under
``TEACHER_CHECKPOINT_KEY`` next to detectron2's ``"model"`` (the student), with
:class:`AtomicCheckpointer`: the checkpoint and the ``last_checkpoint`` tag are written to a
temporary file (``TEMPORARY_NAME``) and renamed over the target
(:func:`hiervl.utils.atomic.atomic_write`: a save killed half-way never
leaves a truncated checkpoint; a failed save removes its temporary file), and only from finite
weights.
"""

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _filter_reused_missing_keys

from .atomic import TEMPORARY_NAME, atomic_write

__all__ = [
    "ACCEPTED_CHECKPOINTS",
    "TEACHER_CHECKPOINT_KEY",
    "TEMPORARY_NAME",
    "AtomicCheckpointer",
    "CheckpointError",
    "HierVLCheckpointer",
    "ModuleState",
    "StrictCheckpointer",
    "all_finite",
    "first_non_finite",
    "load_inference_weights",
]

logger = logging.getLogger(__name__)

# Key of the EMA teacher's state_dict in a HierVL training checkpoint.
TEACHER_CHECKPOINT_KEY = "teacher"

# What MODEL.WEIGHTS may name, for error messages.
ACCEPTED_CHECKPOINTS = (
    "a file written by torch.save (.pth: a HierVL / detectron2 training checkpoint with a "
    '"model" entry, or a bare state_dict) or a detectron2 model-zoo pickle (.pkl)'
)

# How many offending keys an error message lists.
_LISTED_KEYS = 5

# First bytes of the files torch.save writes: a zip archive (torch >= 1.6) or a pickle of
# protocol 2+ (legacy format).
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the model (not a checkpoint, or of another
    model); the message names the file."""


def _describe_start(head: bytes) -> str:
    if not head:
        return "it is empty"
    text = head[:40].decode("utf-8", errors="replace")
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"it is a text file starting with {text.splitlines()[0][:40]!r}"
    return f"it starts with the bytes {head[:8]!r}"


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


class StrictCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that loads a checkpoint into the model whole, or not at all.

    - A file that is not a checkpoint raises :class:`CheckpointError` naming it and the kinds
      accepted (:data:`ACCEPTED_CHECKPOINTS`), instead of ``KeyError: 101`` from the unpickler.
    - A model parameter or buffer missing from the checkpoint, or of another shape there, raises
      :class:`CheckpointError` naming the file and the first keys with both shapes. Keys of the
      checkpoint that the model does not have are logged as a warning (the model is complete).
    - ``allow_partial=True`` restores detectron2's behaviour (matching entries loaded, the rest
      kept as initialised, one warning per key) but still refuses a checkpoint of which no
      entry fits.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        allow_partial: bool = False,
        **checkpointables: Any,
    ):
        """
        Args:
            model: the model to load into (not wrapped in DDP).
            save_dir: detectron2's checkpoint folder (saving, ``last_checkpoint``).
            allow_partial: load what fits and keep the rest as initialised.
            checkpointables: other objects saved and restored with the model.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.allow_partial = allow_partial
        self._loading = ""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        self._loading = filename
        with open(filename, "rb") as f:
            head = f.read(64)
        # torch.save always writes one of the two; a .pkl may be an old text-protocol pickle
        if not head.startswith(_CHECKPOINT_MAGIC) and not filename.endswith(".pkl"):
            raise CheckpointError(
                f"{filename} is not a checkpoint: {_describe_start(head)}. MODEL.WEIGHTS takes "
                f"{ACCEPTED_CHECKPOINTS}."
            )
        try:
            loaded = super()._load_file(filename)
        except (pickle.UnpicklingError, EOFError, KeyError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{filename} cannot be read as a checkpoint (truncated or damaged?): "
                f"{type(e).__name__}: {e}. MODEL.WEIGHTS takes {ACCEPTED_CHECKPOINTS}."
            ) from e
        if not isinstance(loaded, Mapping):
            raise CheckpointError(
                f"{filename} holds a {type(loaded).__name__}, not a checkpoint dict. "
                f"MODEL.WEIGHTS takes {ACCEPTED_CHECKPOINTS}."
            )
        self._check_state_dict(loaded.get("model"), filename, "model")
        return loaded

    @staticmethod
    def _check_state_dict(state: Any, filename: str, entry: str) -> None:
        """``state`` maps names to tensors (or arrays), else :class:`CheckpointError`."""
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"{filename}: entry {entry!r} is a {type(state).__name__}, expected a state_dict "
                f"(parameter name -> tensor). MODEL.WEIGHTS takes {ACCEPTED_CHECKPOINTS}."
            )
        for key, value in state.items():
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                raise CheckpointError(
                    f"{filename}: entry {entry!r} is not a state_dict: its key {key!r} holds "
                    f"an object of type {type(value).__name__}, not a tensor. MODEL.WEIGHTS "
                    f"takes {ACCEPTED_CHECKPOINTS}."
                )

    def _load_model(self, checkpoint: Dict[str, Any]):
        filename = self._loading
        model_state = self.model.state_dict()
        total = len(model_state)
        incompatible = super()._load_model(checkpoint)
        shapes = incompatible.incorrect_shapes
        # not missing: keys of another shape, and tied weights loaded under another name
        reused_ok = set(_filter_reused_missing_keys(self.model, incompatible.missing_keys))
        other_shape = {key for key, _, _ in shapes}
        missing = [k for k in incompatible.missing_keys if k in reused_ok and k not in other_shape]
        if incompatible.unexpected_keys:
            logger.warning(
                "%s holds %d entries this model does not have (ignored), e.g. %s",
                filename,
                len(incompatible.unexpected_keys),
                ", ".join(incompatible.unexpected_keys[:_LISTED_KEYS]),
            )
            # detectron2 would list them all again
            incompatible.unexpected_keys.clear()
        if not missing and not shapes:
            return incompatible
        loaded = total - len(missing) - len(shapes)
        if self.allow_partial and loaded > 0:
            logger.warning(
                "Partial load of %s: %d of %d model entries loaded; %d missing from it and %d "
                "of another shape keep their initial values",
                filename,
                loaded,
                total,
                len(missing),
                len(shapes),
            )
            return incompatible
        raise CheckpointError(self._mismatch_message(filename, total, loaded, missing, shapes))

    def _mismatch_message(
        self,
        filename: str,
        total: int,
        loaded: int,
        missing: List[str],
        shapes: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]],
    ) -> str:
        lines = [
            f"{filename} does not fit the model: {len(shapes)} of its {total} entries have "
            f"another shape and {len(missing)} are missing from the checkpoint ({loaded} fit)."
        ]
        for key, in_ckpt, in_model in shapes[:_LISTED_KEYS]:
            lines.append(f"  {key}: checkpoint {list(in_ckpt)}, model {list(in_model)}")
        model_state = self.model.state_dict()
        for key in missing[:_LISTED_KEYS]:
            lines.append(f"  {key}: not in the checkpoint, model {list(_shape(model_state[key]))}")
        if self.allow_partial:
            lines.append("No entry of it fits this model.")
        else:
            lines.append(
                "Was it written with another config (model size, number of classes, CLIP "
                "model)? Compare its folder's config.yaml with this config. To start training "
                "from the entries that fit and keep the initial values of the rest, set "
                "MODEL.WEIGHTS_ALLOW_PARTIAL True (training only)."
            )
        return "\n".join(lines)


class HierVLCheckpointer(StrictCheckpointer):
    """:class:`StrictCheckpointer` that can load the checkpoint's teacher into ``model``.

    With ``use_teacher=True`` and a checkpoint holding ``TEACHER_CHECKPOINT_KEY``, the teacher's
    weights replace the student's ``"model"`` entry before loading; otherwise it behaves as
    ``DetectionCheckpointer`` (detectron2 ``.pth`` / ``.pkl`` files, URLs through PathManager).
    After ``load``, ``loaded_teacher`` says which weights were used.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, use_teacher: bool = True):
        """
        Args:
            model: the model to load into (not wrapped in DDP).
            save_dir: detectron2's checkpoint folder (unused for loading a given path).
            use_teacher: prefer the teacher's weights when the checkpoint has them.
        """
        super().__init__(model, save_dir)
        self.use_teacher = use_teacher
        self.loaded_teacher = False

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = dict(super()._load_file(filename))
        teacher = loaded.pop(TEACHER_CHECKPOINT_KEY, None)
        self.loaded_teacher = False
        if self.use_teacher and teacher is not None:
            self._check_state_dict(teacher, filename, TEACHER_CHECKPOINT_KEY)
            loaded["model"] = teacher
            self.loaded_teacher = True
        return loaded


def load_inference_weights(
    model: torch.nn.Module, weights: str, *, use_teacher: bool = True
) -> str:
    """Load ``weights`` into ``model`` for evaluation or visualisation.

    The checkpoint must fit the model whole (:class:`StrictCheckpointer`): evaluating a model
    of which a part kept its random initialisation is never what was meant.

    Args:
        model: the model (unwrapped).
        weights: a checkpoint path or URL (``MODEL.WEIGHTS``); ``""`` leaves the model as built.
        use_teacher: take the EMA teacher's weights when the checkpoint has them
            (``MODEL.HIERVL.TEST.USE_TEACHER``).

    Returns:
        ``"teacher"``, ``"student"`` (the checkpoint's ``"model"`` entry) or ``"none"``.

    Raises:
        CheckpointError: ``weights`` is not a checkpoint, or does not fit ``model``.
    """
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: running the model with its initial weights.")
        return "none"
    checkpointer = HierVLCheckpointer(model, use_teacher=use_teacher)
    checkpointer.load(weights)
    which = "teacher" if checkpointer.loaded_teacher else "student"
    logger.info("Loaded the %s weights of %s", which, weights)
    return which


# ---- saving -----------------------------------------------------------------------------------


def all_finite(tensors: List[torch.Tensor]) -> torch.Tensor:
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
    if bool(all_finite([t for _, t in items])):
        return None, 0
    bad = [n for n, t in items if not bool(all_finite([t]))]
    if not bad:  # only the norm over all of them overflows
        return "(none alone: their total norm overflows)", len(items)
    return bad[0], len(bad)


class AtomicCheckpointer(StrictCheckpointer):
    """The trainer's checkpointer: :class:`StrictCheckpointer` (whole-checkpoint loads) whose checkpoint and ``last_checkpoint`` tag are written
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
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


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
