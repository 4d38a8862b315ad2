"""HierVLTrainer on the toy model and data: semi step, resume equality, NaN stop, eval."""

import math
import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from engine_toys import toy_config

from hiervl.engine import HierVLTrainer
from hiervl.utils.checkpoint import load_inference_weights


class _Stop(Exception):
    pass


class _StopAt(HookBase):
    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter + 1 == self.iteration:
            raise _Stop()


def _train(cfg, resume=False, stop_at=None):
    seed_all_rng(cfg.SEED)  # as train_net's default_setup does
    trainer = HierVLTrainer(cfg)
    if stop_at is not None:
        trainer.register_hooks([_StopAt(stop_at)])
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except _Stop:
        pass
    return trainer


def _state(trainer):
    return {
        **trainer.student.state_dict(),
        **{f"t.{k}": v for k, v in trainer.teacher.state_dict().items()},
    }


def test_semi_step_finite_losses(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    trainer = _train(cfg)
    latest = trainer.storage.latest()
    for key in ("loss_ce", "loss_ce_unsup", "semi/pseudo_kept_ratio"):
        assert key in latest and torch.isfinite(torch.tensor(latest[key][0]))
    assert trainer.teacher is not None
    # momentum 0 at the first step: the teacher equals the updated student
    for (name, t), s in zip(
        trainer.teacher.state_dict().items(), trainer.student.state_dict().values()
    ):
        assert torch.allclose(t, s), name
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    assert not [f for f in os.listdir(tmp_path / "out") if ".tmp" in f]


def test_unsup_weight_ramps_up_after_the_start(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=4)
    cfg.SEMI.UNSUP_START_ITER = 1
    cfg.SEMI.UNSUP_RAMPUP_ITERS = 2
    cfg.SEMI.UNSUP_WEIGHT = 0.5
    trainer = _train(cfg)
    history = trainer.storage.history("semi/unsup_weight").values()
    expected = [0.5 * math.exp(-5.0), 0.5 * math.exp(-1.25), 0.5]  # steps 1, 2, 3
    assert [v for v, _ in history] == pytest.approx(expected)


def test_semi_step_with_distribution_alignment(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SEMI.DISTRIBUTION_ALIGNMENT = True
    prior = HierVLTrainer.class_prior(cfg)
    assert prior.shape == (3,) and abs(float(prior.sum()) - 1.0) < 1e-6
    trainer = _train(cfg)
    torch.testing.assert_close(trainer._trainer.class_prior, prior)
    latest = trainer.storage.latest()
    for key in ("loss_ce_unsup", "semi/pseudo_kept_ratio"):
        assert key in latest and torch.isfinite(torch.tensor(latest[key][0]))


def test_teacher_flip_averages_the_mirrored_prediction(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SEMI.TEACHER_FLIP = True
    trainer = _train(cfg)
    step = trainer._trainer
    weak = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    labels, conf = step.teacher_predict(weak)
    images = step.normalize(weak)
    teacher = step.teacher
    probs = teacher.semantic_probs(images)
    mirrored = teacher.semantic_probs(images.flip(-1)).flip(-1)
    assert not torch.allclose(probs, mirrored)  # the toy conv is not mirror-symmetric
    expected_conf, expected_labels = (0.5 * (probs + mirrored)).max(1)
    torch.testing.assert_close(conf, expected_conf)
    assert torch.equal(labels, expected_labels)


def test_feature_dropout_reaches_the_strong_views_only(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SEMI.FEATURE_DROPOUT = 0.5
    trainer = _train(cfg)
    step = trainer._trainer
    seen = []
    original = step.student.losses

    def spy(images, sem_seg, **kwargs):
        seen.append(kwargs)
        return original(images, sem_seg, **kwargs)

    step.student.losses = spy
    step.compute_losses(step.labeled_loader.next(), step.unlabeled_loader.next())
    labeled, unlabeled = seen
    assert labeled["labeled"] and labeled.get("feature_dropout", 0.0) == 0.0
    assert not unlabeled["labeled"] and unlabeled["feature_dropout"] == 0.5
    cfg.SEMI.FEATURE_DROPOUT = 1.0
    with pytest.raises(ValueError, match="FEATURE_DROPOUT"):
        HierVLTrainer(cfg)


class _ContentTeacher:
    """Teacher probabilities by image content: dark images are confidently class 0 (class 1 at
    0.03), bright ones unsure between classes 1 (0.7) and 2 (0.3)."""

    def __call__(self, weak, valid=None):
        bright = weak.float().mean((1, 2, 3)) > 128
        probs = torch.zeros(weak.shape[0], 3, *weak.shape[-2:])
        probs[:, 0] = torch.where(bright, 0.0, 0.97)[:, None, None]
        probs[:, 1] = torch.where(bright, 0.7, 0.03)[:, None, None]
        probs[:, 2] = torch.where(bright, 0.3, 0.0)[:, None, None]
        return probs


def _views(value, size=16):
    image = torch.full((3, size, size), value, dtype=torch.uint8)
    return {
        "image": image,
        "image_strong": image + 1,
        "ignore_mask": torch.zeros(size, size, dtype=torch.bool),
    }


def test_cutmix_with_a_mix_batch_at_one_unlabelled_image_per_process(tmp_path):
    """CutMix takes its boxes from a second draw of the unlabelled stream (UniMatch's mix
    batch), not from the next image of the same batch: it works with one unlabelled image per
    process (e.g. 8 GPUs x 1), where it used to be switched off with a warning."""
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=2)
    cfg.SEMI.IMS_PER_BATCH_UNLABELED = 1
    cfg.SEMI.CONF_THRESHOLD = 0.9
    trainer = _train(cfg)
    step = trainer._trainer
    ratios = [v for v, _ in trainer.storage.history("semi/cutmix_ratio").values()]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert step.unlabeled_loader.batches == step.mix_loader.batches == 2
    assert step.mix_loader.dataset.seed != step.unlabeled_loader.dataset.seed

    # the mixed view, its pseudo-label and its padding come from the partner inside the box
    step.teacher_probs = _ContentTeacher()
    batch = step.prepare_unlabeled([_views(0)], [_views(200)])
    box = batch.cutmix[0]
    assert box.any() and not box.all()
    strong = batch.strong_mixed[0]
    assert (strong[:, box] == 201).all() and (strong[:, ~box] == 1).all()
    targets = batch.targets[0]
    assert (targets[~box] == 0).all()  # confident own pixels
    assert (targets[box] == 255).all()  # the partner's unsure pixels (0.7 < 0.9)
    assert batch.labels[0].eq(0).all()  # un-mixed labels: the image's own
    assert batch.conf_threshold == 0.9 and batch.class_thresholds is None
    # no partner, no box
    batch = step.prepare_unlabeled([_views(0)])
    assert not batch.cutmix.any() and batch.strong_mixed.eq(1).all()


def _content_step(tmp_path, cutmix_prob, **semi):
    """A trained toy step with threshold 0.9, the ``SEMI`` keys ``semi`` and the content
    teacher; its CutMix probability set to ``cutmix_prob``."""
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SEMI.CONF_THRESHOLD = 0.9
    for key, value in semi.items():
        setattr(cfg.SEMI, key, value)
    step = _train(cfg)._trainer
    step.teacher_probs = _ContentTeacher()
    step.cutmix_prob = cutmix_prob
    return step


def _spy_on_losses(step):
    """The keyword arguments of the student's ``losses`` calls (the last call's win)."""
    seen = {}
    original = step.student.losses

    def spy(images, sem_seg, **kwargs):
        seen.update(kwargs)
        return original(images, sem_seg, **kwargs)

    step.student.losses = spy
    return seen


def test_absent_classes_of_the_mixed_pseudo_label(tmp_path):
    """A class is ruled out (its rows learn "no object") only where the teacher gives it less
    than 1 - SEMI.CONF_THRESHOLD on every pixel of the mixed image; the pasted box counts."""
    step = _content_step(tmp_path, cutmix_prob=0.0)
    batch = step.prepare_unlabeled([_views(0), _views(0)], [_views(200), _views(200)])
    # every pixel is class 0 at 0.97: classes 1 (0.03 < 0.1) and 2 (0) are known absent
    assert batch.absent.tolist() == [[False, True, True]] * 2
    # the unlabelled objective hands them, and the confidence weights, to the student
    seen = _spy_on_losses(step)
    step.model(step.labeled_loader.next(), batch)
    assert seen["absent"] is batch.absent and seen["weights"] is batch.weights
    # a box from the unsure partner: classes 1 and 2 may be in it, so they are unknown
    step.cutmix_prob = 1.0
    batch = step.prepare_unlabeled([_views(0), _views(0)], [_views(200), _views(200)])
    assert batch.cutmix.flatten(1).any(1).all()
    assert batch.absent.tolist() == [[False, False, False]] * 2


def test_no_class_is_ruled_out_when_the_rule_is_off(tmp_path):
    """SEMI.RULE_OUT_ABSENT_CLASSES False: where the rule would rule classes 1 and 2 out, no
    class is known absent (their rows take no part in the class loss)."""
    step = _content_step(tmp_path, cutmix_prob=0.0, RULE_OUT_ABSENT_CLASSES=False)
    batch = step.prepare_unlabeled([_views(0), _views(0)], [_views(200), _views(200)])
    assert batch.absent.tolist() == [[False, False, False]] * 2
    # the confident pixels are kept as they are with the rule on
    assert (batch.targets == 0).all()


def test_classes_are_ruled_out_pixel_by_pixel(tmp_path):
    """SEMI.RULE_OUT_CLASSES_PER_PIXEL: the pixels where the (mixed) teacher gives a class less
    than 1 - SEMI.CONF_THRESHOLD rule that class out there, also inside a pasted box whose
    pixels are not kept, and the student's losses receive them; off: no ruling."""
    step = _content_step(tmp_path, cutmix_prob=1.0, RULE_OUT_CLASSES_PER_PIXEL=True)
    batch = step.prepare_unlabeled([_views(0)], [_views(200)])
    box = batch.cutmix[0]
    assert box.any() and not box.all()
    ruled = batch.ruled_out[0]
    assert ruled.shape == (3, 16, 16)
    # own pixels: class 0 at 0.97 -> 1 (0.03) and 2 (0) ruled out; in the unsure box (1 at
    # 0.7, 2 at 0.3, not kept) class 0 (0) is ruled out, 1 and 2 are not
    assert ruled[:, ~box].tolist() == [
        [False] * int((~box).sum()),
        *[[True] * int((~box).sum())] * 2,
    ]
    assert ruled[0, box].all() and not ruled[1:, box].any()
    assert (batch.targets[0][box] == 255).all()
    seen = _spy_on_losses(step)
    losses = step.model(step.labeled_loader.next(), batch)
    assert seen["ruled_out"] is batch.ruled_out
    assert all(torch.isfinite(v) for v in losses.values())
    # off (the default): none
    step.rule_out_per_pixel = False
    assert step.prepare_unlabeled([_views(0)], [_views(200)]).ruled_out is None
    # the weight mode has a target on every pixel already
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SEMI.RULE_OUT_CLASSES_PER_PIXEL = True
    cfg.SEMI.PSEUDO_LABEL_MODE = "weight"
    with pytest.raises(ValueError, match="RULE_OUT_CLASSES_PER_PIXEL"):
        HierVLTrainer(cfg)


def test_unlabeled_batch_carries_the_class_balanced_thresholds(tmp_path):
    """The thresholds that made the targets travel with them (HVLFormer's step reads the
    record whole instead of rebuilding it field by field)."""
    step = _content_step(tmp_path, cutmix_prob=0.0, CLASS_BALANCED_RATIO=0.5)
    batch = step.prepare_unlabeled([_views(200), _views(0)], [_views(0), _views(0)])
    # class 1 (the bright image's label at 0.7) keeps its pixels at a threshold of 0.7
    assert batch.class_thresholds.tolist() == pytest.approx([0.9, 0.7, 0.9])
    assert (batch.targets[0] == 1).all() and (batch.targets[1] == 0).all()


def test_supervised_only(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SEMI.ENABLED = False
    trainer = _train(cfg)
    assert trainer.teacher is None and "loss_ce_unsup" not in trainer.storage.latest()


def test_resume_matches_uninterrupted(tmp_path):
    n = 3
    data = str(tmp_path / "data")
    full = _train(toy_config(data, str(tmp_path / "full"), MAX_ITER=2 * n, CHECKPOINT_PERIOD=n))
    cfg = toy_config(data, str(tmp_path / "killed"), MAX_ITER=2 * n, CHECKPOINT_PERIOD=n)
    _train(cfg, stop_at=n + 1)  # killed after the checkpoint of step n, mid-way through n + 1
    resumed = _train(cfg, resume=True)
    assert resumed.start_iter == n
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    # and the runs really trained: the weights moved away from the step-n checkpoint
    mid = torch.load(tmp_path / "killed" / f"model_{n - 1:07d}.pth", weights_only=False)
    assert not torch.allclose(mid["model"]["head.weight"], a["head.weight"])
    # CutMix's mix stream is a third stream: the checkpoint holds its position, and the
    # resumed run drew the same mix batches as the uninterrupted one
    assert mid["data_unlabeled_mix"] == {"seed": cfg.SEED + 2, "batches": n}
    for name in ("labeled_loader", "unlabeled_loader", "mix_loader"):
        loaders = getattr(full._trainer, name), getattr(resumed._trainer, name)
        assert (
            loaders[0].state_dict()
            == loaders[1].state_dict()
            == {
                "seed": loaders[0].dataset.seed,
                "batches": 2 * n,
            }
        ), name


def test_nan_loss_stops_with_name(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=2)
    trainer = HierVLTrainer(cfg)
    with torch.no_grad():
        trainer.student.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss_ce"):
        trainer.train()


def test_eval_only_loads_teacher(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=2)
    trainer = _train(cfg)
    model = HierVLTrainer.build_model(cfg)
    which = load_inference_weights(model, str(tmp_path / "out" / "model_final.pth"))
    assert which == "teacher"
    assert torch.equal(model.head.weight, trainer.teacher.head.weight)
    results = HierVLTrainer.test_model(cfg, model, "teacher")
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0


def test_bf16_autocast_step(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    trainer = _train(cfg)
    assert not trainer._trainer.grad_scaler.is_enabled()  # bf16 needs no loss scaling
    assert trainer._trainer.precision == torch.bfloat16
    latest = trainer.storage.latest()
    assert torch.isfinite(torch.tensor(latest["loss_ce_unsup"][0]))


def test_fp16_autocast_step_scales_the_loss_and_saves_the_scaler(tmp_path):
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=2)
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "float16"
    trainer = _train(cfg)
    assert trainer._trainer.grad_scaler.is_enabled()
    assert torch.isfinite(torch.tensor(trainer.storage.latest()["loss_ce_unsup"][0]))
    saved = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert saved["trainer"]["_trainer"]["grad_scaler"]["scale"] > 1


def test_step_resumes_a_trainer_state_without_a_grad_scaler(tmp_path):
    """Runs without fp16 save an empty scaler state, and checkpoints written before the step
    was detectron2's AMPTrainer have none (AMPTrainer's own load needs it): both resume."""
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=1)
    step = _train(cfg)._trainer
    state = step.state_dict()
    assert state["grad_scaler"] == {}
    del state["grad_scaler"]
    step.load_state_dict(state)
    assert step.iter == state["iteration"]


def test_auto_scale_workers_scales_the_unlabelled_stream_too(tmp_path):
    """SOLVER.REFERENCE_WORLD_SIZE keeps the per-process batch of both streams: detectron2
    scales the labelled batch, the learning rate and the iterations; the unlabelled batch and
    the unlabelled losses' start and ramp-up follow the same factor."""
    cfg = toy_config(str(tmp_path / "data"), str(tmp_path / "out"), MAX_ITER=8)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 2
    cfg.SEMI.UNSUP_START_ITER, cfg.SEMI.UNSUP_RAMPUP_ITERS = 4, 2
    scaled = HierVLTrainer.auto_scale_workers(cfg, 4)
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SEMI.IMS_PER_BATCH_UNLABELED) == (4, 4)
    assert (scaled.SOLVER.MAX_ITER, scaled.SEMI.UNSUP_START_ITER) == (4, 2)
    assert scaled.SEMI.UNSUP_RAMPUP_ITERS == 1
    assert scaled.SOLVER.BASE_LR == pytest.approx(2 * cfg.SOLVER.BASE_LR)
    # the trainer applies it: one process of a config written for two
    trainer = HierVLTrainer(cfg)
    step = trainer._trainer
    assert step.labeled_loader.global_batch == step.unlabeled_loader.global_batch == 1
    assert step.mix_loader.global_batch == 1 and step.unsup_start_iter == 8
    cfg.SEMI.IMS_PER_BATCH_UNLABELED = 3
    with pytest.raises(ValueError, match="IMS_PER_BATCH_UNLABELED"):
        HierVLTrainer.auto_scale_workers(cfg, 4)
