"""HVLFormer: CMCR math on hand-made tensors, the three-view mapper, one training step."""

import os
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.env import seed_all_rng

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hvlformer import (  # noqa: E402
    HVLFormerTrainer,
    HVLFormerUnlabeledMapper,
    add_hvlformer_config,
    cmcr_layer_losses,
    cmcr_losses,
    js_divergence,
)

from hiervl.config import add_hiervl_config  # noqa: E402
from hiervl.data.dataset_mappers import build_dataset_mapper  # noqa: E402


def _outputs(logits, masks, aux=()):
    out = {"pred_logits": logits, "pred_masks": masks}
    out["aux_outputs"] = [{"pred_logits": a, "pred_masks": b} for a, b in aux]
    return out


def test_js_divergence_bounds():
    p = torch.tensor([1.0, 0.0])
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-6)
    assert js_divergence(p, torch.tensor([0.0, 1.0])).item() == pytest.approx(np.log(2), rel=1e-4)


def test_cmcr_zero_for_identical_views_and_masked_by_validity():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 3, 4), torch.randn(2, 3, 4, 4) * 5
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    same = cmcr_layer_losses(_outputs(logits, masks), _outputs(logits, masks), valid)
    assert same["class"].item() == pytest.approx(0.0, abs=1e-6)
    assert same["attn"].item() == pytest.approx(0.0, abs=1e-5)
    # BCE against its own sigmoid is the entropy, not 0; a different view costs more
    other = cmcr_layer_losses(_outputs(logits, masks), _outputs(-logits, -masks), valid)
    assert other["mask"] > same["mask"] and other["class"] > 0.1 and other["attn"] > 0.1
    none = cmcr_layer_losses(
        _outputs(logits, masks),
        _outputs(-logits, -masks),
        torch.zeros_like(valid),
        class_weight=torch.zeros(2),
    )
    assert none["mask"].item() == 0.0 and none["attn"].item() == 0.0 and none["class"].item() == 0.0


def test_cmcr_averages_layers_and_gradients_flow_to_the_predicting_view():
    logits, masks = torch.randn(1, 2, 3), torch.randn(1, 2, 4, 4)
    pred_l, pred_m = logits.clone().requires_grad_(), (masks + 1).requires_grad_()
    target = _outputs(logits, masks, aux=[(logits, masks)])
    pred = _outputs(pred_l, pred_m, aux=[(pred_l, pred_m)])
    total = cmcr_losses(target, pred, torch.ones(1, 8, 8, dtype=torch.bool))
    single = cmcr_layer_losses(target, pred, torch.ones(1, 8, 8, dtype=torch.bool))
    assert total["mask"].item() == pytest.approx(single["mask"].item(), rel=1e-5)
    sum(total.values()).backward()
    assert pred_m.grad is not None and pred_m.grad.abs().sum() > 0


def _write_image(path):
    image = np.zeros((12, 12, 3), np.uint8)
    image[:, 6:] = (200, 40, 40)
    cv2.imwrite(path, image)
    return {"file_name": path, "image_id": 0}


def test_three_view_mapper(tmp_path):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    add_hvlformer_config(cfg)
    cfg.INPUT.CROP.SIZE = (16, 16)
    cfg.HVLFORMER.WEAK_JITTER_PROB = 1.0
    mapper = build_dataset_mapper(cfg, cfg.SEMI.DATASET_MAPPER_NAME)
    assert isinstance(mapper, HVLFormerUnlabeledMapper)
    out = mapper(_write_image(str(tmp_path / "a.png")), rng=np.random.default_rng(0))
    for key in ("image", "image_weak", "image_strong"):
        assert out[key].shape == (3, 16, 16) and out[key].dtype == torch.uint8
    assert not torch.equal(out["image"], out["image_weak"])
    assert (out["image_weak"][:, out["ignore_mask"]] == 0).all()


def test_one_hvlformer_step_finite_losses(tmp_path):
    pytest.importorskip("hiervl.hiervl_model")
    from hiervl.utils.testing import tiny_config

    cfg = tiny_config()
    add_hvlformer_config(cfg)
    cfg.HVLFORMER.CMCR_CONF_THRESHOLD = 0.0  # every pixel takes part with a random model
    cfg.SEMI.CONF_THRESHOLD = 0.0
    cfg.SOLVER.MAX_ITER = 1
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(tmp_path)
    seed_all_rng(0)
    trainer = HVLFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    latest = trainer.storage.latest()
    for view in ("weak", "strong"):
        for term in ("mask", "class", "attn"):
            key = f"loss_cmcr_{term}_{view}"
            assert key in latest and np.isfinite(latest[key][0]), key
    assert np.isfinite(latest["total_loss"][0])
