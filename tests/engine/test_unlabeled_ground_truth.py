"""SEMI.UNLABELED_GROUND_TRUTH: the diagnosis of the unlabelled signal (issue 16, item 3).

On data whose unlabelled images have masks (a benchmark's rest of a labelled pool), "measure"
logs how right the kept pseudo-labels are, per class, and "oracle" trains on the ground truth in
their place with everything else unchanged: it tells a broken unlabelled pipeline apart from
poor pseudo-labels.
"""

import numpy as np
import pytest
import torch
from detectron2.utils.env import seed_all_rng
from engine_toys import toy_config
from PIL import Image

from hiervl.data.dataset_mappers.semantic_unlabeled import SemanticUnlabeledMapper
from hiervl.engine import HierVLTrainer
from hiervl.engine.semi_step import pseudo_label_accuracy


def test_pseudo_label_accuracy_counts_kept_pixels_with_a_ground_truth():
    targets = torch.tensor([[[0, 0, 1, 255], [1, 1, 2, 2]]])
    truth = torch.tensor([[[0, 1, 1, 1], [1, 255, 2, 0]]])
    stats = pseudo_label_accuracy(targets, None, truth)
    # kept with a ground truth: (0,0) right, (0,1) wrong, (1,1) right, (1,0) right, (2,2)
    # right, (2,0) wrong -> 4 of 6; the ignored truth pixel and the unkept one do not count
    assert stats["semi/pseudo_precision"] == pytest.approx(4 / 6)
    assert stats["semi/pseudo_precision/0"] == pytest.approx(1 / 2)
    assert stats["semi/pseudo_precision/1"] == pytest.approx(1.0)
    assert stats["semi/pseudo_precision/2"] == pytest.approx(1 / 2)
    assert stats["semi/pseudo_coverage"] == pytest.approx(6 / 7)
    # "weight" mode: a pixel of weight 0 is not kept
    weights = torch.ones(1, 2, 4)
    weights[0, 0, 1] = 0
    assert pseudo_label_accuracy(targets, weights, truth)["semi/pseudo_precision"] == pytest.approx(
        4 / 5
    )
    assert pseudo_label_accuracy(targets, None, torch.full_like(truth, 255)) == {}
    # absent rulings (4 classes): 0 and 3 ruled out, class 0 has pixels -> half of them wrong
    absent = torch.tensor([[True, False, False, True]])
    stats = pseudo_label_accuracy(targets, None, truth, absent)
    assert stats["semi/absent_wrong"] == pytest.approx(1 / 2)
    assert "semi/absent_wrong" not in pseudo_label_accuracy(targets, None, truth, absent & False)
    # per-pixel rulings (3 classes) count at the pixels without a pseudo-label only: (0, 3)
    # (truth 1) and (1, 1) (truth 255: no ground truth, not counted)
    ruled = torch.zeros(1, 3, 2, 4, dtype=torch.bool)
    ruled[0, :, 0, 3] = torch.tensor([True, True, False])  # 1 is wrong: the truth is 1
    ruled[0, 0, 0, 0] = True  # a kept pixel: not counted
    stats = pseudo_label_accuracy(targets, None, truth, None, ruled)
    assert stats["semi/ruled_out_wrong"] == pytest.approx(1 / 2)
    assert "semi/ruled_out_wrong" not in pseudo_label_accuracy(
        targets, None, truth, None, ruled & False
    )


