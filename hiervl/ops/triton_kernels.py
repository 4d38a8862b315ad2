"""Fused multi-scale deformable attention in Triton (forward and backward, JIT on first use).

Imported only when Triton is installed (``functional.fused_kernel_status``); it is never needed
on the CPU. One program handles ``BLOCK_Q`` queries of one (batch, head) pair and the whole head
dimension, so every sampling point's gradients w.r.t. its location and attention weight are
reduced inside the program and written once; only the value gradient, which many queries share,
is scattered with float32 atomics. All arithmetic is float32 whatever the input dtype (float32,
bfloat16, float16); outputs and gradients are cast back to the inputs' dtypes.

Sampling follows ``F.grid_sample(align_corners=False, padding_mode="zeros")``: the location
``(x, y)`` in ``[0, 1]`` maps to pixel coordinates ``(x * w - 0.5, y * h - 0.5)``, and corners
outside the level contribute zero (as do their gradients).

With ``TRITON_INTERPRET=1`` set before Triton is imported, the kernels also run on CPU tensors
through Triton's interpreter (used by the tests; slow, tiny shapes only).
"""

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["FUSED_MAX_HEAD_DIM", "ms_deform_attn_fused", "MSDeformAttnFunction"]

# Largest head dim the fused kernel holds in registers (one [BLOCK_Q, Dh] tile per corner).
FUSED_MAX_HEAD_DIM = 256


@triton.jit
def _corner(
    value_base,
    start,
    yy,
    xx,
    hgt,
    wid,
    mask_q,
    offs_d,
    mask_d,
    ROW_STRIDE: tl.constexpr,
):
    """Value rows at integer pixel ``(yy, xx)`` of one level: ``[BLOCK_Q, BLOCK_D]`` float32,
    zero outside the level; also returns the row offsets and the validity mask."""
    valid = mask_q & (xx >= 0) & (xx < wid) & (yy >= 0) & (yy < hgt)
    rows = (start + yy * wid + xx).to(tl.int64) * ROW_STRIDE
    ptrs = value_base + rows[:, None] + offs_d[None, :]
    mask = valid[:, None] & mask_d[None, :]
    vals = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return vals, rows, mask


@triton.jit
def _program_tile(
    num_queries,
    num_values,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """This program's tile: the rows of its (batch, query, head) triples in the flattened
    ``[B * Lq * H]`` query-head index, the offset of its (batch, head) in ``value``, the head-dim
    offsets, and the query / head-dim masks."""
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HEADS).to(tl.int64)
    h = pid_bh % HEADS
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    row = (b * num_queries + offs_q) * HEADS + h
    value_offset = b * num_values * HEADS * HEAD_DIM + h * HEAD_DIM
    return row, value_offset, offs_d, offs_q < num_queries, offs_d < HEAD_DIM


@triton.jit
def _level(shapes_ptr, starts_ptr, lvl):
    """Height, width and first value row of level ``lvl``."""
    return (
        tl.load(shapes_ptr + 2 * lvl),
        tl.load(shapes_ptr + 2 * lvl + 1),
        tl.load(starts_ptr + lvl),
    )


@triton.jit
def _point_corner(loc_ptr, lp, mask_q, hf, wf):
    """Sampling points ``lp`` of one level (``hf`` x ``wf`` pixels): their top-left integer
    corner ``(x0, y0)`` and bilinear fractions ``(lx, ly)``; pixel coordinate = location * size -
    0.5."""
    x = tl.load(loc_ptr + 2 * lp, mask=mask_q, other=0.0).to(tl.float32)
    y = tl.load(loc_ptr + 2 * lp + 1, mask=mask_q, other=0.0).to(tl.float32)
    # Clamp far-away points (all corners outside either way) before the int cast.
    xi = tl.minimum(tl.maximum(x * wf - 0.5, -2.0), wf + 1.0)
    yi = tl.minimum(tl.maximum(y * hf - 0.5, -2.0), hf + 1.0)
    x0f = tl.floor(xi)
    y0f = tl.floor(yi)
    return x0f.to(tl.int32), y0f.to(tl.int32), xi - x0f, yi - y0f


@triton.jit
def _four_corners(
    value_base,
    start,
    y0,
    x0,
    hgt,
    wid,
    mask_q,
    offs_d,
    mask_d,
    ROW_STRIDE: tl.constexpr,
):
    """``_corner`` at ``(y0, x0)``, ``(y0, x0 + 1)``, ``(y0 + 1, x0)``, ``(y0 + 1, x0 + 1)``:
    the four values, then their four row offsets, then their four masks."""
    v00, r00, m00 = _corner(value_base, start, y0, x0, hgt, wid, mask_q, offs_d, mask_d, ROW_STRIDE)
    v01, r01, m01 = _corner(
        value_base, start, y0, x0 + 1, hgt, wid, mask_q, offs_d, mask_d, ROW_STRIDE
    )
    v10, r10, m10 = _corner(
        value_base, start, y0 + 1, x0, hgt, wid, mask_q, offs_d, mask_d, ROW_STRIDE
    )
    v11, r11, m11 = _corner(
        value_base, start, y0 + 1, x0 + 1, hgt, wid, mask_q, offs_d, mask_d, ROW_STRIDE
    )
    return v00, v01, v10, v11, r00, r01, r10, r11, m00, m01, m10, m11


