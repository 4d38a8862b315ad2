"""Multi-scale deformable attention: an always-importable PyTorch reference and a fused Triton
kernel (JIT-compiled on first use on a CUDA device; no build step)."""

from .modules import MSDeformAttn
from .functional import (
    ENV_VAR,
    IMPLS,
    fused_kernel_status,
    ms_deform_attn,
    ms_deform_attn_reference,
    resolve_impl,
)

__all__ = [
    "ENV_VAR",
    "IMPLS",
    "MSDeformAttn",
    "fused_kernel_status",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "resolve_impl",
]