def _image_and_mask(tmp_path, with_mask=True):
    """A 40x60 image whose left 20 columns are red (class 1) and the rest blue (class 2)."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :20, 0] = 255
    image[:, 20:, 2] = 255
    mask = np.full((40, 60), 2, np.uint8)
    mask[:, :20] = 1
    mask[:3] = 255  # an ignored band
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    record = {"file_name": str(tmp_path / "a.png"), "image_id": "a"}
    if with_mask:
        record["sem_seg_file_name"] = str(tmp_path / "a_mask.png")
    return record


def _mapper(keep):
    return SemanticUnlabeledMapper(
        image_format="RGB",
        ratio_range=(0.5, 1.5),
        crop_size=(32, 32),
        color_jitter_prob=0.8,
        color_jitter_strength=(0.4, 0.4, 0.4, 0.1),
        grayscale_prob=0.2,
        blur_prob=0.5,
        keep_ground_truth=keep,
    )


def test_mapper_keeps_the_mask_aligned_with_the_weak_view_and_draws_the_same_views(tmp_path):
    record = _image_and_mask(tmp_path)
    for seed in range(6):
        plain = _mapper(False)(record, np.random.default_rng(seed))
        kept = _mapper(True)(record, np.random.default_rng(seed))
        # same random draws: the diagnosis does not change what the student sees
        assert torch.equal(plain["image"], kept["image"])
        assert torch.equal(plain["image_strong"], kept["image_strong"])
        assert "sem_seg_gt" not in plain and "sem_seg_file_name" not in kept
        gt, weak = kept["sem_seg_gt"], kept["image"].long()
        assert gt.shape == weak.shape[1:] and gt.dtype == torch.long
        assert (gt[kept["ignore_mask"]] == 255).all()
        red, blue = weak[0] > 200, weak[2] > 200
        assert (gt[red & (gt != 255)] == 1).all() and (gt[blue & (gt != 255)] == 2).all()


def test_mapper_without_a_mask_names_the_image(tmp_path):
    record = _image_and_mask(tmp_path, with_mask=False)
    with pytest.raises(ValueError, match=r"UNLABELED_GROUND_TRUTH.*a\.png"):
        _mapper(True)(record, np.random.default_rng(0))


def _views(value, truth, size=16):
    image = torch.full((3, size, size), value, dtype=torch.uint8)
    return {
        "image": image,
        "image_strong": image + 1,
        "ignore_mask": torch.zeros(size, size, dtype=torch.bool),
        "sem_seg_gt": torch.full((size, size), truth, dtype=torch.long),
    }


def _step(tmp_path, mode):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SEMI.CONF_THRESHOLD = 0.9
    cfg.SEMI.UNLABELED_GROUND_TRUTH = mode
    seed_all_rng(0)
    trainer = HierVLTrainer(cfg)
    return trainer, trainer._trainer


def test_oracle_trains_on_the_ground_truth_without_asking_the_teacher(tmp_path):
    _, step = _step(tmp_path, "oracle")

    def no_teacher(*args, **kwargs):
        raise AssertionError("the oracle must not ask the teacher")

    step.teacher_probs = no_teacher
    step.cutmix_prob = 1.0
    own, partner = _views(0, 1), _views(200, 2)
    own["sem_seg_gt"][:, :4] = 255  # an ignored strip stays out of the targets
    batch = step.prepare_unlabeled([own], [partner])
    box = batch.cutmix[0]
    assert box.any()
    targets = batch.targets[0]
    assert (targets[box] == 2).all()
    own_pixels = ~box
    assert (targets[own_pixels & (own["sem_seg_gt"] == 1)] == 1).all()
    assert (targets[own_pixels & (own["sem_seg_gt"] == 255)] == 255).all()
    # classes absent from the ground truth of the mixed crop are known absent
    assert batch.absent[0].tolist() == [True, False, False]
    assert torch.equal(batch.ground_truth[0][box], torch.full_like(targets[box], 2))


def test_measure_logs_precision_per_class_during_training(tmp_path):
    trainer, step = _step(tmp_path, "measure")

    class Teacher:  # class 0 everywhere, confidently
        def __call__(self, weak, valid=None):
            probs = torch.zeros(weak.shape[0], 3, *weak.shape[-2:])
            probs[:, 0] = 0.95
            probs[:, 1] = 0.05
            return probs

    step.teacher_probs = Teacher()
    step.cutmix_prob = 0.0
    batch = step.prepare_unlabeled([_views(0, 0), _views(0, 1)], [_views(0, 0), _views(0, 0)])
    stats = step.pseudo_label_stats(batch)
    assert stats["semi/pseudo_precision"] == pytest.approx(0.5)
    assert stats["semi/pseudo_precision/0"] == pytest.approx(0.5)
    assert stats["semi/pseudo_coverage"] == pytest.approx(1.0)
    # the teacher's labels are trained on, not the truth
    assert (batch.targets == 0).all()


def test_oracle_kept_relabels_the_kept_pixels_with_the_ground_truth(tmp_path):
    """ "oracle_kept": the teacher decides which pixels are kept, the ground truth what they
    are; its unsure pixels stay out and void stays void."""
    _, step = _step(tmp_path, "oracle_kept")

    class Teacher:  # class 0 confidently on the left half, unsure on the right
        def __call__(self, weak, valid=None):
            probs = torch.zeros(weak.shape[0], 3, *weak.shape[-2:])
            probs[..., :8] = torch.tensor([0.95, 0.05, 0.0])[:, None, None]
            probs[..., 8:] = torch.tensor([0.5, 0.3, 0.2])[:, None, None]
            return probs

    step.teacher_probs = Teacher()
    step.cutmix_prob = 0.0
    own = _views(0, 1)
    own["sem_seg_gt"][:2] = 255
    batch = step.prepare_unlabeled([own], [_views(0, 0)])
    targets = batch.targets[0]
    assert (targets[2:, :8] == 1).all()  # kept by the teacher (class 0), labelled by the truth
    assert (targets[:2] == 255).all() and (targets[:, 8:] == 255).all()
    # class 1 has target pixels, so it is not ruled absent; the teacher's labels stay recorded
    assert not batch.absent[0, 1] and (batch.labels[0][:, :8] == 0).all()
    assert step.pseudo_label_stats(batch)["semi/pseudo_precision"] == pytest.approx(1.0)


def test_an_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="UNLABELED_GROUND_TRUTH must be one of"):
        _step(tmp_path, "oracel")