@triton.jit
def _bilinear(v00, v01, v10, v11, lx, ly):
    """The bilinear blend of the four corner values at fractions ``(lx, ly)``."""
    hx = 1.0 - lx
    hy = 1.0 - ly
    return (
        (hy * hx)[:, None] * v00
        + (hy * lx)[:, None] * v01
        + (ly * hx)[:, None] * v10
        + (ly * lx)[:, None] * v11
    )


@triton.jit
def _msda_fwd_kernel(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    attn_ptr,
    out_ptr,
    num_queries,
    num_values,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row, value_offset, offs_d, mask_q, mask_d = _program_tile(
        num_queries, num_values, HEADS, HEAD_DIM, BLOCK_Q, BLOCK_D
    )
    value_base = value_ptr + value_offset

    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in tl.static_range(LEVELS):
        hgt, wid, start = _level(shapes_ptr, starts_ptr, lvl)
        hf = hgt.to(tl.float32)
        wf = wid.to(tl.float32)
        for p in tl.static_range(POINTS):
            lp = row * (LEVELS * POINTS) + (lvl * POINTS + p)
            a = tl.load(attn_ptr + lp, mask=mask_q, other=0.0).to(tl.float32)
            x0, y0, lx, ly = _point_corner(loc_ptr, lp, mask_q, hf, wf)
            v00, v01, v10, v11, _r00, _r01, _r10, _r11, _m00, _m01, _m10, _m11 = _four_corners(
                value_base, start, y0, x0, hgt, wid, mask_q, offs_d, mask_d, HEADS * HEAD_DIM
            )
            sampled = _bilinear(v00, v01, v10, v11, lx, ly)
            acc += a[:, None] * sampled

    out_ptrs = out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_d[None, :])


@triton.jit
def _msda_bwd_kernel(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    attn_ptr,
    grad_out_ptr,
    grad_value_ptr,
    grad_loc_ptr,
    grad_attn_ptr,
    num_queries,
    num_values,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row, value_offset, offs_d, mask_q, mask_d = _program_tile(
        num_queries, num_values, HEADS, HEAD_DIM, BLOCK_Q, BLOCK_D
    )
    value_base = value_ptr + value_offset
    grad_value_base = grad_value_ptr + value_offset

    go = tl.load(
        grad_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :],
        mask=mask_q[:, None] & mask_d[None, :],
        other=0.0,
    ).to(tl.float32)
    for lvl in tl.static_range(LEVELS):
        hgt, wid, start = _level(shapes_ptr, starts_ptr, lvl)
        hf = hgt.to(tl.float32)
        wf = wid.to(tl.float32)
        for p in tl.static_range(POINTS):
            lp = row * (LEVELS * POINTS) + (lvl * POINTS + p)
            a = tl.load(attn_ptr + lp, mask=mask_q, other=0.0).to(tl.float32)
            x0, y0, lx, ly = _point_corner(loc_ptr, lp, mask_q, hf, wf)
            hx = 1.0 - lx
            hy = 1.0 - ly
            v00, v01, v10, v11, r00, r01, r10, r11, m00, m01, m10, m11 = _four_corners(
                value_base, start, y0, x0, hgt, wid, mask_q, offs_d, mask_d, HEADS * HEAD_DIM
            )
            sampled = _bilinear(v00, v01, v10, v11, lx, ly)
            grad_a = tl.sum(go * sampled, axis=1)
            gs = go * a[:, None]  # d loss / d sampled
            # d sampled / d lx and d ly; pixel coordinate = location * size - 0.5.
            dlx = tl.sum(gs * (hy[:, None] * (v01 - v00) + ly[:, None] * (v11 - v10)), axis=1)
            dly = tl.sum(gs * (hx[:, None] * (v10 - v00) + lx[:, None] * (v11 - v01)), axis=1)
            tl.store(grad_attn_ptr + lp, grad_a, mask=mask_q)
            tl.store(grad_loc_ptr + 2 * lp, dlx * wf, mask=mask_q)
            tl.store(grad_loc_ptr + 2 * lp + 1, dly * hf, mask=mask_q)

            cols = offs_d[None, :]
            tl.atomic_add(
                grad_value_base + r00[:, None] + cols,
                gs * (hy * hx)[:, None],
                mask=m00,
                sem="relaxed",
            )
            tl.atomic_add(
                grad_value_base + r01[:, None] + cols,
                gs * (hy * lx)[:, None],
                mask=m01,
                sem="relaxed",
            )
            tl.atomic_add(
                grad_value_base + r10[:, None] + cols,
                gs * (ly * hx)[:, None],
                mask=m10,
                sem="relaxed",
            )
            tl.atomic_add(
                grad_value_base + r11[:, None] + cols,
                gs * (ly * lx)[:, None],
                mask=m11,
                sem="relaxed",
            )


