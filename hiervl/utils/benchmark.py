"""Shared pieces of ``tools/benchmark_train.py`` and ``tools/benchmark_eval.py``.

Config assembly (the real config file, or the tiny test config for the CPU smoke mode), the
HVLFormer project import, device and dtype descriptions, capture of the MSDeformAttn dispatch
decision, and the printed ``name: value`` table that ``tests/tools/test_benchmarks.py`` parses.
"""

import logging
import os
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg

from hiervl.config import add_hiervl_config

__all__ = [
    "REPO_ROOT",
    "VARIANTS",
    "build_config",
    "capture_msda_path",
    "device_description",
    "format_table",
    "import_hvlformer",
    "median",
    "peak_memory",
    "reset_peak_memory",
    "synchronize",
    "timed",
]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
