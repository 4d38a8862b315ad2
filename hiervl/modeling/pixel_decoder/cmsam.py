"""CMSAM: Cross-Modal Spatial Alignment between text-derived queries and pixel tokens (§3.3)."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CMSAM"]


class CMSAM(nn.Module):
    """Bidirectional cross-attention between queries and pixel tokens (METHOD.md §3.3).

    Two residual cross-attentions, pre-norm, each with its own projections:

    * pixel -> text (Eq. 1): every query reads the pixels,
      ``q_k <- q_k + W_O sum_i softmax_i(W_Q q_k . W_K f_i / sqrt(d)) W_V f_i``;
    * text -> pixel: every pixel reads the (already refined) queries,
      ``f_i <- f_i + W'_O sum_k softmax_k(W'_Q f_i . W'_K q_k / sqrt(d)) W'_V q_k``,
      where rows with ``keep == False`` are masked out of the softmax over ``k``; an image that
      keeps no row has its pixels left unchanged.

    Choices (ours):

    * The pixel tokens are the pixel decoder's whole flattened multi-scale sequence (strides
      32, 16, 8) after a deformable layer, not one level: it is the tensor the layer produces,
      so CMSAM needs no extra resampling, every level is refined (the masked-attention decoder
      reads all three), and the queries see fine and coarse evidence at once. The cost stays
      linear in the token count, ``O(Q * S)`` memory for both directions (``S`` is about
      ``1.33 * HW / 64``); attention runs through ``F.scaled_dot_product_attention``, which picks
      a fused kernel on the GPU.
    * The pixel position embedding ``pos`` (sine + level embedding) is added to the pixel keys
      (pixel -> text) and to the pixel queries (text -> pixel), never to values, as in the
      deformable encoder.
    * Pre-norm: LayerNorms act on the inputs of each attention, so the updates are the literal
      residual additions of the equations (and a pixel with no kept query is unchanged).
    * Pixel -> text updates every row, kept or not: a masked row cannot reach the pixels, and
      the transformer decoder masks it again.
    * The queries go first, the pixels then read the refined queries (as in SAM's two-way
      transformer), so one block already propagates pixel evidence back to the pixels.
    """

    def __init__(
        self,
        *,
        query_dim: int,
        pixel_dim: int,
        num_heads: int,
        attn_dim: Optional[int] = None,
        dropout: float = 0.0,
    ):
        """
        Args:
            query_dim: channels ``D`` of the queries.
            pixel_dim: channels ``C`` of the pixel tokens.
            num_heads: attention heads of both directions; divides ``attn_dim``.
            attn_dim: inner width ``d_model`` of the projections ``W_Q, W_K, W_V`` (per head
                ``d = attn_dim / num_heads``); defaults to ``pixel_dim``.
            dropout: dropout on the attention weights and on both residual updates (training
                only).
        """
        super().__init__()
        attn_dim = pixel_dim if attn_dim is None else attn_dim
        if attn_dim % num_heads != 0:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by num_heads ({num_heads})")
        self.query_dim = query_dim
        self.pixel_dim = pixel_dim
        self.attn_dim = attn_dim
        self.num_heads = num_heads
        self.dropout = dropout

        # pixel -> text (Eq. 1)
        self.p2t_norm_q = nn.LayerNorm(query_dim)
        self.p2t_norm_f = nn.LayerNorm(pixel_dim)
        self.p2t_q = nn.Linear(query_dim, attn_dim)
        self.p2t_k = nn.Linear(pixel_dim, attn_dim)
        self.p2t_v = nn.Linear(pixel_dim, attn_dim)
        self.p2t_out = nn.Linear(attn_dim, query_dim)
        # text -> pixel
        self.t2p_norm_f = nn.LayerNorm(pixel_dim)
        self.t2p_norm_q = nn.LayerNorm(query_dim)
        self.t2p_q = nn.Linear(pixel_dim, attn_dim)
        self.t2p_k = nn.Linear(query_dim, attn_dim)
        self.t2p_v = nn.Linear(query_dim, attn_dim)
        self.t2p_out = nn.Linear(attn_dim, pixel_dim)
        self.drop = nn.Dropout(dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, attn_dim] -> [B, heads, N, d]
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        # [B, heads, N, d] -> [B, N, attn_dim]
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.attn_dim)

    def forward(
        self,
        queries: torch.Tensor,
        pixels: torch.Tensor,
        pos: Optional[torch.Tensor] = None,
        keep: Optional[torch.Tensor] = None,
        return_attn: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            queries: ``[B, Q, D]`` query rows.
            pixels: ``[B, S, C]`` pixel tokens.
            pos: ``[B, S, C]`` position embedding of the pixel tokens, or None.
            keep: bool ``[B, Q]``, False for rows masked out of text -> pixel; None keeps all.
            return_attn: also return the pixel -> text attention map, averaged over heads.

        Returns:
            ``(queries [B, Q, D], pixels [B, S, C], attn)`` with ``attn`` the pixel -> text
            weights ``[B, Q, S]`` (each row sums to 1) when ``return_attn``, else None.
        """
        batch, num_queries, _ = queries.shape
        attn_p = self.dropout if self.training else 0.0

        # ---- pixel -> text
        f = self.p2t_norm_f(pixels)
        fk = f if pos is None else f + pos
        q = self._heads(self.p2t_q(self.p2t_norm_q(queries)))
        k = self._heads(self.p2t_k(fk))
        v = self._heads(self.p2t_v(f))
        attn = None
        if return_attn:
            # Explicit softmax so the returned map is exactly the one that weights the values.
            weights = torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1)
            attn = weights.mean(dim=1)
            out = F.dropout(weights, p=attn_p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn_p)
        queries = queries + self.drop(self.p2t_out(self._merge(out)))

        # ---- text -> pixel
        f = self.t2p_norm_f(pixels)
        fq = f if pos is None else f + pos
        qn = self.t2p_norm_q(queries)
        q = self._heads(self.t2p_q(fq))
        k = self._heads(self.t2p_k(qn))
        v = self._heads(self.t2p_v(qn))
        if keep is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn_p)
            update = self.t2p_out(self._merge(out))
        else:
            if keep.shape != (batch, num_queries):
                raise ValueError(
                    f"keep must be [B, Q] = {(batch, num_queries)}, got {tuple(keep.shape)}"
                )
            keep = keep.to(torch.bool)
            any_kept = keep.any(dim=1)
            # An image with no kept row attends to all rows (avoids an all -inf softmax); its
            # update is zeroed below, so its pixels stay unchanged.
            mask = keep | ~any_kept[:, None]
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask[:, None, None, :], dropout_p=attn_p
            )
            update = self.t2p_out(self._merge(out))
            update = update * any_kept[:, None, None].to(update.dtype)
        pixels = pixels + self.drop(update)
        return queries, pixels, attn

    def extra_repr(self) -> str:
        return (
            f"query_dim={self.query_dim}, pixel_dim={self.pixel_dim}, attn_dim={self.attn_dim}, "
            f"num_heads={self.num_heads}"
        )
