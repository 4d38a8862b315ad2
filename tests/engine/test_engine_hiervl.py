"""One semi-supervised step of the real HierVL (tiny CLIP, demo data) through the trainer."""

import math

import pytest
from detectron2.utils.env import seed_all_rng

from hiervl.engine import HierVLTrainer

from hiervl import hiervl_model  # noqa: F401  (registers the META_ARCH)


def test_hiervl_semi_step(tmp_path):
    from hiervl.utils.testing import tiny_config

    cfg = tiny_config()
    cfg.SEMI.CONF_THRESHOLD = 0.0  # keep every pseudo-label of the random model
    cfg.SOLVER.MAX_ITER = 2
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(tmp_path)
    seed_all_rng(0)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    latest = trainer.storage.latest()
    unsup = [k for k in latest if k.endswith("_unsup")]
    assert unsup and "loss_ce" in latest
    # entropy minimisation is an unlabelled term of the engine's objective, not of the model
    assert "loss_entropy_unsup" in latest and "loss_entropy" not in latest
    assert all(math.isfinite(v[0]) for k, v in latest.items() if k.startswith("loss"))
    assert latest["semi/pseudo_kept_ratio"][0] > 0.5
    names = {g["name"]: g for g in trainer.optimizer.param_groups}
    base = cfg.SOLVER.BASE_LR
    enc = next(g for n, g in names.items() if n.startswith("image_encoder."))
    head = next(g for n, g in names.items() if n.startswith("decoder."))
    assert math.isclose(enc["initial_lr"], base * cfg.SOLVER.BACKBONE_MULTIPLIER)
    assert math.isclose(head["initial_lr"], base * cfg.SOLVER.HEAD_MULTIPLIER)
    assert names["text_encoder.prompts"]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY_EMBED
