"""tools/benchmark_train.py and tools/benchmark_eval.py: CPU smoke runs print every figure;
the FLOP counter and MFU helpers give known counts."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

from benchmark_common import count_flops, mfu, peak_tflops_for  # noqa: E402  (tools/)

NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?"


def _run_tool(script, *args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _tables(stdout, title):
    """Every ``title`` table of the output as a ``{name: value}`` dict."""
    tables = []
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line == title:
            rows = {}
            for row in lines[i + 1 :]:
                m = re.match(r"^  ([^:]+(?:\([^)]*\))?):\s+(.*)$", row)
                if not m:
                    break
                rows[m.group(1)] = m.group(2)
            tables.append(rows)
    return tables


def test_benchmark_train_smoke_both_variants():
    out = _run_tool("benchmark_train.py", "--smoke", "--variant", "all", "--peak-tflops", "1")
    tables = _tables(out, "HierVL training-step benchmark")
    assert [t["variant"] for t in tables] == ["hiervl", "hvlformer"], out[-2000:]
    for t in tables:
        assert t["device"].startswith("cpu")
        assert t["dtype"].startswith("bf16 autocast")
        assert t["msdeformattn"].startswith("reference implementation")
        assert t["batch"] == "2 labelled + 2 unlabelled, 64x64"
        assert t["peak memory"].startswith("n/a")
        step_ms = float(re.match(NUMBER, t["step time (median)"]).group(0))
        ips = float(t["images/s"])
        assert step_ms > 0 and ips == pytest.approx(4 / (step_ms / 1e3), rel=0.01)
        tflop = float(re.match(NUMBER, t["FLOPs/step"]).group(0))
        achieved = float(re.match(NUMBER, t["achieved"]).group(0))
        assert tflop > 0 and achieved == pytest.approx(tflop / (step_ms / 1e3), rel=0.02)
        # --peak-tflops 1: MFU (%) = 100 * achieved TFLOP/s
        util = float(re.match(NUMBER, t["MFU"]).group(0))
        assert util == pytest.approx(100 * achieved, rel=0.02)
    # HVLFormer adds the original and weak views: more work per step
    assert float(re.match(NUMBER, tables[1]["FLOPs/step"]).group(0)) > float(
        re.match(NUMBER, tables[0]["FLOPs/step"]).group(0)
    )


def test_benchmark_eval_smoke():
    out = _run_tool("benchmark_eval.py", "--smoke")
    (t,) = _tables(out, "HierVL sliding-window evaluation benchmark")
    assert t["device"].startswith("cpu") and t["dtype"] == "fp32"
    assert t["msdeformattn"].startswith("reference implementation")
    # 75x100 with 64 px windows at stride 48: 2 rows x 2 columns
    assert "75x100: 4" in t["sliding window"]
    ips = float(t["images/s"])
    projected = float(re.match(NUMBER, t["1449 images"]).group(0))
    assert ips > 0 and projected == pytest.approx(1449 / ips, rel=0.01)
    assert float(re.match(NUMBER, t["per image (median)"]).group(0)) > 0
    assert t["peak memory"].startswith("n/a")


def test_count_flops_linear_forward_and_backward():
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    _, fwd, per_op = count_flops(lambda: lin(x))
    assert fwd == 2 * 8 * 64 * 32  # one multiply-add per (row, in, out)
    assert sum(per_op.values()) == fwd
    # backward: grad of the input and of the weight, one matmul each
    _, both, _ = count_flops(lambda: lin(x).sum().backward())
    assert both == 3 * fwd
    x_const = torch.randn(8, 64)
    _, weight_only, _ = count_flops(lambda: lin(x_const).sum().backward())
    assert weight_only == 2 * fwd


def test_count_flops_cpu_attention():
    b, h, s, d = 2, 4, 16, 8
    q = torch.randn(b, h, s, d)
    _, flops, _ = count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * b * h * s * s * d)  # Q K^T and P V


def test_peak_table_and_mfu():
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_for("NVIDIA H200") == 989.0
    assert peak_tflops_for("some CPU") is None
    assert mfu(989e12 * 0.5, 1.0, 989.0) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, None) is None


def _load_benchmark_semi():
    spec = importlib.util.spec_from_file_location(
        "benchmark_semi", os.path.join(REPO, "tools", "benchmark_semi.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_benchmark_semi_summary_lists_seeds_and_counts_gains():
    tool = _load_benchmark_semi()
    lines = tool.summary(
        {
            0: {"supervised": 50.0, "teacher": 53.0, "student": 52.0},
            1: {"supervised": 60.0, "teacher": 59.0, "student": 61.0},
        }
    )
    assert lines[0].split() == ["seed", "supervised-only", "semi", "teacher", "semi", "student"]
    assert lines[1].split() == ["0", "50.00", "53.00", "52.00"]
    assert lines[3].split()[:4] == ["mean", "55.00", "±", "7.07"]
    assert lines[4] == "semi teacher - supervised: 1.00 ± 2.83 mIoU; ahead in 1 of 2 seeds"
    # a tie at the printed precision is not a seed ahead
    tie = tool.summary({0: {"supervised": 30.001, "teacher": 30.004}})
    assert tie[-1] == "semi teacher - supervised: 0.00 mIoU; ahead in 0 of 1 seeds"


def test_benchmark_semi_budget_table_headroom_and_share_recovered():
    tool = _load_benchmark_semi()
    by_budget = {
        "10": {0: {"supervised": 20.0, "teacher": 23.0}, 1: {"supervised": 24.0, "teacher": 25.0}},
        "40": {0: {"supervised": 30.0, "teacher": 29.0}, 1: {"supervised": 30.0, "teacher": 31.0}},
        "all": {0: {"supervised": 32.0}, 1: {"supervised": 30.0}},
    }
    lines = tool.budget_table(by_budget, {"10": 10, "40": 40, "all": 367})
    assert (
        " ".join(lines[0].split())
        == "labelled supervised-only semi teacher gain headroom recovered"
    )
    # budget 10: gains +3, +1; headroom per seed 32-20=12, 30-24=6 -> mean 9; 2 / 9 = 22 %
    assert " ".join(lines[1].split()) == "10 22.00 ± 2.83 24.00 ± 1.41 2.00 ± 1.41 9.00 ± 4.24 22 %"
    # budget 40: gains -1, +1; headroom per seed 2, 0 -> 0 of 1 recovered
    assert " ".join(lines[2].split()) == "40 30.00 ± 0.00 30.00 ± 1.41 0.00 ± 1.41 1.00 ± 1.41 0 %"
    # the largest budget has no semi run (no unlabelled images left) and no headroom
    assert " ".join(lines[3].split()) == "367 31.00 ± 1.41 - - - -"


def test_benchmark_semi_draws_nested_subsets_per_seed():
    tool = _load_benchmark_semi()
    pool = [{"file_name": f"img{i}"} for i in range(50)]
    extra = [{"file_name": "pool0"}]
    drawn = tool.draw_subsets(pool, extra, ["10", "20", "all"], seed=3)
    labeled10, unlabeled10 = drawn["10"]
    assert len(labeled10) == 10 and len(unlabeled10) == 41 and unlabeled10[-1] == extra[0]
    assert drawn["20"][0][:10] == labeled10  # nested: the 10 are among the 20
    assert len(drawn["all"][0]) == 50 and drawn["all"][1] == extra
    assert tool.draw_subsets(pool, extra, ["10"], seed=3)["10"][0] == labeled10  # seeded
    assert tool.draw_subsets(pool, extra, ["10"], seed=4)["10"][0] != labeled10
    with pytest.raises(ValueError, match="budget 60: the pool has 50 images"):
        tool.draw_subsets(pool, extra, ["60"], seed=0)


def test_benchmark_semi_on_a_folder_dataset(tmp_path):
    """``--folder``: no dataset opts needed, budgets drawn from the folder's labelled split, the
    report counts the images each run really used, and the plot is written."""
    from hiervl.data.datasets.folder import export_demo_as_folder

    folder = export_demo_as_folder(tmp_path / "demo_folder")  # 16 labelled, 184 unlabelled
    out = tmp_path / "bench"
    stdout = _run_tool(
        "benchmark_semi.py",
        "--folder",
        str(folder),
        "--config-file",
        "configs/demo/hiervl_demo.yaml",
        "--labeled",
        "4",
        "all",
        "--iters",
        "1",
        "--output",
        str(out),
        "DATASETS.CUSTOM.PALETTE",
        "palette.txt",
        timeout=900,  # four trainings and evaluations: ~30 s of CPU, minutes on a busy machine
    )
    assert f"data: {folder}; evaluated on custom_val" in stdout
    assert "labelled images: 4 (--labeled 4), unlabelled images: 196; val mIoU" in stdout
    assert "labelled images: 16 (--labeled all), unlabelled images: 184; val mIoU" in stdout
    report = (out / "benchmark.txt").read_text()  # the same as the end of stdout
    assert stdout.rstrip().endswith(report.rstrip())
    table = report[report.index("labelled  supervised-only") :].splitlines()
    assert [row.split()[0] for row in table[1:]] == ["4", "16"]
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted((r["budget"], r["method"]) for r in runs) == [
        ("4", "semi"),
        ("4", "supervised"),
        ("all", "semi"),
        ("all", "supervised"),
    ]
    labeled = (out / "labeled_4" / "seed0" / "semi" / "labeled.txt").read_text().split()
    assert (
        labeled == (out / "labeled_4" / "seed0" / "supervised" / "labeled.txt").read_text().split()
    )
    assert len(labeled) == 4 and all(p.startswith(str(folder.resolve())) for p in labeled)


def test_benchmark_semi_demo_splits_report_their_size(tmp_path):
    """Without --folder / --pool, the demo's fixed splits as before (the README's command); the
    counts in the report are those of the data the run used."""
    stdout = _run_tool(
        "benchmark_semi.py",
        "--labeled",
        "8",
        "--iters",
        "1",
        "--only",
        "supervised",
        "--output",
        str(tmp_path / "bench"),
    )
    assert "data: the embedded demo's splits; evaluated on hiervl_demo_val" in stdout
    assert "labelled images: 8 (--labeled 8), unlabelled images: 192; val mIoU" in stdout


def _results(path, runs, header_opts=None, steps=1500):
    """A benchmark's results.json with ``runs``: ``(budget, seed, method, mIoU)``; runs carry
    no ``opts`` when ``header_opts`` is given (files of the tool before runs recorded them)."""
    header = ["data: /data/camvid; evaluated on custom_val", f"config: c.yaml; steps: {steps}"]
    header[1] += "; seeds: " + " ".join(sorted({str(r[1]) for r in runs}))
    if header_opts:
        header.append("extra opts: " + header_opts)
    records = []
    for budget, seed, method, miou in runs:
        record = {"budget": budget, "seed": seed, "method": method}
        record.update(num_labeled=367 if budget == "all" else int(budget), num_unlabeled=0)
        keys = ["supervised"] if method == "supervised" else ["teacher", "student"]
        record["metrics"] = {k: {"mIoU": miou} for k in keys}
        if header_opts is None:
            record["opts"] = []
        records.append(record)
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"header": header, "runs": records}))
    return path


def test_benchmark_semi_merge_reports_over_separate_benchmarks(tmp_path, capsys):
    """Seeds and methods run as separate commands: one report, results.json and plot over
    them; supervised-only baselines may sit beside semi runs that differ in SEMI.* opts."""
    tool = _load_benchmark_semi()
    sup = _results(tmp_path / "sup", [("20", 0, "supervised", 30.0), ("20", 1, "supervised", 28.0)])
    top = _results(
        tmp_path / "top", [("all", 0, "supervised", 36.0), ("all", 1, "supervised", 34.0)]
    )
    oracle = _results(
        tmp_path / "oracle",
        [("20", 0, "semi", 33.0), ("20", 1, "semi", 29.0)],
        header_opts="SEMI.UNLABELED_GROUND_TRUTH oracle",
    )
    out = tmp_path / "merged"
    report = tool.main(
        ["--merge", str(sup), str(top), str(oracle / "results.json"), "--output", str(out)]
    )
    assert report.rstrip() == capsys.readouterr().out.rstrip()
    lines = report.splitlines()
    assert lines[:4] == [
        "data: /data/camvid; evaluated on custom_val",
        "config: c.yaml; steps: 1500; seeds: 0 1",
        "extra opts of the supervised-only runs: (none)",
        "extra opts of the semi-supervised runs: SEMI.UNLABELED_GROUND_TRUTH oracle",
    ]
    assert lines[4].startswith("merged from: ") and str(sup) in lines[4]
    assert "semi teacher - supervised: 2.00 ± 1.41 mIoU; ahead in 2 of 2 seeds" in lines
    # headroom per seed 36-30=6, 34-28=6; gain 2 of 6 = 33 %
    table = lines[
        lines.index("mean val mIoU over seeds; headroom = supervised(largest) - supervised") + 2
    ]
    assert " ".join(table.split()) == "20 29.00 ± 1.41 31.00 ± 2.83 2.00 ± 1.41 6.00 ± 0.00 33 %"
    assert (out / "benchmark.txt").read_text().rstrip() == report.rstrip()
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    merged = json.loads((out / "results.json").read_text())
    assert merged["title"] == "camvid, 1500 steps"
    assert {tuple(r["opts"]) for r in merged["runs"] if r["method"] == "semi"} == {
        ("SEMI.UNLABELED_GROUND_TRUTH", "oracle")
    }
    # a merged report merges again (its runs carry their opts); PATH:METHOD takes one method's
    # runs of a benchmark (here the supervised-only run beside a semi one of seed 2)
    more = _results(tmp_path / "more", [("20", 2, "supervised", 27.0), ("20", 2, "semi", 1.0)])
    again = tool.main(
        ["--merge", str(out), f"{more}:supervised", "--output", str(tmp_path / "again")]
    ).splitlines()
    assert "config: c.yaml; steps: 1500; seeds: 0 1 2" in again
    assert f"{more}/results.json (supervised runs)" in again[4]
    assert "   2            27.00                -                -" in again


def test_benchmark_semi_merge_refuses_what_does_not_compare(tmp_path):
    tool = _load_benchmark_semi()
    sup = _results(tmp_path / "sup", [("20", 0, "supervised", 30.0)])
    twice = _results(tmp_path / "twice", [("20", 0, "supervised", 31.0)])
    steps = _results(tmp_path / "steps", [("20", 1, "supervised", 31.0)], steps=600)
    model = _results(tmp_path / "model", [("20", 0, "semi", 31.0)], header_opts="MODEL.HIERVL.X 2")
    semi_a = _results(tmp_path / "a", [("20", 0, "semi", 31.0)], header_opts="SEMI.UNSUP_WEIGHT 1")
    semi_b = _results(tmp_path / "b", [("20", 1, "semi", 31.0)], header_opts="SEMI.UNSUP_WEIGHT 2")
    out = str(tmp_path / "out")
    cases = [
        ((sup, twice), rf"budget 20, seed 0, supervised: in {sup}/results.json and in {twice}"),
        ((sup, steps), "not the same setting"),
        ((sup, model), r"differ in MODEL.HIERVL.X: only SEMI.\* opts may differ"),
        ((semi_a, semi_b), "semi runs with different opts: SEMI.UNSUP_WEIGHT 1 in"),
        ((sup, tmp_path / "missing"), "missing: not a benchmark's results.json"),
    ]
    for sources, message in cases:
        with pytest.raises(SystemExit, match=message):
            tool.main(["--merge", *map(str, sources), "--output", out])
    before = (sup / "results.json").read_text()
    # the merged report would overwrite a source's results
    with pytest.raises(SystemExit, match="2"):  # argparse's exit status: a usage error
        tool.main(["--merge", str(sup), str(semi_a), "--output", str(sup)])
    assert (sup / "results.json").read_text() == before
    with pytest.raises(SystemExit, match="2"):  # no default folder for a merged report
        tool.main(["--merge", str(sup), str(semi_a)])
