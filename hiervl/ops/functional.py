"""Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2021): reference and dispatch.

``ms_deform_attn`` is the one public entry point. It runs either

* the pure-PyTorch reference (``F.grid_sample`` per level, ``align_corners=False``, zero
  padding), which always imports and runs on any device, or
* the fused Triton kernel (``triton_kernels.py``), JIT-compiled on first use, when the
  value tensor lives on a CUDA device and Triton is importable.

The choice is explicit (no error is swallowed): ``impl="reference"`` or the environment variable
``HIERVL_MSDA_IMPL=reference`` forces the reference, ``impl="fused"`` raises a clear error when
the kernel cannot run, ``impl="auto"`` picks the kernel whenever it can. Which path runs, and
why, is logged once per process (once per distinct decision).
"""

import functools
import importlib
import importlib.util
import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "IMPLS",
    "ENV_VAR",
    "fused_kernel_status",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "resolve_impl",
]

logger = logging.getLogger(__name__)

IMPLS = ("auto", "reference", "fused")
ENV_VAR = "HIERVL_MSDA_IMPL"
# dtypes the fused kernel accepts for ``value`` (it always accumulates in float32).
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_logged_decisions = set()


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    shapes: Optional[Sequence[Tuple[int, int]]] = None,
) -> torch.Tensor:
    """Pure-PyTorch multi-scale deformable attention (one ``F.grid_sample`` per level).

    A location ``(x, y)`` in ``[0, 1]`` addresses the level's pixel centres as in
    ``grid_sample(align_corners=False)``: pixel ``(i, j)`` sits at ``((j + 0.5) / w,
    (i + 0.5) / h)``; samples outside the map read zeros (bilinear weights of the corners that
    fall outside are dropped).

    Args:
        value: ``[B, S, H, Dh]`` per-head values of all levels, flattened level by level.
        spatial_shapes: long ``[L, 2]``, ``(h, w)`` of every level; ``sum(h * w) == S``.
        level_start_index: long ``[L]``, offset of every level in ``S``.
        sampling_locations: ``[B, Lq, H, L, P, 2]``, ``(x, y)`` normalised to ``[0, 1]``
            (values outside are allowed).
        attention_weights: ``[B, Lq, H, L, P]``.
        shapes: the same ``(h, w)`` as ``spatial_shapes``, as Python ints, when the caller
            knows them (see ``ms_deform_attn``); the level offsets are then their running sums.

    Returns:
        ``[B, Lq, H * Dh]`` in the dtype of ``value``.
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    if shapes is None:
        shapes = _as_int_pairs(spatial_shapes)
        starts = [int(s) for s in level_start_index.tolist()]
    else:
        shapes = [(int(h), int(w)) for h, w in shapes]
        starts = [sum(h * w for h, w in shapes[:lvl]) for lvl in range(len(shapes))]
    grids = 2.0 * sampling_locations.to(value.dtype) - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [B, h*w, H, Dh] -> [B*H, Dh, h, w]
        v = value[:, starts[lvl] : starts[lvl] + h * w]
        v = v.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, h, w)
        # [B, Lq, H, P, 2] -> [B*H, Lq, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(batch * heads, num_queries, points, 2)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [B*H, Dh, Lq, L, P] -> [B*H, Dh, Lq, L*P]
    stacked = torch.stack(sampled, dim=3).flatten(3)
    weights = attention_weights.to(value.dtype).transpose(1, 2)
    weights = weights.reshape(batch * heads, 1, num_queries, levels * points)
    out = (stacked * weights).sum(-1)  # [B*H, Dh, Lq]
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()


def _as_int_pairs(spatial_shapes: torch.Tensor) -> List[Tuple[int, int]]:
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def fused_kernel_status() -> Tuple[bool, str]:
    """Whether the fused Triton kernel can run in this process, and why (not).

    Returns:
        ``(available, reason)``; the reason is a short human-readable phrase.
    """
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    import_error = _kernel_import_error()
    if import_error:
        return False, f"importing the Triton kernels failed: {import_error}"
    return True, "triton is installed and CUDA is available"


@functools.lru_cache(maxsize=None)
def _kernel_import_error() -> str:
    """Empty when ``triton_kernels`` imports, else the ``ImportError`` message (cached)."""
    try:
        importlib.import_module(f"{__package__}.triton_kernels")
    except ImportError as err:
        return str(err)
    return ""


def resolve_impl(impl: str, value: torch.Tensor) -> Tuple[str, str]:
    """Decide which implementation runs for ``value``.

    Args:
        impl: ``"auto"``, ``"reference"`` or ``"fused"``.
        value: the ``[B, S, H, Dh]`` value tensor (its device and dtype matter).

    Returns:
        ``("reference" | "fused", reason)``.

    Raises:
        ValueError: on an unknown ``impl`` or an unknown ``HIERVL_MSDA_IMPL`` value.
        RuntimeError: ``impl="fused"`` (argument or environment) when the kernel cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"ms_deform_attn: impl must be one of {IMPLS}, got {impl!r}")
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env and env not in IMPLS:
        raise ValueError(f"ms_deform_attn: {ENV_VAR} must be one of {IMPLS}, got {env!r}")
    if env == "reference":
        return "reference", f"forced by {ENV_VAR}=reference"
    if impl == "reference":
        return "reference", "forced by impl='reference'"
    requested = impl if impl != "auto" else (env or "auto")
    source = f"impl='{impl}'" if impl != "auto" else f"{ENV_VAR}={env}"

    problem: Optional[str] = None
    if not value.is_cuda:
        problem = f"value is on {value.device}, the fused kernel needs a CUDA tensor"
    elif value.dtype not in _FUSED_DTYPES:
        problem = f"value dtype {value.dtype} is not supported by the fused kernel"
    else:
        available, why = fused_kernel_status()
        if not available:
            problem = f"fused kernel unavailable: {why}"
        else:
            # The kernel's own limit, read from its module (which imports only when Triton does).
            from .triton_kernels import FUSED_MAX_HEAD_DIM

            if value.shape[-1] > FUSED_MAX_HEAD_DIM:
                problem = (
                    f"head dim {value.shape[-1]} exceeds the fused kernel's {FUSED_MAX_HEAD_DIM}"
                )
    if problem is None:
        return "fused", f"value on {value.device} ({value.dtype}) and Triton available"
    if requested == "fused":
        raise RuntimeError(
            f"ms_deform_attn: fused implementation requested ({source}) but {problem}. "
            f"Use impl='reference' (or {ENV_VAR}=reference) to run the PyTorch reference."
        )
    return "reference", problem


