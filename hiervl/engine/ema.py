"""Exponential moving average (mean teacher) of a student model.

Ours rather than ``torch.optim.swa_utils.AveragedModel``: that wraps the model (the teacher's
checkpoint keys gain ``module.``, and its ``inference`` / ``semantic_probs`` sit one attribute
down), our per-step momentum (``ema_momentum``) would need a custom ``avg_fn`` anyway, and a
plain average of constant ``-inf`` buffers (attention masks) gives NaN at momentum 0 or 1
(``0 * inf``), which ``ema_update`` avoids by keeping entries equal in both models. The whole
module is three functions.
"""

import copy

import torch
from torch import nn

__all__ = ["ema_momentum", "ema_update", "build_teacher"]


def ema_momentum(step: int, max_momentum: float) -> float:
    """Teacher momentum at optimisation step ``step`` (0-based): ``min(1 - 1/(t+1), m)``.

    At ``t = 0`` the momentum is 0: the teacher becomes a copy of the student.
    """
    return min(1.0 - 1.0 / (step + 1), max_momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher ← momentum · teacher + (1 − momentum) · student`` over weights AND buffers.

    Floating-point parameters and buffers are averaged (buffer entries equal in both, e.g.
    ``-inf`` in an attention mask, are kept as they are); other buffers (integer counters,
    boolean masks) are copied from the student. The two modules must have the same structure
    (the teacher is a deep copy of the unwrapped student).
    """
    t_params = dict(teacher.named_parameters())
    for name, s_param in student.named_parameters():
        t_params[name].mul_(momentum).add_(s_param.detach(), alpha=1.0 - momentum)
    t_buffers = dict(teacher.named_buffers())
    for name, s_buf in student.named_buffers():
        t_buf = t_buffers[name]
        if t_buf.dtype.is_floating_point:
            # Entries equal in both (constant buffers such as a causal mask of -inf) are copied:
            # averaging them would turn 0 · inf into NaN.
            averaged = t_buf * momentum + s_buf.detach() * (1.0 - momentum)
            t_buf.copy_(torch.where(t_buf == s_buf, s_buf, averaged))
        else:
            t_buf.copy_(s_buf)


def build_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` in eval mode: the EMA teacher."""
    teacher = copy.deepcopy(student)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
