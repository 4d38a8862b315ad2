"""The warning on a learning-rate warm-up that is not well below SOLVER.MAX_ITER (issue 16: a
40-step run of the folder template sat in its 1500-step warm-up without a word)."""

import logging

import torch

from hiervl.config import load_config
from hiervl.engine.optim import build_hiervl_lr_scheduler, warn_long_warmup


def test_warns_when_warmup_is_not_well_below_max_iter(caplog):
    with caplog.at_level(logging.WARNING, logger="hiervl.engine.optim"):
        assert warn_long_warmup(max_iter=40, warmup_iters=1500, warmup_factor=1e-6)
        assert "SOLVER.WARMUP_ITERS 1500 is not well below SOLVER.MAX_ITER 40" in caplog.text
        assert "stays below 2.7% of BASE_LR" in caplog.text  # 40 / 1500 of the way up
        caplog.clear()
        assert warn_long_warmup(max_iter=400, warmup_iters=200, warmup_factor=1e-6)
        assert "50% of the run is warm-up" in caplog.text
        caplog.clear()
        # the paper's 1500 of 20k, the demo's 20 of 600, no warm-up: silent
        assert not warn_long_warmup(max_iter=20000, warmup_iters=1500, warmup_factor=1e-6)
        assert not warn_long_warmup(max_iter=600, warmup_iters=20, warmup_factor=1e-6)
        assert not warn_long_warmup(max_iter=600, warmup_iters=0, warmup_factor=1e-6)
        assert caplog.text == ""


def test_scheduler_builder_warns_for_the_folder_template_on_a_short_run(caplog):
    no_folder = ["DATASETS.CUSTOM.ROOT", ""]  # the template's placeholder folder is not read
    cfg = load_config("configs/custom/hiervl_folder.yaml", no_folder + ["SOLVER.MAX_ITER", "40"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with caplog.at_level(logging.WARNING, logger="hiervl.engine.optim"):
        build_hiervl_lr_scheduler(cfg, optimizer)
    assert "SOLVER.WARMUP_ITERS 1500 is not well below SOLVER.MAX_ITER 40" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hiervl.engine.optim"):
        build_hiervl_lr_scheduler(
            load_config("configs/custom/hiervl_folder_cpu.yaml", no_folder), optimizer
        )
    assert caplog.text == ""