def _log_once(path: str, reason: str) -> None:
    key = (path, reason)
    if key not in _logged_decisions:
        _logged_decisions.add(key)
        logger.info("MSDeformAttn: using the %s implementation (%s).", path, reason)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    impl: str = "auto",
    shapes: Optional[Sequence[Tuple[int, int]]] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention with explicit dispatch (see the module docstring).

    Args:
        value: ``[B, S, H, Dh]`` per-head values of all levels, flattened level by level.
        spatial_shapes: long ``[L, 2]``, ``(h, w)`` of every level.
        level_start_index: long ``[L]``, offset of every level in ``S``.
        sampling_locations: ``[B, Lq, H, L, P, 2]``, ``(x, y)`` normalised to ``[0, 1]``.
        attention_weights: ``[B, Lq, H, L, P]``.
        impl: ``"auto"`` (fused kernel on CUDA when available), ``"reference"``, or ``"fused"``
            (raises ``RuntimeError`` when the kernel cannot run).
        shapes: the same ``(h, w)`` as ``spatial_shapes``, as Python ints, when the caller
            knows them (the pixel decoder does): the reference path then reads no tensor
            values on the host, which spares a device-to-host copy per call and lets
            ``torch.export`` trace it (``.tolist()`` of a traced tensor is data-dependent).

    Returns:
        ``[B, Lq, H * Dh]`` in the dtype of ``value``.
    """
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if shapes is not None and len(shapes) != spatial_shapes.shape[0]:
        raise ValueError(
            f"shapes has {len(shapes)} levels, spatial_shapes {spatial_shapes.shape[0]}"
        )
    path, reason = resolve_impl(impl, value)
    _log_once(path, reason)
    if path == "fused":
        from .triton_kernels import ms_deform_attn_fused

        return ms_deform_attn_fused(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return ms_deform_attn_reference(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        shapes=shapes,
    )


def _check_shapes(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, H, Dh], got {tuple(value.shape)}")
    batch, _, heads, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be [B, Lq, H, L, P, 2], got {tuple(sampling_locations.shape)}"
        )
    b, lq, h, levels, points, _ = sampling_locations.shape
    if (b, h) != (batch, heads):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value "
            f"{tuple(value.shape)} in batch or heads"
        )
    if tuple(attention_weights.shape) != (b, lq, h, levels, points):
        raise ValueError(
            f"attention_weights must be {(b, lq, h, levels, points)}, "
            f"got {tuple(attention_weights.shape)}"
        )
    if tuple(spatial_shapes.shape) != (levels, 2) or tuple(level_start_index.shape) != (levels,):
        raise ValueError(
            f"spatial_shapes must be [{levels}, 2] and level_start_index [{levels}], got "
            f"{tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}"
        )
