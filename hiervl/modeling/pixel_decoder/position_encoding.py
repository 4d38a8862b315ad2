"""Sine position embedding of a feature map (DETR's normalised 2-D sine/cosine encoding)."""

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine position embedding.

    Row and column coordinates of every pixel centre are normalised to ``(0, scale]`` (so maps
    of different sizes share one coordinate frame), encoded with ``num_pos_feats`` sine/cosine
    frequencies each, and concatenated as ``[y-features, x-features]``.
    """

    def __init__(self, *, num_pos_feats: int = 128, temperature: float = 10000.0):
        """
        Args:
            num_pos_feats: channels per axis; the embedding has ``2 * num_pos_feats`` channels.
                Must be even (sine and cosine interleave).
            temperature: base of the geometric progression of frequencies.
        """
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2.0 * math.pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``[B, C, H, W]`` feature map (only its shape, device and dtype are used).

        Returns:
            ``[B, 2 * num_pos_feats, H, W]`` embedding in the dtype of ``x``.
        """
        batch, _, height, width = x.shape
        eps = 1e-6
        y = torch.arange(1, height + 1, device=x.device, dtype=torch.float32)
        xs = torch.arange(1, width + 1, device=x.device, dtype=torch.float32)
        y = (y / (height + eps) * self.scale)[:, None].expand(height, width)
        xs = (xs / (width + eps) * self.scale)[None, :].expand(height, width)
        dim_t = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = xs[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        pos_x = torch.stack([pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()], dim=-1).flatten(2)
        pos_y = torch.stack([pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()], dim=-1).flatten(2)
        pos = torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1)
        return pos[None].expand(batch, -1, -1, -1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}"
