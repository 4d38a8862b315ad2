"""What the benchmark tools share (``tools/benchmark_train.py``, ``tools/benchmark_eval.py``).

Config assembly (the real config file, or the tiny test config for the CPU smoke mode), the
HVLFormer project import (tools may import a project; the ``hiervl`` package may not), device
descriptions, timing and peak memory, capture of the MSDeformAttn dispatch decision, the
printed ``name: value`` table that ``tests/tools/test_benchmarks.py`` parses, and FLOP
counting with model-FLOPs utilisation (MFU).

FLOP counting and model-FLOPs utilisation (MFU) for the benchmark tools.

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
import os
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from hiervl.config import add_hiervl_config

__all__ = [
    "DENSE_BF16_PEAK_TFLOPS",
    "REPO_ROOT",
    "VARIANTS",
    "build_config",
    "capture_msda_path",
    "count_flops",
    "device_description",
    "format_table",
    "import_hvlformer",
    "median",
    "mfu",
    "peak_memory",
    "peak_tflops_for",
    "reset_peak_memory",
    "synchronize",
    "timed",
]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("hiervl", "hvlformer")


def import_hvlformer():
    """Import ``projects/HVLFormer``'s ``hvlformer`` package (registers its mapper)."""
    path = os.path.join(REPO_ROOT, "projects", "HVLFormer")
    if path not in sys.path:
        sys.path.insert(0, path)
    import hvlformer

    return hvlformer


def build_config(
    *,
    variant: str,
    config_file: Optional[str],
    tiny: bool,
    device: str,
    settings: Sequence[Tuple[str, object]],
    opts: Sequence[str],
) -> CfgNode:
    """The benchmark's config: base → file (or tiny) → benchmark settings → user opts.

    Args:
        variant: ``"hiervl"`` or ``"hvlformer"`` (adds the HVLFormer keys).
        config_file: a HierVL / HVLFormer yaml; ignored when ``tiny``.
        tiny: use ``hiervl.utils.testing.tiny_config()`` (tiny random-init CLIP, demo classes).
        device: ``MODEL.DEVICE``.
        settings: ``(key, value)`` pairs the benchmark imposes (batch, crop, AMP, ...).
        opts: ``KEY VALUE ...`` of the command line, applied last.

    Returns:
        the frozen config.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    import hiervl.data  # noqa: F401  (registers the built-in datasets and their class names)
    import hiervl.hiervl_model  # noqa: F401  (registers the HierVL META_ARCH)

    if tiny:
        from hiervl.utils.testing import tiny_config

        cfg = tiny_config()
    else:
        cfg = get_cfg()
        add_hiervl_config(cfg)
    if variant == "hvlformer":
        import_hvlformer().add_hvlformer_config(cfg)
    if not tiny:
        cfg.merge_from_file(config_file)
    flat: List = ["MODEL.DEVICE", device]
    for key, value in settings:
        flat += [key, value]
    cfg.merge_from_list(flat)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def device_description(device: torch.device) -> str:
    """``"NVIDIA H100 80GB HBM3 (cuda:0)"`` or ``"cpu (N threads)"``."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    """Peak allocated and reserved memory since the last reset, or ``"n/a"`` off CUDA."""
    if device.type != "cuda":
        return "n/a (not CUDA)"
    gib = 1024**3
    return (
        f"{torch.cuda.max_memory_allocated(device) / gib:.2f} GiB allocated "
        f"(max_memory_allocated), {torch.cuda.max_memory_reserved(device) / gib:.2f} GiB reserved"
    )


def timed(fn: Callable[[], object], device: torch.device, n: int) -> List[float]:
    """Seconds of each of ``n`` calls of ``fn``, synchronising the device around each call."""
    times = []
    for _ in range(n):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def capture_msda_path() -> Iterator[Dict[str, str]]:
    """Collect the MSDeformAttn dispatch decisions logged inside the context.

    ``hiervl.ops`` logs ``"MSDeformAttn: using the <path> implementation (<reason>)."`` once per
    distinct decision and process; the yielded dict gets ``"path"``: those messages joined (or
    a note that nothing was logged, e.g. because an earlier call in the process logged it).
    """
    source = logging.getLogger("hiervl.ops.functional")
    handler = _ListHandler()
    old_level = source.level
    source.addHandler(handler)
    source.setLevel(logging.INFO)
    result: Dict[str, str] = {}
    try:
        yield result
    finally:
        source.removeHandler(handler)
        source.setLevel(old_level)
        prefix = "MSDeformAttn: using the "
        found = [m[len(prefix) :].rstrip(".") for m in handler.messages if m.startswith(prefix)]
        result["path"] = "; ".join(found) if found else "not logged (no call, or logged earlier)"


def format_table(title: str, rows: Sequence[Tuple[str, str]]) -> str:
    """``title`` and one ``name: value`` line per row, names padded to one column."""
    width = max(len(name) for name, _ in rows)
    return "\n".join([title] + [f"  {name + ':':<{width + 1}} {value}" for name, value in rows])


# ---- FLOPs and MFU ----------------------------------------------------------------------------

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
