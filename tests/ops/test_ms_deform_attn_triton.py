"""The fused Triton kernel against the reference: on the CPU through Triton's interpreter (in a
subprocess, since TRITON_INTERPRET must be set before Triton is imported), and on a GPU when
one is present (skipped otherwise)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hiervl.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference, resolve_impl

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()


def _make_inputs(shapes, batch, heads, head_dim, queries, points, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.long)
    areas = spatial[:, 0] * spatial[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    total = int(areas.sum())
    levels = len(shapes)
    value = torch.randn(batch, total, heads, head_dim, generator=gen)
    # [-0.3, 1.3]: many samples straddle or leave the border; a few far outside.
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=gen) * 1.6 - 0.3
    loc.view(-1, 2)[::17] = torch.tensor([-4.0, 6.0])
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen)
    return (
        value.to(device=device, dtype=dtype),
        spatial.to(device),
        starts.to(device),
        loc.to(device=device, dtype=dtype),
        weights.to(device=device, dtype=dtype),
    )


def _run_both(inputs, reference_dtype):
    """Forward + backward of the fused kernel on ``inputs`` and of the reference on the same
    inputs cast to ``reference_dtype``, with one shared random output gradient."""
    value, shapes, starts, loc, weights = inputs
    from hiervl.ops.triton_kernels import ms_deform_attn_fused

    fused_in = [t.detach().clone().requires_grad_(True) for t in (value, loc, weights)]
    ref_in = [t.detach().to(reference_dtype).requires_grad_(True) for t in (value, loc, weights)]
    out = ms_deform_attn_fused(fused_in[0], shapes, starts, fused_in[1], fused_in[2])
    ref = ms_deform_attn_reference(ref_in[0], shapes, starts, ref_in[1], ref_in[2])
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    return [out] + [t.grad for t in fused_in], [ref] + [t.grad for t in ref_in]


def _rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, {test_dir!r})
    import torch
    import test_ms_deform_attn_triton as t

    names = ("output", "grad value", "grad locations", "grad weights")
    # Non-square levels (one 1 pixel tall), odd head dim, several query blocks.
    cases = [
        dict(shapes=[(5, 7), (3, 2), (1, 4)], batch=2, heads=1, head_dim=5, queries=9, points=2),
        dict(shapes=[(6, 3), (2, 5)], batch=1, heads=2, head_dim=16, queries=70, points=3),
    ]
    for case in cases:
        got, want = t._run_both(t._make_inputs(device="cpu", dtype=torch.float32, **case),
                                torch.float64)
        for name, g, w in zip(names, got, want):
            assert g.dtype == torch.float32, (name, g.dtype)
            torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=1e-4, msg=name)
    got, want = t._run_both(t._make_inputs(device="cpu", dtype=torch.bfloat16, **cases[0]),
                            torch.float64)
    for name, g, w in zip(names, got, want):
        assert g.dtype == torch.bfloat16, (name, g.dtype)
        assert t._rel_err(g, w) < 1e-2, (name, t._rel_err(g, w))
    print("INTERPRETER OK")
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_fused_kernel_in_triton_interpreter():
    script = _INTERPRETER_SCRIPT.format(test_dir=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "INTERPRETER OK" in proc.stdout


needs_gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")

GPU_CASES = [
    # Mask2Former-like levels, reduced; non-square levels; odd head dim and many points.
    dict(
        shapes=[(32, 32), (16, 16), (8, 8)], batch=2, heads=8, head_dim=32, queries=1344, points=4
    ),
    dict(shapes=[(13, 29), (7, 15), (4, 8)], batch=3, heads=4, head_dim=24, queries=257, points=5),
    dict(shapes=[(1, 9), (17, 2)], batch=1, heads=2, head_dim=64, queries=33, points=1),
]


@needs_gpu
@pytest.mark.parametrize("case", GPU_CASES)
def test_fused_matches_reference_fp32_gpu(case):
    inputs = _make_inputs(device="cuda", dtype=torch.float32, **case)
    got, want = _run_both(inputs, torch.float32)
    for name, g, w in zip(("output", "grad value", "grad loc", "grad weights"), got, want):
        torch.testing.assert_close(g, w, atol=1e-3, rtol=1e-3, msg=name)


@needs_gpu
@pytest.mark.parametrize("case", GPU_CASES)
def test_fused_matches_reference_bf16_gpu(case):
    # bf16 inputs, float32 accumulation: only the final rounding to bf16 (2^-8 relative) and
    # atomics order differ; tolerance: 2e-2 of the largest magnitude.
    inputs = _make_inputs(device="cuda", dtype=torch.bfloat16, **case)
    got, want = _run_both(inputs, torch.float32)
    for name, g, w in zip(("output", "grad value", "grad loc", "grad weights"), got, want):
        assert g.dtype == torch.bfloat16
        assert _rel_err(g, w) < 2e-2, (name, _rel_err(g, w))


@needs_gpu
def test_gpu_dispatch_and_module(monkeypatch):
    monkeypatch.delenv("HIERVL_MSDA_IMPL", raising=False)
    case = GPU_CASES[1]
    value, shapes, starts, loc, weights = _make_inputs(device="cuda", dtype=torch.float32, **case)
    assert resolve_impl("auto", value)[0] == "fused"
    assert resolve_impl("auto", value.double())[0] == "reference"
    assert resolve_impl("auto", value.new_zeros(1, 1, 1, 512))[0] == "reference"
    with pytest.raises(RuntimeError, match="float64"):
        resolve_impl("fused", value.double())
    monkeypatch.setenv("HIERVL_MSDA_IMPL", "reference")
    assert resolve_impl("auto", value)[0] == "reference"
    monkeypatch.delenv("HIERVL_MSDA_IMPL")
    torch.testing.assert_close(
        ms_deform_attn(value, shapes, starts, loc, weights, impl="fused"),
        ms_deform_attn(value, shapes, starts, loc, weights, impl="reference"),
        atol=1e-3,
        rtol=1e-3,
    )

    torch.manual_seed(0)
    fused = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=2, impl="fused").cuda()
    ref = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=2, impl="reference").cuda()
    ref.load_state_dict(fused.state_dict())
    query = torch.randn(2, 50, 64, device="cuda")
    feats = torch.randn(2, int((shapes[:, 0] * shapes[:, 1]).sum()), 64, device="cuda")
    refpts = torch.rand(2, 50, 3, 2, device="cuda")
    mask = torch.zeros(feats.shape[:2], dtype=torch.bool, device="cuda")
    mask[1, -40:] = True
    out_f = fused(query, refpts, feats, shapes, starts, mask)
    out_r = ref(query, refpts, feats, shapes, starts, mask)
    torch.testing.assert_close(out_f, out_r, atol=1e-3, rtol=1e-3)
    out_f.square().sum().backward()
    out_r.square().sum().backward()
    for (name, pf), pr in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, atol=1e-3, rtol=1e-3, msg=name)
