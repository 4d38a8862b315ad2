"""Loading weights for inference: the EMA teacher when the checkpoint holds one.

The semi-supervised trainer saves the teacher's ``state_dict`` under ``TEACHER_CHECKPOINT_KEY``
next to detectron2's ``"model"`` (the student). Evaluation (``train_net.py --eval-only``), the
demo and the visualisation tools all load through :func:`load_inference_weights`, so "teacher
if present" has one implementation.
"""

import logging
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["TEACHER_CHECKPOINT_KEY", "HierVLCheckpointer", "load_inference_weights"]

logger = logging.getLogger(__name__)

# Key of the EMA teacher's state_dict in a HierVL training checkpoint.
TEACHER_CHECKPOINT_KEY = "teacher"


class HierVLCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that can load the checkpoint's teacher into ``model``.

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
        loaded = super()._load_file(filename)
        teacher = loaded.pop(TEACHER_CHECKPOINT_KEY, None)
        self.loaded_teacher = False
        if self.use_teacher and teacher is not None:
            if not isinstance(teacher, dict):
                raise TypeError(
                    f"{filename}: entry {TEACHER_CHECKPOINT_KEY!r} is a {type(teacher).__name__}, "
                    "expected a state_dict"
                )
            loaded["model"] = teacher
            self.loaded_teacher = True
        return loaded


def load_inference_weights(
    model: torch.nn.Module, weights: str, *, use_teacher: bool = True
) -> str:
    """Load ``weights`` into ``model`` for evaluation or visualisation.

    Args:
        model: the model (unwrapped).
        weights: a checkpoint path or URL (``MODEL.WEIGHTS``); ``""`` leaves the model as built.
        use_teacher: take the EMA teacher's weights when the checkpoint has them
            (``MODEL.HIERVL.TEST.USE_TEACHER``).

    Returns:
        ``"teacher"``, ``"student"`` (the checkpoint's ``"model"`` entry) or ``"none"``.
    """
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: running the model with its initial weights.")
        return "none"
    checkpointer = HierVLCheckpointer(model, use_teacher=use_teacher)
    checkpointer.load(weights)
    which = "teacher" if checkpointer.loaded_teacher else "student"
    logger.info("Loaded the %s weights of %s", which, weights)
    return which
