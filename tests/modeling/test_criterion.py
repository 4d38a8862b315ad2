"""Set criterion: tied class rows, matched instance rows, point-sampled losses, weights."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness as uncertain_point_coords,
)

from hiervl.modeling.criterion import (
    HierVLCriterion,
    _labelled_logit_uncertainty,
    logit_uncertainty,
    semantic_targets,
)
from hiervl.modeling.matcher import HungarianMatcher

C, E, N, H, W, DT = 3, 2, 2, 32, 32, 8


def _criterion(**kw):
    args = dict(
        num_classes=C,
        matcher=HungarianMatcher(num_points=256),
        class_weight=2.0,
        mask_weight=5.0,
        dice_weight=5.0,
        align_weight=1.0,
        no_object_weight=0.1,
        num_points=256,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    args.update(kw)
    return HierVLCriterion(**args)


def _label_map():
    sem = torch.full((H, W), 255, dtype=torch.long)
    sem[:, :12] = 0
    sem[:, 12:24] = 2
    return sem  # class 1 absent, columns 24.. ignored


def _rows():
    row_classes = torch.cat([torch.arange(C).repeat_interleave(E), torch.full((N,), -1)])
    return row_classes


def _perfect_outputs(sem, text, row_keep):
    """Outputs that predict the label map exactly (class rows and instance rows), at the label
    resolution (the criterion only needs normalised coordinates)."""
    k = C * E + N
    logits = torch.full((1, k, C + 1), -10.0)
    masks = torch.full((1, k, H, W), -10.0)
    small = sem.float()
    embeds = torch.zeros(1, k, DT)
    for row, c in enumerate(_rows().tolist()):
        present = bool((sem == c).any()) and c >= 0 and bool(row_keep[0, row])
        if present:
            logits[0, row, c] = 10.0
            masks[0, row] = torch.where(small == c, 10.0, -10.0)
            embeds[0, row] = text[c]
        else:
            logits[0, row, C] = 10.0
    # instance rows: predict classes 0 and 2
    for row, c in zip(range(C * E, k), (0, 2)):
        logits[0, row] = -10.0
        logits[0, row, c] = 10.0
        masks[0, row] = torch.where(small == c, 10.0, -10.0)
        embeds[0, row] = text[c]
    return {"pred_logits": logits, "pred_masks": masks, "pred_embeds": embeds}


def test_semantic_targets():
    sem = _label_map()
    weight = torch.full((H, W), 0.5)
    t = semantic_targets(sem, C, weight=weight)
    assert t["labels"].tolist() == [0, 2]
    assert t["masks"].shape == (2, H, W)
    assert torch.equal(t["masks"][1].bool(), sem == 2)
    assert t["weight"][:, 24:].abs().sum() == 0 and torch.allclose(
        t["weight"][:, :24], weight[:, :24]
    )
    # all ignored / out-of-range labels -> no segment
    t = semantic_targets(torch.full((4, 4), 255, dtype=torch.long), C)
    assert t["labels"].numel() == 0 and t["weight"].sum() == 0
    t = semantic_targets(torch.full((4, 4), 7, dtype=torch.long), C)
    assert t["labels"].numel() == 0


def test_assignment_ties_class_rows_and_matches_instances():
    torch.manual_seed(0)
    crit = _criterion()
    sem = _label_map()
    text = F.normalize(torch.randn(C, DT), dim=-1)
    keep = torch.ones(1, C * E + N, dtype=torch.bool)
    keep[0, 0] = False  # row (class 0, level 0) masked -> "no object" although 0 is present
    outputs = _perfect_outputs(sem, text, keep)
    targets = [semantic_targets(sem, C)]
    ((rows, cols),) = crit.assign(outputs, targets, _rows(), keep)
    pairs = sorted(zip(rows.tolist(), targets[0]["labels"][cols].tolist()))
    # rows 1 (class 0, level 1), 4, 5 (class 2), instance rows 6 -> 0 and 7 -> 2
    assert pairs == [(1, 0), (4, 2), (5, 2), (6, 0), (7, 2)]


def test_perfect_prediction_has_small_losses_and_wrong_one_large():
    torch.manual_seed(0)
    # uniform points: importance sampling would put most points on the (blurred) boundaries
    crit = _criterion(no_object_weight=1.0, importance_sample_ratio=0.0)
    sem = _label_map()
    text = F.normalize(torch.randn(C, DT), dim=-1)
    keep = torch.ones(1, C * E + N, dtype=torch.bool)
    outputs = _perfect_outputs(sem, text, keep)
    targets = [semantic_targets(sem, C)]
    good = crit(outputs, targets, row_classes=_rows(), row_keep=keep, text_embeds=text)
    assert set(good) == {"loss_ce", "loss_mask", "loss_dice", "loss_align"}
    assert good["loss_ce"] < 1e-3 and good["loss_mask"] < 0.5 and good["loss_dice"] < 0.3
    assert good["loss_align"] < 1e-6
    wrong = {k: -v if k != "pred_embeds" else v.flip(-1) for k, v in outputs.items()}
    bad = crit(wrong, targets, row_classes=_rows(), row_keep=keep, text_embeds=text)
    for key in good:
        assert bad[key] > good[key] + 0.1, key


def test_ignored_and_weighted_pixels():
    torch.manual_seed(0)
    crit = _criterion(class_weight=0.0, align_weight=0.0, importance_sample_ratio=0.0)
    sem = _label_map()
    text = F.normalize(torch.randn(C, DT), dim=-1)
    keep = torch.ones(1, C * E + N, dtype=torch.bool)
    outputs = _perfect_outputs(sem, text, keep)
    # corrupt the predictions on the ignored columns only: the mask losses must not notice
    corrupted = {k: v.clone() for k, v in outputs.items()}
    # (ignored from column 24; bilinear sampling reaches one pixel further)
    corrupted["pred_masks"][..., 25:] = 10.0
    targets = [semantic_targets(sem, C)]
    torch.manual_seed(1)
    a = crit(outputs, targets, row_classes=_rows(), row_keep=keep)
    torch.manual_seed(1)
    b = crit(corrupted, targets, row_classes=_rows(), row_keep=keep)
    assert set(a) == {"loss_mask", "loss_dice"}
    torch.testing.assert_close(a, b)
    # ... and the same corruption on labelled pixels does count
    visible = {k: v.clone() for k, v in outputs.items()}
    visible["pred_masks"][..., 13:20] = 10.0
    torch.manual_seed(1)
    c = crit(visible, targets, row_classes=_rows(), row_keep=keep)
    assert c["loss_mask"] > a["loss_mask"] + 0.5
    # a uniform per-pixel weight of 0.5 halves the BCE
    noisy = {k: v * 0.05 for k, v in outputs.items()}
    full = crit(noisy, [semantic_targets(sem, C)], row_classes=_rows(), row_keep=keep)
    half = crit(
        noisy,
        [semantic_targets(sem, C, weight=torch.full((H, W), 0.5))],
        row_classes=_rows(),
        row_keep=keep,
    )
    assert math.isclose(half["loss_mask"].item(), 0.5 * full["loss_mask"].item(), rel_tol=0.1)


def test_mask_bce_is_a_mean_over_labelled_points_chosen_among_labelled_pixels():
    """Ignored pixels neither attract the uncertainty-chosen points nor dilute the BCE."""
    crit = _criterion(class_weight=0.0, dice_weight=0.0, align_weight=0.0)
    sem = _label_map()  # a quarter of the columns ignored
    keep = torch.ones(1, C * E + N, dtype=torch.bool)
    flat = torch.zeros(1, C * E + N, H, W)  # logit 0 everywhere: BCE ln 2 at every point
    outputs = {"pred_logits": torch.zeros(1, C * E + N, C + 1), "pred_embeds": None}
    targets = [semantic_targets(sem, C)]
    torch.manual_seed(0)
    loss = crit({**outputs, "pred_masks": flat}, targets, row_classes=_rows(), row_keep=keep)
    per_mask = loss["loss_mask"].item() / 5.0
    # ln 2, not 3/4 ln 2 (the labelled fraction); bilinear points on the edge of the ignored
    # band have weights in (0, 1) and take a few per cent off
    assert math.isclose(per_mask, math.log(2.0), rel_tol=0.05)
    # ignored pixels are the most uncertain ones here (logit 0 vs +-8): the uncertainty-chosen
    # points still all land on labelled pixels (x < 24/32, plus one pixel of bilinear reach)
    logits = torch.where(sem != 255, 8.0, 0.0)[None, None]
    weight = (sem != 255).float()[None, None]
    coords = uncertain_point_coords(
        torch.cat([logits, weight], 1), _labelled_logit_uncertainty, 256, 3.0, 1.0
    )
    assert coords[..., 0].max() < 25 / 32
    coords = uncertain_point_coords(logits, logit_uncertainty, 256, 3.0, 1.0)
    # the plain logit uncertainty spends most points on the ignored quarter
    assert (coords[..., 0] > 23 / 32).float().mean() > 0.6


def test_point_sampling_ratios_are_checked_when_the_criterion_is_built():
    # detectron2's point selection only asserts them, at the first step; a bad config fails at
    # build time with a message instead.
    with pytest.raises(ValueError, match="oversample_ratio"):
        _criterion(oversample_ratio=0.5)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        _criterion(importance_sample_ratio=1.5)


def test_zero_weights_skip_terms_and_deep_supervision():
    crit = _criterion(mask_weight=0.0, align_weight=0.0)
    sem = _label_map()
    text = F.normalize(torch.randn(C, DT), dim=-1)
    keep = torch.ones(1, C * E + N, dtype=torch.bool)
    outputs = _perfect_outputs(sem, text, keep)
    outputs["aux_outputs"] = [dict(outputs), dict(outputs)]
    losses = crit(outputs, [semantic_targets(sem, C)], row_classes=_rows(), row_keep=keep)
    assert set(losses) == {
        "loss_ce",
        "loss_dice",
        "loss_ce_0",
        "loss_dice_0",
        "loss_ce_1",
        "loss_dice_1",
    }
    with pytest.raises(ValueError):
        _criterion()(outputs, [semantic_targets(sem, C)], row_classes=_rows(), row_keep=keep)


def test_bad_inputs_give_finite_losses_with_gradients():
    torch.manual_seed(0)
    crit = _criterion()
    text = F.normalize(torch.randn(C, DT), dim=-1)
    k = C * E + N
    outputs = {
        "pred_logits": torch.randn(2, k, C + 1, requires_grad=True),
        "pred_masks": torch.randn(2, k, H // 4, W // 4, requires_grad=True),
        "pred_embeds": torch.randn(2, k, DT, requires_grad=True),
    }
    all_ignore = torch.full((H, W), 255, dtype=torch.long)
    zero_weight = semantic_targets(_label_map(), C, weight=torch.zeros(H, W))
    for targets in (
        [semantic_targets(all_ignore, C)] * 2,
        [zero_weight, semantic_targets(all_ignore, C)],
    ):
        losses = crit(
            outputs,
            targets,
            row_classes=_rows(),
            row_keep=torch.ones(2, k, dtype=torch.bool),
            text_embeds=text,
        )
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
    # a class absent from the batch: its rows are "no object", the loss is finite
    one_class = torch.zeros(H, W, dtype=torch.long)
    losses = crit(
        outputs,
        [semantic_targets(one_class, C)] * 2,
        row_classes=_rows(),
        row_keep=torch.ones(2, k, dtype=torch.bool),
        text_embeds=text,
    )
    assert all(torch.isfinite(v) for v in losses.values())


def test_ruled_out_pixels_are_negatives_of_their_class_only():
    """With ``ruled_out`` a segment's mask also learns "not here" on the unlabelled pixels where
    its class is ruled out (weight 1, target 0) — and only its own class's."""
    sem = _label_map()  # class 0 in columns :12, class 2 in 12:24, 24: unlabelled
    ruled_out = torch.zeros(C, H, W, dtype=torch.bool)
    ruled_out[0, :, 24:] = True  # class 0 is known not to be in the unlabelled strip
    ruled_out[0, :, 12:24] = True  # and not where class 2 is labelled (no change there)
    t = semantic_targets(sem, C, ruled_out=ruled_out)
    assert t["weight"].shape == (2, H, W) and t["labels"].tolist() == [0, 2]
    assert t["weight"][0, :, 24:].eq(1).all() and t["masks"][0, :, 24:].eq(0).all()
    assert t["weight"][1, :, 24:].eq(0).all()  # class 2 is not ruled out there
    assert t["weight"][:, :, :24].eq(1).all()
    with pytest.raises(ValueError, match="ruled_out"):
        semantic_targets(sem, C, ruled_out=ruled_out[:2])

    # a class-0 mask that grows over the unlabelled strip costs nothing without the ruling and
    # is penalised with it; growing class 2's mask there costs nothing either way
    torch.manual_seed(0)
    crit = _criterion(class_weight=0.0, align_weight=0.0, importance_sample_ratio=0.0)
    text = F.normalize(torch.randn(C, DT), dim=-1)
    keep = torch.ones(1, C * E + N, dtype=torch.bool)
    outputs = _perfect_outputs(sem, text, keep)
    for c in (0, 2):
        grown = {k: v.clone() for k, v in outputs.items()}
        rows = [r for r, rc in enumerate(_rows().tolist()) if rc == c]
        rows += [C * E + (0 if c == 0 else 1)]  # the instance row predicting c
        grown["pred_masks"][0, rows, :, 24:] = 10.0
        losses = {}
        for name, kwargs in (("plain", {}), ("ruled", {"ruled_out": ruled_out})):
            targets = [semantic_targets(sem, C, **kwargs)]
            torch.manual_seed(1)  # the same points in every call
            base = crit(outputs, targets, row_classes=_rows(), row_keep=keep, text_embeds=text)
            torch.manual_seed(1)
            out = crit(grown, targets, row_classes=_rows(), row_keep=keep, text_embeds=text)
            losses[name] = float(out["loss_mask"] - base["loss_mask"])
        # (points next to column 24 interpolate between a labelled and an unlabelled pixel)
        assert abs(losses["plain"]) < 0.1
        if c == 0:
            assert losses["ruled"] > losses["plain"] + 1.0
        else:
            assert losses["ruled"] == pytest.approx(losses["plain"], abs=1e-6)
