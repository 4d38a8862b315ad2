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

from hvlformer import cmcr  # noqa: E402

from hiervl.config import add_hiervl_config  # noqa: E402
from hiervl.data.dataset_mappers import build_dataset_mapper  # noqa: E402


def _outputs(logits, masks, aux=(), attn=None, keep=None):
    out = {"pred_logits": logits, "pred_masks": masks}
    out["aux_outputs"] = [{"pred_logits": a, "pred_masks": b} for a, b in aux]
    if attn is not None:
        out["cmsam_attn"] = attn
    if keep is not None:
        out["keep"] = keep
    return out


def _attn(batch, rows, seed):
    """CMSAM-like pixel -> text maps at two levels (8x8, 16x16), each row summing to 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, rows, 64 + 256, generator=g)
    maps = logits.softmax(-1)
    return [maps[..., :64].reshape(batch, rows, 8, 8), maps[..., 64:].reshape(batch, rows, 16, 16)]


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
    # BCE against its own sigmoid is the entropy, not 0; a different view costs more
    other = cmcr_layer_losses(_outputs(logits, masks), _outputs(-logits, -masks), valid)
    assert other["mask"] > same["mask"] and other["class"] > 0.1
    none = cmcr_layer_losses(
        _outputs(logits, masks),
        _outputs(-logits, -masks),
        torch.zeros_like(valid),
        class_weight=torch.zeros(2),
    )
    assert none["mask"].item() == 0.0 and none["class"].item() == 0.0
    attn = _attn(2, 3, seed=0)
    assert cmcr.attention_consistency(attn, attn, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert cmcr.attention_consistency(attn, _attn(2, 3, seed=1), valid) > 0.05
    assert (
        cmcr.attention_consistency(attn, _attn(2, 3, seed=1), torch.zeros_like(valid)).item() == 0.0
    )


def test_attention_term_follows_cmsam_attention_and_nothing_else():
    """METHOD §7: the attention term compares the views' pixel-text (CMSAM) attention maps; it
    used to compare softmaxes of the mask logits, which are not attention maps."""
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 5, 4), torch.randn(2, 5, 16, 16)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    target = _outputs(logits, masks, attn=_attn(2, 3, seed=0))  # 3 class rows + 2 instance rows
    pred = _outputs(logits + 0.5, masks + 0.5, attn=_attn(2, 3, seed=1))
    base = cmcr_losses(target, pred, valid)
    # other masks and logits, same attention: the attention term does not move
    moved = cmcr_losses(target, {**pred, "pred_masks": -masks, "pred_logits": -logits}, valid)
    assert moved["mask"] != base["mask"] and moved["class"] != base["class"]
    assert moved["attn"].item() == pytest.approx(base["attn"].item(), abs=1e-7)
    # other attention, same masks and logits: only the attention term moves
    other = cmcr_losses(target, {**pred, "cmsam_attn": _attn(2, 3, seed=2)}, valid)
    assert other["attn"].item() != pytest.approx(base["attn"].item(), abs=1e-4)
    assert other["mask"] == base["mask"] and other["class"] == base["class"]
    # gradients reach the predicting view's attention maps
    maps = [a.clone().requires_grad_() for a in _attn(2, 3, seed=3)]
    cmcr_losses(target, {**pred, "cmsam_attn": maps}, valid)["attn"].backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)
    # only pixels that take part count: changing the attention on invalid pixels moves nothing
    half = valid.clone()
    half[:, :, 16:] = False
    changed = [a.clone() for a in pred["cmsam_attn"]]
    changed[0][..., 4:] = 0.5
    changed[1][..., 8:] = 0.5
    a = cmcr_losses(target, pred, half)["attn"]
    b = cmcr_losses(target, {**pred, "cmsam_attn": changed}, half)["attn"]
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_rows_masked_out_by_relevance_do_not_move_the_consistency_losses():
    """Rows with keep=False take no part in attention or in the semantic map: CMCR averages over
    the kept rows only (it used to average over every row)."""
    torch.manual_seed(0)
    logits, masks = torch.randn(1, 5, 4), torch.randn(1, 5, 8, 8)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    keep = torch.tensor([[True, False, True, True, True]])  # class row 1 masked out
    attn_a, attn_b = _attn(1, 3, seed=0), _attn(1, 3, seed=1)
    target = _outputs(logits, masks, aux=[(logits, masks)], attn=attn_a, keep=keep)
    pred = _outputs(logits + 1, masks - 1, aux=[(logits + 1, masks - 1)], attn=attn_b, keep=keep)
    base = cmcr_losses(target, pred, valid)

    def perturbed(row):
        l2, m2 = (logits + 1).clone(), (masks - 1).clone()
        l2[:, row] = 20.0 * torch.randn(4)
        m2[:, row] = -30.0
        a2 = [a.clone() for a in attn_b]
        if row < 3:
            a2[0][:, row] = a2[0][:, row].flip(-1) * 3
        return _outputs(l2, m2, aux=[(l2, m2)], attn=a2, keep=keep)

    masked = cmcr_losses(target, perturbed(1), valid)
    for key in ("mask", "class", "attn"):
        assert masked[key].item() == pytest.approx(base[key].item(), abs=1e-6), key
    kept = cmcr_losses(target, perturbed(2), valid)
    for key in ("mask", "class", "attn"):
        assert kept[key].item() != pytest.approx(base[key].item(), abs=1e-4), key
    # a row masked out in the target view only does not count either
    target_keep = keep.clone()
    target_keep[0, 1], target_keep[0, 2] = True, False
    only_target = cmcr_losses({**target, "keep": target_keep}, {**pred, "keep": keep}, valid)
    again = cmcr_losses({**target, "keep": target_keep}, {**perturbed(2), "keep": keep}, valid)
    for key in ("mask", "class", "attn"):
        assert again[key].item() == pytest.approx(only_target[key].item(), abs=1e-6), key


def test_cmcr_averages_layers_and_gradients_flow_to_the_predicting_view():
    logits, masks = torch.randn(1, 2, 3), torch.randn(1, 2, 4, 4)
    pred_l, pred_m = logits.clone().requires_grad_(), (masks + 1).requires_grad_()
    target = _outputs(logits, masks, aux=[(logits, masks)])
    pred = _outputs(pred_l, pred_m, aux=[(pred_l, pred_m)])
    total = cmcr_losses(target, pred, torch.ones(1, 8, 8, dtype=torch.bool))
    single = cmcr_layer_losses(target, pred, torch.ones(1, 8, 8, dtype=torch.bool))
    assert total["mask"].item() == pytest.approx(single["mask"].item(), rel=1e-5)
    assert "attn" not in total  # no CMSAM maps, no attention term
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


def _tiny_hvlformer(tmp_path, **semi):
    from hiervl.utils.testing import tiny_config

    cfg = tiny_config()
    add_hvlformer_config(cfg)
    cfg.HVLFORMER.CMCR_CONF_THRESHOLD = 0.0
    cfg.SEMI.CONF_THRESHOLD = 0.0
    for key, value in semi.items():
        setattr(cfg.SEMI, key, value)
    cfg.SOLVER.MAX_ITER = 1
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(tmp_path)
    seed_all_rng(0)
    return HVLFormerTrainer(cfg)


def test_original_and_weak_views_run_no_loss_pipeline(tmp_path, monkeypatch):
    """The original and weak views feed CMCR only: they used to run the whole loss pipeline
    (Hungarian matching on every decoder layer, the two extra ViT passes of Eq. 6/7) and drop
    it. Only the labelled and the strong batches may match rows and run Eq. 6/7."""
    trainer = _tiny_hvlformer(tmp_path)
    step, model = trainer._trainer, trainer.student
    model.train()
    calls = {"matcher": [], "criterion": 0, "masked_views": 0, "objective_views": None}
    matcher, criterion = model.criterion.matcher, model.criterion
    original_matcher, original_criterion = matcher.forward, criterion.forward
    import hiervl.hiervl_model as meta_arch

    original_vl = meta_arch.vision_language_losses
    original_objective = step.model.forward

    def spy_matcher(logits, *args, **kwargs):
        calls["matcher"].append(logits.shape[0])
        return original_matcher(logits, *args, **kwargs)

    def spy_criterion(*args, **kwargs):
        calls["criterion"] += 1
        return original_criterion(*args, **kwargs)

    def spy_vl(*args, **kwargs):
        calls["masked_views"] += 1
        return original_vl(*args, **kwargs)

    def spy_objective(labeled, unlabeled=None, unsup_weight=1.0, views=None):
        calls["objective_views"] = views
        return original_objective(labeled, unlabeled, unsup_weight, views)

    matcher.forward, criterion.forward = spy_matcher, spy_criterion
    monkeypatch.setattr(meta_arch, "vision_language_losses", spy_vl)
    step.model.forward = spy_objective
    batches = [step.labeled_loader.next(), step.unlabeled_loader.next()]
    if getattr(step, "mix_loader", None) is not None:
        batches.append(step.mix_loader.next())
    losses, _ = step.compute_losses(*batches)
    layers = 1 + model.decoder.num_layers  # the rows entering the decoder + every layer
    assert calls["criterion"] == 2  # the labelled batch and the strong views
    assert len(calls["matcher"]) == 2 * layers
    assert calls["masked_views"] == 2
    views = calls["objective_views"]
    assert torch.is_tensor(views["original"]) and torch.is_tensor(views["weak"])
    assert views["weak"].shape == views["original"].shape == (2, 3, 64, 64)
    assert {
        f"loss_cmcr_{t}_{v}" for t in ("mask", "class", "attn") for v in ("weak", "strong")
    } <= (set(losses))
    # the views' outputs carry CMSAM's attention maps
    out = model.view_outputs(views["weak"])
    c_rows = model.decoder.num_class_rows
    assert [tuple(a.shape[:2]) for a in out["cmsam_attn"]] == [(2, c_rows)] * 3
    total = sum(a.flatten(2).sum(-1) for a in out["cmsam_attn"])
    torch.testing.assert_close(total, torch.ones_like(total))
