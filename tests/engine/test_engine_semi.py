"""EMA math, pseudo-labels and CutMix on hand-made tensors."""

import math

import pytest
import torch
from torch import nn

from hiervl.engine import (
    build_teacher,
    cutmix,
    ema_momentum,
    ema_update,
    finalize_pseudo_labels,
    pseudo_labels_from_probs,
    sample_cutmix_masks,
)
from hiervl.engine.semi import (
    align_distribution,
    class_balanced_thresholds,
    class_peak_probability,
    class_pixel_prior,
    mean_class_probability,
    unsup_rampup,
)


class _WithBuffers(nn.Module):
    def __init__(self, w: float, stat: float, count: int):
        super().__init__()
        self.w = nn.Parameter(torch.full((2,), w))
        self.register_buffer("stat", torch.full((2,), stat))
        self.register_buffer("count", torch.tensor(count))
        self.register_buffer("mask", torch.tensor([0.0, float("-inf")]))


def test_ema_momentum_schedule():
    assert ema_momentum(0, 0.996) == 0.0
    assert ema_momentum(1, 0.996) == pytest.approx(0.5)
    assert ema_momentum(9, 0.996) == pytest.approx(0.9)
    assert ema_momentum(10_000, 0.996) == pytest.approx(0.996)


def test_ema_update_weights_and_buffers():
    teacher, student = _WithBuffers(1.0, 10.0, 3), _WithBuffers(3.0, 20.0, 7)
    ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher.w, torch.full((2,), 0.75 * 1 + 0.25 * 3))
    assert torch.allclose(teacher.stat, torch.full((2,), 0.75 * 10 + 0.25 * 20))
    assert int(teacher.count) == 7  # integer buffers are copied
    assert teacher.mask.tolist() == [0.0, float("-inf")]  # constant -inf entries stay, no NaN
    ema_update(teacher, student, 0.0)  # momentum 0: the teacher becomes the student
    assert torch.equal(teacher.w.detach(), student.w.detach())
    assert torch.equal(teacher.stat, student.stat)
    assert teacher.mask.tolist() == [0.0, float("-inf")]


def test_build_teacher_is_frozen_copy():
    student = _WithBuffers(1.0, 2.0, 0)
    teacher = build_teacher(student)
    assert not teacher.training and not teacher.w.requires_grad
    assert teacher.w.data_ptr() != student.w.data_ptr()


def test_pseudo_labels_threshold_and_weight():
    # 2 classes, 1 x 3 pixels: confidences 0.9, 0.6, 0.97.
    p1 = torch.tensor([[[0.9, 0.4, 0.03]]])
    probs = torch.stack([p1, 1 - p1], dim=1)  # [1, 2, 1, 3]
    labels, conf = pseudo_labels_from_probs(probs)
    assert labels.tolist() == [[[0, 1, 1]]]
    assert torch.allclose(conf, torch.tensor([[[0.9, 0.6, 0.97]]]))
    ignore = torch.tensor([[[False, False, True]]])
    targets, weight = finalize_pseudo_labels(labels, conf, ignore, mode="threshold", threshold=0.8)
    assert targets.tolist() == [[[0, 255, 255]]] and weight is None
    targets, weight = finalize_pseudo_labels(labels, conf, ignore, mode="weight", threshold=0.8)
    assert targets.tolist() == [[[0, 1, 255]]]
    assert torch.allclose(weight, torch.tensor([[[0.9, 0.6, 0.0]]]))
    with pytest.raises(ValueError):
        finalize_pseudo_labels(labels, conf, None, mode="soft", threshold=0.5)


