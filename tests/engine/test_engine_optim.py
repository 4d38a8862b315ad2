"""Parameter groups, poly schedule, gradient clipping."""

import pytest
import torch
from torch import nn

from hiervl.engine import build_param_groups, build_poly_lr_scheduler, clip_gradients


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.decoder = nn.Linear(4, 4)
        self.decoder.class_embed = nn.Linear(4, 3)
        self.decoder.query_feat = nn.Embedding(3, 4)
        self.prompts = nn.Parameter(torch.zeros(2, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_lr_and_decay():
    groups = build_param_groups(
        _Net(),
        base_lr=1.0,
        weight_decay=0.1,
        backbone_prefixes=("image_encoder",),
        backbone_multiplier=0.01,
        head_prefixes=("decoder",),
        head_multiplier=10.0,
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        weight_decay_embed=0.0,
    )
    by_name = {g["name"]: g for g in groups}
    assert not any(n.startswith("frozen") for n in by_name)
    assert by_name["image_encoder.0.weight"]["lr"] == pytest.approx(0.01)
    assert by_name["image_encoder.0.weight"]["weight_decay"] == 0.1
    assert by_name["image_encoder.0.bias"]["weight_decay"] == 0.0
    assert by_name["image_encoder.1.weight"]["weight_decay"] == 0.0  # LayerNorm
    assert by_name["decoder.weight"]["lr"] == pytest.approx(10.0)
    assert by_name["decoder.query_feat.weight"]["weight_decay"] == 0.0  # embedding
    assert by_name["decoder.query_feat.weight"]["lr"] == pytest.approx(10.0)
    assert by_name["decoder.class_embed.weight"]["weight_decay"] == 0.1  # a classifier
    assert by_name["prompts"]["lr"] == pytest.approx(1.0)
    assert by_name["prompts"]["weight_decay"] == 0.0


def test_poly_schedule_with_warmup():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 2.0}], lr=2.0)
    sched = build_poly_lr_scheduler(opt, max_iter=10, power=1.0, warmup_iters=2, warmup_factor=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0)  # warm-up starts at warmup_factor
    assert lrs[1] < lrs[2]
    assert lrs[5] == pytest.approx(2.0 * (1 - 5 / 10))  # poly after warm-up
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_clip_full_model_norm():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    clip_gradients([a, b], clip_type="full_model", clip_value=1.0, norm_type=2.0)
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError):
        clip_gradients([a], clip_type="nope", clip_value=1.0, norm_type=2.0)
