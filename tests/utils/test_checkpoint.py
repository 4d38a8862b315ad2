"""load_inference_weights: the teacher when the checkpoint has one, else the student."""

import torch
from torch import nn

from hiervl.utils.checkpoint import TEACHER_CHECKPOINT_KEY, load_inference_weights


def _net(value):
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(value)
        net.bias.fill_(value)
    return net


def test_teacher_preferred_student_fallback(tmp_path):
    student, teacher = _net(1.0), _net(2.0)
    both = str(tmp_path / "both.pth")
    torch.save({"model": student.state_dict(), TEACHER_CHECKPOINT_KEY: teacher.state_dict()}, both)
    only_student = str(tmp_path / "student.pth")
    torch.save({"model": student.state_dict(), "iteration": 3}, only_student)

    model = _net(0.0)
    assert load_inference_weights(model, both) == "teacher"
    assert model.weight.eq(2.0).all()
    assert load_inference_weights(model, both, use_teacher=False) == "student"
    assert model.weight.eq(1.0).all()
    model = _net(0.0)
    assert load_inference_weights(model, only_student) == "student"
    assert model.bias.eq(1.0).all()
    assert load_inference_weights(model, "") == "none"
