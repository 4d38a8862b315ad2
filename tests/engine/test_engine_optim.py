"""Parameter groups, poly schedule, gradient clipping."""

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from hiervl.engine import build_param_groups, build_poly_lr_scheduler, optimizer_with_clipping


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
    assert by_name["prompts"]["lr"] == pytest.approx(10.0)  # not pretrained: the head lr
    assert by_name["prompts"]["weight_decay"] == 0.0


def test_real_hiervl_only_pretrained_clip_gets_backbone_multiplier():
    """Every trainable parameter of the tiny HierVL and its lr: exactly the pretrained CLIP
    visual tower is fine-tuned at SOLVER.BACKBONE_MULTIPLIER; the feature pyramid inside the
    image encoder (new layers feeding the pixel decoder) and everything else train at the head
    lr."""
    from detectron2.modeling import build_model

    from hiervl.engine import HierVLTrainer
    from hiervl.utils.testing import tiny_config

    cfg = tiny_config(SOLVER__BACKBONE_MULTIPLIER=0.01)
    base, head = cfg.SOLVER.BASE_LR, cfg.SOLVER.BASE_LR * cfg.SOLVER.HEAD_MULTIPLIER
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = HierVLTrainer.build_optimizer(cfg, model)
    lr_of = {g["name"]: g["lr"] for g in optimizer.param_groups}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(lr_of) == trainable
    # The pretrained weights: the parameters the open_clip model holds in its visual tower.
    pretrained = {
        f"image_encoder.visual.{n}" for n, _ in model.image_encoder.visual.named_parameters()
    }
    slow = {n for n, lr in lr_of.items() if lr == pytest.approx(base * 0.01)}
    assert slow == pretrained
    assert all(lr_of[n] == pytest.approx(head) for n in trainable - pretrained)
    assert any(n.startswith("image_encoder.pyramid.") for n in trainable - pretrained)
    # Frozen CLIP parts (text tower, the frozen copy of Eq. 6) are not optimised at all.
    assert not any(
        n.startswith(("text_encoder.tower.", "image_encoder.frozen_visual.")) for n in lr_of
    )


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


def _clipping_optimizer(clip_type, clip_value=1.0):
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    # lr 0: the step leaves the weights, only the clipping shows (in the gradients)
    return optimizer_with_clipping(cfg, torch.optim.SGD)([a, b], lr=0.0), a, b


def test_optimizer_clips_the_full_model_norm_as_mask2former():
    opt, a, b = _clipping_optimizer("full_model")
    opt.step()
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0, rel=1e-4)
    assert a.grad[0] / b.grad[0] == pytest.approx(3.0 / 4.0)  # one factor for all


def test_optimizer_clips_per_parameter_with_detectron2():
    opt, a, b = _clipping_optimizer("norm")
    opt.step()
    assert a.grad.norm().item() == pytest.approx(1.0) and b.grad.item() == pytest.approx(1.0)
    opt, a, b = _clipping_optimizer("value", clip_value=2.0)
    opt.step()
    assert a.grad.tolist() == [2.0, 0.0] and b.grad.tolist() == [2.0]
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        _clipping_optimizer("nope")
    cfg = get_cfg()
    assert optimizer_with_clipping(cfg, torch.optim.SGD) is torch.optim.SGD  # clipping off
