"""tools/benchmark_train.py and tools/benchmark_eval.py: CPU smoke runs print every figure;
the FLOP counter and MFU helpers give known counts."""

import importlib.util
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


def _run_tool(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
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


def test_benchmark_semi_summary_lists_seeds_and_counts_gains():
    spec = importlib.util.spec_from_file_location(
        "benchmark_semi", os.path.join(REPO, "tools", "benchmark_semi.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
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
