"""Hungarian matcher on hand-made predictions."""

import pytest
import torch

from hiervl.modeling.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_bce_cost

H = W = 16


def _segments():
    """Three disjoint segments: left, right, bottom-middle strips; labels 2, 0, 1."""
    masks = torch.zeros(3, H, W)
    masks[0, :, :5] = 1
    masks[1, :, 11:] = 1
    masks[2, 8:, 5:11] = 1
    return torch.tensor([2, 0, 1]), masks


def _target(labels, masks, weight=None):
    return {
        "labels": labels,
        "masks": masks,
        "weight": torch.ones(H, W) if weight is None else weight,
    }


def test_recovers_a_permutation():
    torch.manual_seed(0)
    labels, masks = _segments()
    perm = torch.tensor([4, 1, 3])  # segment i is predicted by row perm[i]
    pred_masks = torch.full((1, 6, H, W), -8.0)
    pred_logits = torch.zeros(1, 6, 4)
    for seg, row in enumerate(perm.tolist()):
        pred_masks[0, row] = masks[seg] * 16 - 8
        pred_logits[0, row, labels[seg]] = 6.0
    matcher = HungarianMatcher(num_points=200)
    ((rows, cols),) = matcher(
        pred_logits, pred_masks, [_target(labels, masks)], torch.ones(6, dtype=torch.bool)
    )
    assert sorted(zip(cols.tolist(), rows.tolist())) == [(0, 4), (1, 1), (2, 3)]


def test_only_allowed_rows_are_matched_and_indices_are_global():
    labels, masks = _segments()
    pred_masks = torch.randn(1, 6, H, W)
    pred_logits = torch.randn(1, 6, 4)
    rows_allowed = torch.tensor([False, False, False, True, True, False])
    ((rows, cols),) = HungarianMatcher(num_points=64)(
        pred_logits, pred_masks, [_target(labels, masks)], rows_allowed
    )
    assert set(rows.tolist()) == {3, 4}
    assert cols.numel() == 2 and len(set(cols.tolist())) == 2


def test_empty_targets_and_empty_rows():
    pred_masks = torch.randn(2, 5, H, W)
    pred_logits = torch.randn(2, 5, 4)
    labels, masks = _segments()
    empty = _target(torch.zeros(0, dtype=torch.long), torch.zeros(0, H, W))
    out = HungarianMatcher(num_points=32)(
        pred_logits, pred_masks, [empty, _target(labels, masks)], torch.ones(5, dtype=torch.bool)
    )
    assert out[0][0].numel() == 0 and out[1][0].numel() == 3
    out = HungarianMatcher(num_points=32)(
        pred_logits, pred_masks, [empty, _target(labels, masks)], torch.zeros(5, dtype=torch.bool)
    )
    assert all(r.numel() == 0 for r, _ in out)


def test_ignored_pixels_do_not_count():
    # the prediction disagrees with the target only on ignored pixels -> same cost as a
    # prediction that agrees everywhere
    target = torch.zeros(1, 10)
    target[0, :5] = 1
    weights = torch.ones(10)
    weights[5:] = 0
    good = (target * 20 - 10).clone()
    bad_on_ignored = good.clone()
    bad_on_ignored[0, 5:] = 10
    for fn in (batch_sigmoid_bce_cost, batch_dice_cost):
        torch.testing.assert_close(fn(good, target, weights), fn(bad_on_ignored, target, weights))
        assert fn(good, target, torch.ones(10)) < fn(bad_on_ignored, target, torch.ones(10))


def test_costs_prefer_the_right_mask():
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    preds = torch.tensor([[5.0, 5.0, -5.0, -5.0], [-5.0, -5.0, 5.0, 5.0]])
    for fn in (batch_sigmoid_bce_cost, batch_dice_cost):
        cost = fn(preds, target, torch.ones(4))
        assert cost.shape == (2, 1) and cost[0, 0] < cost[1, 0]


def test_per_segment_weights():
    """Weights per target ``[T, P]``: each target's costs count its own points only; equal rows
    give the costs of shared weights."""
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    targets = (torch.rand(2, 10) > 0.5).float()
    shared = torch.rand(10)
    for fn in (batch_sigmoid_bce_cost, batch_dice_cost):
        torch.testing.assert_close(fn(logits, targets, shared), fn(logits, targets, shared[None]))
        torch.testing.assert_close(
            fn(logits, targets, shared.expand(2, -1)), fn(logits, targets, shared)
        )
    # target 1 ignores points 5.. where target 0 counts them: a prediction wrong only there
    # costs more against target 0, nothing more against target 1
    target = torch.zeros(2, 10)
    target[:, :5] = 1
    weights = torch.ones(2, 10)
    weights[1, 5:] = 0
    good = target[:1] * 20 - 10
    bad = good.clone()
    bad[0, 5:] = 10
    for fn in (batch_sigmoid_bce_cost, batch_dice_cost):
        g, b = fn(good, target, weights), fn(bad, target, weights)
        assert b[0, 0] > g[0, 0] + 0.1
        assert b[0, 1] == pytest.approx(float(g[0, 1]), abs=1e-4)
    # the matcher takes [T, H, W] weights
    labels, masks = _segments()
    pred_masks = torch.full((1, 3, H, W), -8.0)
    for seg in range(3):
        pred_masks[0, seg] = masks[seg] * 16 - 8
    ((rows, cols),) = HungarianMatcher(num_points=200)(
        torch.zeros(1, 3, 4),
        pred_masks,
        [_target(labels, masks, torch.ones(3, H, W))],
        torch.ones(3, dtype=torch.bool),
    )
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1), (2, 2)]
