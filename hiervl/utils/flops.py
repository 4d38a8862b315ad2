"""FLOP counting and model-FLOPs utilisation (MFU) for the benchmark tools.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``: it sees every aten op that
runs inside the context — forward ops, and the backward ops of an autograd ``backward()``
called inside it — and adds up the FLOPs of the ops it has a formula for: matrix products
(``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions and scaled-dot-product attention
(2 FLOPs per multiply-add). Element-wise ops, reductions, ``grid_sample`` and custom kernels
(the fused MSDeformAttn) count 0 — the usual convention of MFU, which measures the work of the
matrix units.

torch has no formula for the CPU flash-attention kernel of ``F.scaled_dot_product_attention``;
:func:`count_flops` adds the CUDA kernels' formula for it, so that CPU and GPU counts of the same
model agree.
"""

import logging
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = [
    "DENSE_BF16_PEAK_TFLOPS",
    "count_flops",
    "mfu",
    "peak_tflops_for",
]

logger = logging.getLogger(__name__)

# Dense (no 2:4 sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of
# torch.cuda.get_device_name(); the first match wins, so specific names come first.
# Source: NVIDIA's data sheets (H100: "NVIDIA H100 Tensor Core GPU" data sheet, BF16 Tensor Core
# 1,979 TFLOPS for SXM / 1,513 PCIe / 1,671 NVL, all quoted "with sparsity", i.e. twice the dense
# figure; H200: "NVIDIA H200 Tensor Core GPU" data sheet, 1,979 TFLOPS with sparsity; A100: "NVIDIA
# A100 Tensor Core GPU" data sheet, 312 TFLOPS dense).
DENSE_BF16_PEAK_TFLOPS: Tuple[Tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention forward: torch's formula of the CUDA kernels (same argument order)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """CPU flash attention backward: torch's formula of the CUDA kernels."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> Tuple[Any, int, Dict[str, int]]:
    """Run ``fn()`` once under ``FlopCounterMode`` and count its FLOPs.

    Args:
        fn: a callable without arguments, e.g. one training step (forward, ``backward()`` and
            optimiser step all inside it are counted).

    Returns:
        ``(result of fn, total FLOPs, FLOPs per aten op name)``.
    """
    mode = FlopCounterMode(display=False, custom_mapping=dict(_EXTRA_FORMULAS))
    with mode:
        result = fn()
    per_op = {str(op): int(n) for op, n in mode.get_flop_counts().get("Global", {}).items()}
    total = int(mode.get_total_flops())
    logger.debug("count_flops: %d FLOPs (%s)", total, per_op)
    return result, total, per_op


def peak_tflops_for(device_name: str) -> Optional[float]:
    """Dense bf16 peak TFLOP/s of a device (``torch.cuda.get_device_name()``), None if unknown."""
    for key, peak in DENSE_BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(flops: float, seconds: float, peak_tflops: Optional[float]) -> Optional[float]:
    """Model-FLOPs utilisation: achieved FLOP/s over the peak (a fraction), None without a peak.

    Args:
        flops: FLOPs of one step.
        seconds: wall time of one step.
        peak_tflops: the device's peak in TFLOP/s (10^12 FLOP/s).
    """
    if not peak_tflops or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)
