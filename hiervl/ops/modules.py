"""``MSDeformAttn``: the Deformable-DETR multi-scale deformable attention layer."""

import logging
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .functional import IMPLS, ms_deform_attn

__all__ = ["MSDeformAttn"]

logger = logging.getLogger(__name__)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., Deformable DETR, 2021).

    Every query predicts ``n_points`` sampling offsets per head and level around its reference
    point, plus softmax-normalised attention weights over the ``n_levels * n_points`` samples;
    the output is the weighted sum of the bilinearly sampled (projected) values.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
        impl: str = "auto",
    ):
        """
        Args:
            d_model: channels ``C`` of queries, values and output; divisible by ``n_heads``.
            n_levels: number of feature levels ``L``.
            n_heads: number of attention heads ``H``.
            n_points: sampling points ``P`` per head and level.
            impl: ``"auto"``, ``"reference"`` or ``"fused"`` (see ``hiervl.ops.functional``).
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1) != 0:
            logger.warning(
                "MSDeformAttn: head dim %d is not a power of 2; the fused kernel pads it.",
                head_dim,
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.impl = impl

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start at zero weight; the bias spreads head i's points along the direction
        # 2*pi*i/H, point k at distance k+1 (in pixels of the level), as in Deformable DETR.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: Optional[torch.Tensor] = None,
        *,
        shapes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: ``[B, Lq, C]``.
            reference_points: ``[B, Lq, L, 2]`` points ``(x, y)`` in ``[0, 1]`` (offsets are in
                pixels of each level), or ``[B, Lq, L, 4]`` boxes ``(cx, cy, w, h)`` (offsets are
                relative to half the box size, divided by ``n_points``).
            input_flatten: ``[B, S, C]`` features of all levels, flattened level by level.
            input_spatial_shapes: long ``[L, 2]``, ``(h, w)`` per level.
            input_level_start_index: long ``[L]``, offset of every level in ``S``.
            input_padding_mask: bool ``[B, S]``, True at padded positions (their values are
                zeroed), or None.
            shapes: the same ``(h, w)`` per level as Python ints, when the caller knows them:
                no tensor value is then read on the host (``ms_deform_attn``), which lets
                ``torch.export`` trace the layer.

        Returns:
            ``[B, Lq, C]``.
        """
        batch, num_queries, _ = query.shape
        _, num_values, _ = input_flatten.shape
        if shapes is not None:
            if sum(int(h) * int(w) for h, w in shapes) != num_values:
                raise ValueError(f"shapes {list(shapes)} do not sum to S={num_values}")
        elif int((input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum()) != num_values:
            raise ValueError(
                f"input_spatial_shapes {input_spatial_shapes.tolist()} do not sum to S={num_values}"
            )
        if input_spatial_shapes.shape[0] != self.n_levels:
            raise ValueError(
                f"expected {self.n_levels} levels, got {input_spatial_shapes.shape[0]} shapes"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.n_heads, self.d_model // self.n_heads)

        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points
        )

        if reference_points.shape[-1] == 2:
            # (w, h) per level: offsets are in pixels of that level.
            normalizer = torch.stack([input_spatial_shapes[:, 1], input_spatial_shapes[:, 0]], -1)
            normalizer = normalizer.to(offsets.dtype)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                "reference_points must be [B, Lq, L, 2] or [B, Lq, L, 4], "
                f"got {tuple(reference_points.shape)}"
            )
        out = ms_deform_attn(
            value,
            input_spatial_shapes,
            input_level_start_index,
            locations,
            weights,
            impl=self.impl,
            shapes=shapes,
        )
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
            f"n_points={self.n_points}, impl={self.impl!r}"
        )