def test_class_balanced_thresholds_keep_small_classes():
    # Class 0 is confident everywhere; class 1 never reaches the global threshold 0.8.
    labels = torch.tensor([[[0, 0, 0, 1, 1, 1, 1]]])
    conf = torch.tensor([[[0.99, 0.95, 0.9, 0.3, 0.4, 0.5, 0.6]]])
    ignore = torch.tensor([[[False] * 6 + [True]]])  # the padded 0.6 pixel does not count
    thr = class_balanced_thresholds(
        labels, conf, ignore, num_classes=3, threshold=0.8, keep_ratio=0.5
    )
    assert thr[0] == pytest.approx(0.8) and thr[2] == pytest.approx(0.8)
    assert thr[1] == pytest.approx(0.4)  # median of 0.3, 0.4, 0.5
    targets, _ = finalize_pseudo_labels(labels, conf, ignore, mode="threshold", threshold=thr)
    assert targets.tolist() == [[[0, 0, 0, 255, 1, 1, 255]]]
    # Without the per-class thresholds class 1 would vanish from the targets.
    targets, _ = finalize_pseudo_labels(labels, conf, ignore, mode="threshold", threshold=0.8)
    assert 1 not in targets.tolist()[0][0]
    off = class_balanced_thresholds(labels, conf, None, num_classes=3, threshold=0.8, keep_ratio=0)
    assert off.tolist() == pytest.approx([0.8] * 3)
    with pytest.raises(ValueError):
        class_balanced_thresholds(labels, conf, None, num_classes=3, threshold=0.8, keep_ratio=2)


def test_distribution_alignment_moves_over_predicted_mass_to_the_prior():
    # a teacher biased to class 0: mean prediction (0.7, 0.2, 0.1) against a prior (0.4, 0.3, 0.3)
    probs = torch.tensor([0.7, 0.2, 0.1])[None, :, None, None].expand(2, 3, 4, 4).clone()
    prior = torch.tensor([0.4, 0.3, 0.3])
    aligned = align_distribution(probs, prior)
    torch.testing.assert_close(aligned.sum(1), torch.ones(2, 4, 4))
    expected = torch.tensor([0.4, 0.3, 0.3])  # p * prior / mean, renormalised
    torch.testing.assert_close(aligned[0, :, 0, 0], expected)
    # the batch mean counts valid pixels only; padded ones do not bias it
    probs[:, :, :, 2:] = torch.tensor([0.0, 0.0, 1.0])[None, :, None, None]
    valid = torch.zeros(2, 4, 4, dtype=torch.bool)
    valid[:, :, :2] = True
    torch.testing.assert_close(mean_class_probability(probs, valid), torch.tensor([0.7, 0.2, 0.1]))
    torch.testing.assert_close(align_distribution(probs, prior, valid)[0, :, 0, 0], expected)
    # a prior equal to the batch mean changes nothing
    torch.testing.assert_close(
        align_distribution(probs, torch.tensor([0.7, 0.2, 0.1]), valid)[:, :, :, :2],
        probs[:, :, :, :2],
    )


def test_class_pixel_prior_counts_labelled_pixels(tmp_path):
    from PIL import Image
    import numpy as np

    a = np.full((4, 4), 255, dtype=np.uint8)
    a[:2] = 0
    a[2, :2] = 2
    b = np.full((2, 2), 1, dtype=np.uint8)
    files = []
    for i, mask in enumerate((a, b)):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(mask).save(files[-1])
    prior = class_pixel_prior(files, num_classes=3)
    torch.testing.assert_close(prior, torch.tensor([8, 4, 2], dtype=torch.float64) / 14)
    with pytest.raises(ValueError, match="no labelled pixel"):
        empty = str(tmp_path / "empty.png")
        Image.fromarray(np.full((2, 2), 255, dtype=np.uint8)).save(empty)
        class_pixel_prior([empty], num_classes=3)
    with pytest.raises(ValueError, match="got none"):
        class_pixel_prior([], num_classes=3)


