"""CPU tests of the multi-scale deformable attention reference, module, dispatch and benchmark."""

import importlib.util
import logging
import math
import os

import pytest
import torch

from hiervl.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference, resolve_impl
from hiervl.ops import functional as msda_functional

# Non-square levels, one of them 1 pixel tall.
SHAPES = [(5, 7), (3, 2), (1, 4)]


def _make_inputs(batch=2, heads=3, head_dim=4, queries=6, points=2, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(SHAPES, dtype=torch.long)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    total = int(areas.sum())
    levels = len(SHAPES)
    value = torch.randn(batch, total, heads, head_dim, generator=gen, dtype=dtype)
    # Locations in [-0.3, 1.3]: many samples fall partly or wholly outside the map.
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=dtype)
    loc = loc * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=dtype)
    return value, shapes, starts, loc, weights


def _naive(value, shapes, starts, loc, weights):
    """Per-point bilinear interpolation with pixel centres at (j + 0.5) / w, zero outside."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = loc.shape
    out = torch.zeros(batch, queries, heads, head_dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                for lvl in range(levels):
                    hh, ww = (int(s) for s in shapes[lvl])
                    start = int(starts[lvl])
                    for p in range(points):
                        x = float(loc[b, q, h, lvl, p, 0]) * ww - 0.5
                        y = float(loc[b, q, h, lvl, p, 1]) * hh - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for yi, xi in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yi < hh and 0 <= xi < ww:
                                bil = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                v = value[b, start + yi * ww + xi, h]
                                out[b, q, h] += weights[b, q, h, lvl, p] * bil * v
    return out.reshape(batch, queries, heads * head_dim)


def test_reference_matches_naive_loop():
    value, shapes, starts, loc, weights = _make_inputs()
    # Points exactly on the border and far outside, too.
    loc[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0], dtype=loc.dtype)
    loc[1, 1, 1, 1, 1] = torch.tensor([-2.0, 3.0], dtype=loc.dtype)
    out = ms_deform_attn_reference(value, shapes, starts, loc, weights)
    expected = _naive(value, shapes, starts, loc, weights)
    assert out.shape == (2, 6, 12)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    # The wholly outside point contributes nothing: moving it further away changes nothing.
    loc2 = loc.clone()
    loc2[1, 1, 1, 1, 1] = torch.tensor([-5.0, 7.0], dtype=loc.dtype)
    torch.testing.assert_close(ms_deform_attn_reference(value, shapes, starts, loc2, weights), out)


def test_reference_gradcheck_float64():
    value, shapes, starts, loc, weights = _make_inputs(batch=1, heads=2, head_dim=2, queries=3)
    # Random points almost surely avoid integer pixel coordinates, where bilinear has kinks.
    loc = loc.detach().requires_grad_(True)
    value.requires_grad_(True)
    weights.requires_grad_(True)

    def fn(v, sl, aw):
        return ms_deform_attn_reference(v, shapes, starts, sl, aw)

    assert torch.autograd.gradcheck(fn, (value, loc, weights), eps=1e-6, atol=1e-5)


def test_dispatch_and_env_switch(monkeypatch, caplog):
    value, shapes, starts, loc, weights = _make_inputs(dtype=torch.float32)
    monkeypatch.delenv("HIERVL_MSDA_IMPL", raising=False)
    assert resolve_impl("auto", value)[0] == "reference"
    assert resolve_impl("reference", value) == ("reference", "forced by impl='reference'")
    with pytest.raises(RuntimeError, match="fused implementation requested"):
        resolve_impl("fused", value)
    with pytest.raises(ValueError, match="impl must be one of"):
        ms_deform_attn(value, shapes, starts, loc, weights, impl="cuda")

    monkeypatch.setenv("HIERVL_MSDA_IMPL", "reference")
    assert resolve_impl("fused", value) == ("reference", "forced by HIERVL_MSDA_IMPL=reference")
    monkeypatch.setenv("HIERVL_MSDA_IMPL", "fused")
    with pytest.raises(RuntimeError, match="HIERVL_MSDA_IMPL=fused"):
        resolve_impl("auto", value)
    monkeypatch.setenv("HIERVL_MSDA_IMPL", "bogus")
    with pytest.raises(ValueError, match="HIERVL_MSDA_IMPL"):
        resolve_impl("auto", value)

    # One log line per process (per distinct decision), however many calls.
    monkeypatch.delenv("HIERVL_MSDA_IMPL")
    monkeypatch.setattr(msda_functional, "_logged_decisions", set())
    with caplog.at_level(logging.INFO, logger="hiervl.ops.functional"):
        out = ms_deform_attn(value, shapes, starts, loc, weights)
        ms_deform_attn(value, shapes, starts, loc, weights)
    lines = [r.getMessage() for r in caplog.records if "MSDeformAttn" in r.getMessage()]
    assert lines == [
        "MSDeformAttn: using the reference implementation "
        "(value is on cpu, the fused kernel needs a CUDA tensor)."
    ]
    torch.testing.assert_close(out, ms_deform_attn_reference(value, shapes, starts, loc, weights))


def _module_inputs(batch=2, d_model=16, queries=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(SHAPES, dtype=torch.long)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    total = int(areas.sum())
    query = torch.randn(batch, queries, d_model, generator=gen)
    feats = torch.randn(batch, total, d_model, generator=gen)
    ref = torch.rand(batch, queries, len(SHAPES), 2, generator=gen)
    return query, ref, feats, shapes, starts


def test_module_shapes_init_and_backward():
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, impl="reference")
    query, ref, feats, shapes, starts = _module_inputs()
    out = m(query, ref, feats, shapes, starts)
    assert out.shape == (2, 5, 16)
    boxes = torch.cat([ref, torch.full_like(ref, 0.2)], dim=-1)
    assert m(query, boxes, feats, shapes, starts).shape == (2, 5, 16)
    # Standard init: head 0 points along +x at 1, 2 pixels; attention weights uniform.
    bias = m.sampling_offsets.bias.view(4, 3, 2, 2)
    torch.testing.assert_close(bias[0, :, :, 0], torch.tensor([[1.0, 2.0]] * 3))
    torch.testing.assert_close(bias[0, :, :, 1], torch.zeros(3, 2))
    assert m.attention_weights.weight.abs().sum() == 0
    out.sum().backward()
    for name, param in m.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="reference_points"):
        m(query, ref[..., :1], feats, shapes, starts)


def test_module_padding_mask_zeroes_values():
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, impl="reference")
    query, ref, feats, shapes, starts = _module_inputs()
    mask = torch.zeros(feats.shape[:2], dtype=torch.bool)
    mask[1, 10:] = True
    out = m(query, ref, feats, shapes, starts, mask)
    # Changing masked features changes nothing; batch 0 (unmasked) equals the mask-free call.
    feats2 = feats.clone()
    feats2[1, 10:] = 100.0
    torch.testing.assert_close(m(query, ref, feats2, shapes, starts, mask), out)
    torch.testing.assert_close(m(query, ref, feats, shapes, starts)[0], out[0])
    assert not torch.allclose(m(query, ref, feats2, shapes, starts)[1], out[1])


def test_python_shapes_give_the_same_result_and_trace_with_torch_export():
    """``shapes=`` (the level sizes as Python ints) changes nothing in the result, and lets
    ``torch.export`` trace the layer: without it the reference reads ``spatial_shapes`` on the
    host (``.tolist()``), a data-dependent value that export refuses (issue 21)."""
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, impl="reference").eval()
    query, ref, feats, shapes, starts = _module_inputs()
    out = m(query, ref, feats, shapes, starts)
    torch.testing.assert_close(m(query, ref, feats, shapes, starts, shapes=SHAPES), out)
    value, _, _, loc, weights = _make_inputs()
    torch.testing.assert_close(
        ms_deform_attn(value, shapes, starts, loc, weights, shapes=SHAPES),
        ms_deform_attn_reference(value, shapes, starts, loc, weights),
    )
    with pytest.raises(ValueError, match="do not sum"):
        m(query, ref, feats, shapes, starts, shapes=SHAPES[:2] + [(1, 5)])
    with pytest.raises(ValueError, match="levels"):
        ms_deform_attn(value, shapes, starts, loc, weights, shapes=SHAPES[:2])

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = m

        def forward(self, query, ref, feats):
            spatial = torch.as_tensor(SHAPES, dtype=torch.long)
            sizes = spatial.prod(dim=1)
            level_starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
            return self.attn(query, ref, feats, spatial, level_starts, shapes=SHAPES)

    with torch.no_grad():
        program = torch.export.export(Layer(), (query, ref, feats))
        torch.testing.assert_close(program.module()(query, ref, feats), out)


def test_benchmark_cpu_smoke(capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "benchmark_msdeformattn.py")
    spec = importlib.util.spec_from_file_location("benchmark_msdeformattn", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.level_shapes("cityscapes") == [(101, 101), (51, 51), (26, 26)]
    assert bench.level_shapes("512") == [(64, 64), (32, 32), (16, 16)]
    bench.main(["--device", "cpu", "--batch", "1", "--small", "--warmup", "0", "--iters", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device: CPU")
    row = lines[2].split()
    assert row[:4] == ["small", "8x8,4x4,2x2", "1", "reference"]
    assert float(row[4]) > 0 and float(row[5]) > 0