def _launch_params(head_dim: int, backward: bool) -> Tuple[int, int, int]:
    """``(BLOCK_Q, BLOCK_D, num_warps)``: keep about 2048 (forward) / 1024 (backward) elements
    per ``[BLOCK_Q, BLOCK_D]`` tile; five such tiles are live at once."""
    block_d = triton.next_power_of_2(head_dim)
    budget = 1024 if backward else 2048
    block_q = max(16, min(128, budget // block_d))
    return block_q, block_d, 4


def _prepare(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
):
    head_dim = value.shape[-1]
    if head_dim > FUSED_MAX_HEAD_DIM:
        raise ValueError(
            f"fused ms_deform_attn supports head dim <= {FUSED_MAX_HEAD_DIM}, got {head_dim}"
        )
    shapes = spatial_shapes.to(device=value.device, dtype=torch.int32).contiguous()
    starts = level_start_index.to(device=value.device, dtype=torch.int32).contiguous()
    return (
        value.contiguous(),
        shapes,
        starts,
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


class _DeviceGuard:
    """``torch.cuda.device(t.device)`` for CUDA tensors, nothing for CPU (interpreter) ones."""

    def __init__(self, tensor: torch.Tensor):
        self._ctx = torch.cuda.device(tensor.device) if tensor.is_cuda else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False


class MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of the fused kernels: gradients w.r.t. value, sampling locations and
    attention weights (spatial shapes and level starts are integer metadata)."""

    @staticmethod
    def forward(
        ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    ):
        value, shapes, starts, loc, attn = _prepare(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        batch, num_values, heads, head_dim = value.shape
        _, num_queries, _, levels, points, _ = loc.shape
        out = value.new_empty(batch, num_queries, heads * head_dim)
        if out.numel() > 0:
            block_q, block_d, num_warps = _launch_params(head_dim, backward=False)
            grid = (triton.cdiv(num_queries, block_q), batch * heads)
            with _DeviceGuard(value):
                _msda_fwd_kernel[grid](
                    value,
                    shapes,
                    starts,
                    loc,
                    attn,
                    out,
                    num_queries,
                    num_values,
                    HEADS=heads,
                    HEAD_DIM=head_dim,
                    LEVELS=levels,
                    POINTS=points,
                    BLOCK_Q=block_q,
                    BLOCK_D=block_d,
                    num_warps=num_warps,
                )
        ctx.save_for_backward(value, shapes, starts, loc, attn)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        batch, num_values, heads, head_dim = value.shape
        _, num_queries, _, levels, points, _ = loc.shape
        grad_out = grad_out.contiguous()
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        grad_loc = torch.zeros(loc.shape, dtype=torch.float32, device=loc.device)
        grad_attn = torch.zeros(attn.shape, dtype=torch.float32, device=attn.device)
        if grad_out.numel() > 0:
            block_q, block_d, num_warps = _launch_params(head_dim, backward=True)
            grid = (triton.cdiv(num_queries, block_q), batch * heads)
            with _DeviceGuard(value):
                _msda_bwd_kernel[grid](
                    value,
                    shapes,
                    starts,
                    loc,
                    attn,
                    grad_out,
                    grad_value,
                    grad_loc,
                    grad_attn,
                    num_queries,
                    num_values,
                    HEADS=heads,
                    HEAD_DIM=head_dim,
                    LEVELS=levels,
                    POINTS=points,
                    BLOCK_Q=block_q,
                    BLOCK_D=block_d,
                    num_warps=num_warps,
                )
        return (
            grad_value.to(value.dtype),
            None,
            None,
            grad_loc.to(loc.dtype),
            grad_attn.to(attn.dtype),
        )


def ms_deform_attn_fused(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Fused multi-scale deformable attention; same contract as ``ms_deform_attn_reference``.

    Args:
        value: ``[B, S, H, Dh]`` (float32, bfloat16 or float16; Dh <= 256).
        spatial_shapes: long ``[L, 2]``, ``(h, w)`` per level.
        level_start_index: long ``[L]``.
        sampling_locations: ``[B, Lq, H, L, P, 2]``, ``(x, y)`` in ``[0, 1]``.
        attention_weights: ``[B, Lq, H, L, P]``.

    Returns:
        ``[B, Lq, H * Dh]`` in the dtype of ``value``.
    """
    return MSDeformAttnFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