def test_cutmix_mixes_images_labels_and_masks_alike():
    images = torch.stack([torch.full((3, 2, 2), 10), torch.full((3, 2, 2), 20)]).to(torch.uint8)
    partners = torch.stack([torch.full((3, 2, 2), 30), torch.full((3, 2, 2), 40)]).to(torch.uint8)
    labels = torch.tensor([[[1, 1], [1, 1]], [[2, 2], [2, 2]]])
    partner_labels = torch.tensor([[[3, 3], [3, 3]], [[4, 4], [4, 4]]])
    ignore = torch.zeros(2, 2, 2, dtype=torch.bool)
    partner_ignore = torch.tensor(
        [[[True, False], [False, False]], [[False, False], [False, True]]]
    )
    masks = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
    mixed = cutmix(images, partners, masks)
    assert mixed[0, :, 0, 0].tolist() == [30, 30, 30] and mixed[0, :, 1, 1].tolist() == [10] * 3
    assert mixed[1, :, 1, 1].tolist() == [40, 40, 40] and mixed[1, :, 0, 1].tolist() == [20] * 3
    assert cutmix(labels, partner_labels, masks).tolist() == [[[3, 1], [1, 1]], [[2, 2], [2, 4]]]
    # the pasted pixels keep the partner's padding flag
    assert cutmix(ignore, partner_ignore, masks).tolist() == partner_ignore.tolist()


def test_class_peak_probability_over_valid_pixels():
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 0] = 0.9
    probs[0, 1] = 0.1
    probs[0, 2, 0, 0], probs[0, 0, 0, 0] = 0.6, 0.3  # class 2 only at the top-left pixel
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    assert class_peak_probability(probs, valid)[0].tolist() == pytest.approx([0.9, 0.1, 0.6])
    valid[0, 0, 0] = False
    assert class_peak_probability(probs, valid)[0].tolist() == pytest.approx([0.9, 0.1, 0.0])
    assert class_peak_probability(probs, torch.zeros_like(valid)).tolist() == [[0.0, 0.0, 0.0]]


def test_sample_cutmix_masks_probability_and_box():
    gen = torch.Generator().manual_seed(0)
    assert not sample_cutmix_masks(4, 32, 32, prob=0.0, generator=gen).any()
    masks = sample_cutmix_masks(8, 32, 32, prob=1.0, generator=gen)
    for m in masks:
        area = m.float().mean().item()
        assert 0.0 < area <= 0.45
        ys, xs = torch.nonzero(m, as_tuple=True)
        # one solid rectangle
        assert m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()


def test_unsup_rampup_rises_from_zero_to_one():
    assert unsup_rampup(5, 0) == 1.0 and unsup_rampup(-3, 0) == 1.0
    assert unsup_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert unsup_rampup(-10, 100) == pytest.approx(math.exp(-5.0))  # before the start
    assert unsup_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert unsup_rampup(100, 100) == 1.0 and unsup_rampup(1000, 100) == 1.0
    values = [unsup_rampup(t, 100) for t in range(0, 101, 10)]
    assert values == sorted(values)


def test_prediction_entropy_of_the_normalised_class_distribution():
    """The unlabelled objective's entropy term: ``S(c, x)`` over the kept rows, normalised over
    the classes, then the mean per-pixel entropy."""
    from hiervl.engine import prediction_entropy

    num_classes = 4
    logits = torch.zeros(1, 2, num_classes + 1)  # every row: uniform over the classes
    masks = torch.full((1, 2, 3, 5), 20.0)  # every row covers every pixel
    keep = torch.tensor([[True, True]])
    outputs = {"pred_logits": logits, "pred_masks": masks, "keep": keep}
    assert float(prediction_entropy(outputs)) == pytest.approx(math.log(num_classes), rel=1e-5)
    # one kept row sure of class 2: a one-hot distribution, no entropy
    logits[0, 0, 2] = 30.0
    keep = torch.tensor([[True, False]])
    outputs = {"pred_logits": logits, "pred_masks": masks, "keep": keep}
    assert float(prediction_entropy(outputs)) == pytest.approx(0.0, abs=1e-5)
