#!/usr/bin/env python
"""Benchmark multi-scale deformable attention: the PyTorch reference vs the fused Triton kernel.

Shapes are those of a Mask2Former-style pixel decoder (8 heads, 4 points, 256 channels, three
levels at strides 8 / 16 / 32, every pixel a query: Lq = S):

* ``512``: a 512x512 input, levels 64x64, 32x32, 16x16;
* ``cityscapes``: an 801x801 crop, levels ceil(801/8), ceil(801/16), ceil(801/32) = 101, 51, 26.

Per shape and batch it prints the milliseconds of forward (no grad) and forward+backward of each
implementation, the reference / fused ratio, and the peak memory of forward+backward
(``torch.cuda.max_memory_allocated``; ``+MiB``: above the memory held before the call) on
CUDA. On the CPU only the reference runs.

Examples::

    python tools/benchmark_msdeformattn.py                      # CUDA, batches 8 and 16
    python tools/benchmark_msdeformattn.py --dtype bfloat16
    python tools/benchmark_msdeformattn.py --device cpu --batch 1 --small   # smoke test
"""
import argparse
import math
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hiervl.ops import fused_kernel_status, ms_deform_attn  # noqa: E402

HEADS, POINTS, CHANNELS = 8, 4, 256
STRIDES = (8, 16, 32)


def level_shapes(name: str) -> List[Tuple[int, int]]:
    if name == "512":
        return [(512 // s, 512 // s) for s in STRIDES]
    if name == "cityscapes":
        return [(math.ceil(801 / s), math.ceil(801 / s)) for s in STRIDES]
    if name == "small":
        return [(8, 8), (4, 4), (2, 2)]
    raise ValueError(name)


def make_inputs(shapes, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Encoder self-attention inputs: each query is a pixel of some level; its samples lie
    around its own position on every level (a few pixels away, like trained offsets)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.long)
    areas = spatial[:, 0] * spatial[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    total = int(areas.sum())
    levels = len(shapes)
    head_dim = CHANNELS // HEADS
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )
        refs.append(torch.stack([xs, ys], -1).reshape(-1, 2))
    ref = torch.cat(refs)  # [S, 2]
    size = spatial.flip(-1).float()  # (w, h) per level
    offsets = torch.randn(batch, total, HEADS, levels, POINTS, 2, generator=gen) * 2.0
    loc = ref[None, :, None, None, None, :] + offsets / size[None, None, None, :, None, :]
    logits = torch.randn(batch, total, HEADS, levels * POINTS, generator=gen)
    weights = logits.softmax(-1).view(batch, total, HEADS, levels, POINTS)
    value = torch.randn(batch, total, HEADS, head_dim, generator=gen)

    def dev(t, dt=dtype):
        return t.to(device=device, dtype=dt)

    return dev(value), dev(spatial, None), dev(starts, None), dev(loc), dev(weights)


def timeit(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def bench_one(impl: str, inputs, device, warmup: int, iters: int) -> Dict[str, float]:
    value, spatial, starts, loc, weights = inputs
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, loc, weights)]
    grad = None

    def forward():
        with torch.no_grad():
            ms_deform_attn(value, spatial, starts, loc, weights, impl=impl)

    def forward_backward():
        nonlocal grad
        for t in leaves:
            t.grad = None
        out = ms_deform_attn(leaves[0], spatial, starts, leaves[1], leaves[2], impl=impl)
        if grad is None:
            grad = torch.randn_like(out)
        out.backward(grad)

    result = {"fwd": timeit(forward, device, warmup, iters)}
    if device.type == "cuda":
        forward_backward()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward_backward()
        torch.cuda.synchronize(device)
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["extra_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    result["fwd_bwd"] = timeit(forward_backward, device, warmup, iters)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--shapes", nargs="+", default=["512", "cityscapes"])
    parser.add_argument("--small", action="store_true", help="tiny levels 8x8,4x4,2x2 (smoke)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shape_names = ["small"] if args.small else args.shapes
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        impls = ["reference", "fused"]
        available, why = fused_kernel_status()
        if not available:
            raise SystemExit(f"fused kernel unavailable: {why}")
    else:
        name = (
            f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
        impls = ["reference"]
    print(
        f"device: {name} | torch {torch.__version__} | dtype {args.dtype} | heads {HEADS} "
        f"points {POINTS} channels {CHANNELS} | median of {args.iters} after {args.warmup}"
    )
    print(
        f"{'shape':<26} {'batch':>5} {'impl':<10} {'fwd ms':>9} {'fwd+bwd ms':>11} "
        f"{'peak MiB':>9} {'+MiB':>7}"
    )
    for shape_name in shape_names:
        shapes = level_shapes(shape_name)
        label = f"{shape_name} " + ",".join(f"{h}x{w}" for h, w in shapes)
        for batch in args.batch:
            inputs = make_inputs(shapes, batch, device, dtype)
            results = {}
            for impl in impls:
                results[impl] = r = bench_one(impl, inputs, device, args.warmup, args.iters)
                peak = (
                    f"{r['peak_mib']:9.0f} {r['extra_mib']:7.0f}"
                    if "peak_mib" in r
                    else f"{'-':>9} {'-':>7}"
                )
                print(
                    f"{label:<26} {batch:>5} {impl:<10} {r['fwd']:9.2f} {r['fwd_bwd']:11.2f} {peak}"
                )
            if "fused" in results:
                ref, fus = results["reference"], results["fused"]
                print(
                    f"{label:<26} {batch:>5} {'ref/fused':<10} {ref['fwd'] / fus['fwd']:8.2f}x "
                    f"{ref['fwd_bwd'] / fus['fwd_bwd']:10.2f}x "
                    f"{ref['peak_mib'] / fus['peak_mib']:8.2f}x"
                )
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
