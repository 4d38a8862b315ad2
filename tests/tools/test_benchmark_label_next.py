"""tools/benchmark_label_next.py: the universe, the draws, the report, and a tiny full run."""

import importlib.util
import os
import uuid
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from hiervl.data.datasets.demo import DEMO_CLASSES, DEMO_COLORS
from hiervl.data.datasets.semseg import register_semseg_split
from hiervl.utils.testing import tiny_config

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location(
        "benchmark_label_next", REPO / "tools" / "benchmark_label_next.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load()


def test_universe_of_the_demo_holds_every_training_image_with_its_mask():
    # The demo's unlabelled split has no masks in its dicts; its split file's lines have them.
    records = tool.universe_records(["hiervl_demo_train_labeled", "hiervl_demo_train_unlabeled"])
    assert len(records) == 200 == len({r["file_name"] for r in records})
    assert all(os.path.isfile(r["sem_seg_file_name"]) for r in records)


def test_draw_is_seeded_and_splits_the_universe():
    universe = [{"file_name": f"{i}.png", "sem_seg_file_name": f"{i}_m.png"} for i in range(20)]
    labeled, pool = tool.draw(universe, 5, seed=3)
    assert len(labeled) == 5 and len(pool) == 15
    assert {r["file_name"] for r in labeled + pool} == {r["file_name"] for r in universe}
    assert tool.draw(universe, 5, seed=3) == (labeled, pool)
    assert tool.draw(universe, 5, seed=4)[0] != labeled
    with pytest.raises(ValueError, match="labeled"):
        tool.draw(universe, 20, seed=0)


def test_summary_lists_seeds_and_counts_gains():
    lines = tool.summary(
        {
            0: {"initial": 40.0, "ranked": 50.0, "random": 48.0},
            1: {"initial": 42.0, "ranked": 51.0, "random": 52.0},
        }
    )
    assert lines[0].split() == "seed initial n n + k ranked n + k random".split()
    assert lines[1].split() == ["0", "40.00", "50.00", "48.00"]
    assert lines[3].split()[:4] == ["mean", "41.00", "±", "1.41"]
    assert lines[4] == "ranked - random: 0.50 ± 2.12 mIoU; ahead in 1 of 2 seeds"


def test_summary_counts_a_printed_tie_as_not_ahead():
    """0.0729117 vs 0.0729116 prints as 0.07 vs 0.07: not a seed where the ranking is ahead."""
    lines = tool.summary({0: {"initial": 0.0729116, "ranked": 0.0729117, "random": 0.0729116}})
    assert lines[-1] == "ranked - random: 0.00 mIoU; ahead in 0 of 1 seeds"


def _register(folder, name, records):
    split = folder / f"{name}.txt"
    split.write_text("".join(f"{r['file_name']} {r['sem_seg_file_name']}\n" for r in records))
    register_semseg_split(
        name,
        root="/",
        split_file=split,
        stuff_classes=list(DEMO_CLASSES),
        stuff_colors=[tuple(c) for c in DEMO_COLORS],
    )


def test_tiny_run_writes_the_report_and_the_picks(tmp_path, monkeypatch):
    demo = tool.universe_records(["hiervl_demo_train_labeled"])
    tag = uuid.uuid4().hex[:6]
    _register(tmp_path, f"ln_universe_{tag}", demo[:8])
    _register(tmp_path, f"ln_val_{tag}", DatasetCatalog.get("hiervl_demo_val")[:3])
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config().dump())
    out = tmp_path / "bench"
    report = tool.main(
        ["--config-file", str(config), "--universe", f"ln_universe_{tag}", "--val"]
        + [f"ln_val_{tag}", "--labeled", "3", "--add", "2", "--iters", "2", "--seeds", "5"]
        + ["--output", str(out), "SOLVER.IMS_PER_BATCH", "2"]
    )
    lines = report.splitlines()
    assert lines[0].startswith(f"universe: ln_universe_{tag} (8 images), val: ln_val_{tag}")
    row = lines[lines.index("val mIoU") + 2].split()
    assert row[0] == "5" and len(row) == 4 and all(0 <= float(v) <= 100 for v in row[1:])
    assert (out / "benchmark.txt").read_text().strip() == report
    labeled, pool = tool.draw(demo[:8], 3, 5)
    pool_files = {r["file_name"] for r in pool}
    for variant in ("ranked", "random"):
        picked = (out / "seed5" / f"picked_{variant}.txt").read_text().split()
        assert len(picked) == 2 and set(picked) <= pool_files
        lines = (out / "seed5" / variant / "labeled.txt").read_text().splitlines()
        assert len(lines) == 5
        assert len((out / "seed5" / variant / "unlabeled.txt").read_text().split()) == 3
    assert MetadataCatalog.get("label_next_bench_s5_ranked_labeled").stuff_classes == DEMO_CLASSES

    # the same invocation again reads the finished seed back instead of training it
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    args = (
        ["--config-file", str(config), "--universe", f"ln_universe_{tag}", "--val"]
        + [f"ln_val_{tag}", "--labeled", "3", "--add", "2", "--iters", "2", "--seeds", "5"]
        + ["--output", str(out), "SOLVER.IMS_PER_BATCH", "2"]
    )
    monkeypatch.setattr(tool, "train_and_eval", no_training)
    assert tool.main(args) == report
    # other settings (here the steps) are trained again
    more_steps = args.copy()
    more_steps[args.index("--iters") + 1] = "3"
    with pytest.raises(AssertionError, match="trained again"):
        tool.main(more_steps)
