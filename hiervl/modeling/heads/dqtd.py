"""Dual-Query Transformer Decoder — DQTD (METHOD.md §4-5).

The decoder input is ``Z0 = [class rows ; instance rows]``: ``C·E`` class rows (HSQG queries
refined by CMSAM) and ``N`` learnable instance rows. Each of the ``L`` Mask2Former layers runs
masked cross-attention to one level of the multi-scale pixel features (round robin over strides
32/16/8), self-attention over the rows (rows with ``keep=False`` are hidden as keys), and an FFN.
After the input and after every layer, a shared head predicts for each row ``k``: class logits
``l_k = W_cls z_k`` over ``C+1`` classes, a dynamic mask ``m_k = MLP(z_k) · P`` against the
stride-4 per-pixel embedding ``P``, and a projection ``phi(z_k)`` into CLIP's text space (Eq. 2).
"""

import re
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn
from torchvision.ops import MLP

from ..pixel_decoder.position_encoding import PositionEmbeddingSine

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
    "DualQueryTransformerDecoder",
]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for the transformer decoders of HierVL: they turn queries and pixel features into
per-row class logits, mask logits and text-space embeddings. Called with
``(cfg, *, num_classes, text_dim, num_class_rows, num_levels, predict_embeds)``.
"""


def build_transformer_decoder(
    cfg,
    *,
    num_classes: int,
    text_dim: int,
    num_class_rows: int,
    num_levels: int,
    predict_embeds: bool,
) -> nn.Module:
    """Build the decoder named by ``cfg.MODEL.HIERVL.DECODER.NAME``.

    Args:
        cfg: config.
        num_classes: ``C``.
        text_dim: ``Dt``, the CLIP embedding size of ``pred_embeds``.
        num_class_rows: ``C·E``, rows coming from the HSQG / CMSAM (0 when class queries are off).
        num_levels: ``E``, hierarchy levels of the class rows (rows ordered level-major per
            class: row ``c*E + e``).
        predict_embeds: output ``pred_embeds`` (the META_ARCH decides it: the alignment loss
            of Eq. 2 is on).
    """
    name = cfg.MODEL.HIERVL.DECODER.NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(
        cfg,
        num_classes=num_classes,
        text_dim=text_dim,
        num_class_rows=num_class_rows,
        num_levels=num_levels,
        predict_embeds=predict_embeds,
    )


# Checkpoints written before the mask MLP was torchvision's: ``mask_embed.layers.<i>.`` holds
# what is now ``mask_embed.<3 i>.`` (torchvision's MLP is Linear, ReLU, Dropout per layer).
_OLD_MASK_EMBED_KEY = re.compile(r"mask_embed\.layers\.(\d+)\.")


class _Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention`` (batch-first)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            query: ``[B, Lq, D]``; key / value: ``[B, Lk, D]``.
            allowed: ``[B, Lq, Lk]`` bool (True = may attend) or None.

        Returns:
            ``[B, Lq, D]``.
        """
        batch, len_q, dim = query.shape
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, dim // heads).transpose(1, 2)

        attn_mask = None if allowed is None else allowed[:, None]
        out = F.scaled_dot_product_attention(
            split(self.q_proj(query)),
            split(self.k_proj(key)),
            split(self.v_proj(value)),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, len_q, dim))


class _DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each with residual and LayerNorm."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.cross_attn = _Attention(dim, num_heads, dropout)
        self.self_attn = _Attention(dim, num_heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def _block(self, i: int, x: torch.Tensor, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(self.norms[i](x)))
        return self.norms[i](x + self.dropout(fn(x)))

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        cross_allowed: torch.Tensor,
        self_allowed: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            x: ``[B, K, D]`` rows; query_pos: ``[B, K, D]``.
            memory: ``[B, HW, D]`` one pixel level; memory_pos: ``[B, HW, D]``.
            cross_allowed: ``[B, K, HW]`` bool; self_allowed: ``[B, K, K]`` bool.
        """
        x = self._block(
            0,
            x,
            lambda h: self.cross_attn(h + query_pos, memory + memory_pos, memory, cross_allowed),
        )
        x = self._block(
            1, x, lambda h: self.self_attn(h + query_pos, h + query_pos, h, self_allowed)
        )
        return self._block(2, x, self.ffn)


@TRANSFORMER_DECODER_REGISTRY.register()
class DualQueryTransformerDecoder(nn.Module):
    """Class rows + learnable instance rows through masked-attention layers (deep supervision)."""

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        text_dim: int,
        in_channels: int,
        mask_dim: int,
        num_class_rows: int,
        num_levels: int,
        num_instance_queries: int = 100,
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_layers: int = 9,
        dropout: float = 0.0,
        pre_norm: bool = False,
        num_feature_levels: int = 3,
        predict_embeds: bool = True,
    ):
        """
        Args:
            num_classes: ``C``; class logits have ``C+1`` entries (last = no object).
            text_dim: ``Dt`` of ``pred_embeds``.
            in_channels: channels of the multi-scale pixel features (projected to hidden_dim).
            mask_dim: channels ``Dm`` of the per-pixel embedding ``P`` (mask_features).
            num_class_rows: ``C·E`` class rows expected from CMSAM (0 = no class rows).
            num_levels: ``E``; class row ``c*E + e`` gets the level embedding ``e``.
            num_instance_queries: ``N`` learnable instance rows.
            hidden_dim: row size ``D`` (= the HSQG query size).
            num_heads: attention heads.
            ffn_dim: hidden size of the FFN.
            num_layers: decoder layers ``L``.
            dropout: dropout in attention and FFN.
            pre_norm: pre-norm instead of post-norm layers.
            num_feature_levels: pixel-feature levels visited round robin (3: strides 32/16/8).
            predict_embeds: build the projection ``phi`` and output ``pred_embeds`` (off when
                the alignment loss is off, so that no parameter is left without a gradient).
        """
        super().__init__()
        if num_class_rows + num_instance_queries == 0:
            raise ValueError("the decoder needs class rows or instance rows")
        if num_class_rows and num_class_rows % num_levels != 0:
            raise ValueError(f"{num_class_rows} class rows are not a multiple of E={num_levels}")
        self.num_classes = num_classes
        self.num_class_rows = num_class_rows
        self.num_levels = num_levels
        self.num_instance_queries = num_instance_queries
        self.num_layers = num_layers
        self.num_feature_levels = num_feature_levels

        self.pe_layer = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(num_feature_levels)
        )
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)
        if num_instance_queries > 0:
            self.query_feat = nn.Embedding(num_instance_queries, hidden_dim)
            self.query_pos = nn.Embedding(num_instance_queries, hidden_dim)
        if num_class_rows > 0:
            self.class_level_pos = nn.Embedding(num_levels, hidden_dim)
        self.layers = nn.ModuleList(
            _DecoderLayer(hidden_dim, num_heads, ffn_dim, dropout, pre_norm)
            for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        # m_k's kernel: 3 linear layers with ReLU between (the last without), no dropout.
        self.mask_embed = MLP(hidden_dim, [hidden_dim, hidden_dim, mask_dim])
        self.text_proj = nn.Linear(hidden_dim, text_dim) if predict_embeds else None

    @classmethod
    def from_config(
        cls,
        cfg,
        *,
        num_classes: int,
        text_dim: int,
        num_class_rows: int,
        num_levels: int,
        predict_embeds: bool = True,
    ) -> dict:
        decoder_cfg = cfg.MODEL.HIERVL.DECODER
        pixel_cfg = cfg.MODEL.HIERVL.PIXEL_DECODER
        return {
            "num_classes": num_classes,
            "text_dim": text_dim,
            "in_channels": pixel_cfg.CONV_DIM,
            "mask_dim": pixel_cfg.MASK_DIM,
            "num_class_rows": num_class_rows,
            "num_levels": num_levels,
            "num_instance_queries": decoder_cfg.NUM_INSTANCE_QUERIES,
            "hidden_dim": decoder_cfg.HIDDEN_DIM,
            "num_heads": decoder_cfg.NUM_HEADS,
            "ffn_dim": decoder_cfg.FFN_DIM,
            "num_layers": decoder_cfg.NUM_LAYERS,
            "dropout": decoder_cfg.DROPOUT,
            "pre_norm": decoder_cfg.PRE_NORM,
            "predict_embeds": predict_embeds,
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also load checkpoints written before ``mask_embed`` was torchvision's MLP: their
        ``mask_embed.layers.<i>`` keys are renamed to ``mask_embed.<3 i>``."""
        for key in [k for k in state_dict if k.startswith(prefix + "mask_embed.layers.")]:
            rest = key[len(prefix) :]
            new = _OLD_MASK_EMBED_KEY.sub(lambda m: f"mask_embed.{3 * int(m.group(1))}.", rest)
            state_dict[prefix + new] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_rows(self) -> int:
        """``K = C·E + N``."""
        return self.num_class_rows + self.num_instance_queries

    def forward(
        self,
        multi_scale_features: List[torch.Tensor],
        mask_features: torch.Tensor,
        class_queries: Optional[torch.Tensor] = None,
        keep: Optional[torch.Tensor] = None,
    ) -> Dict:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps ``[B, Cin, h_l, w_l]`` (strides
                32, 16, 8), visited round robin.
            mask_features: ``[B, Dm, H/4, W/4]`` per-pixel embedding ``P``.
            class_queries: ``[B, C'·E, D]`` class rows (required iff ``num_class_rows > 0``;
                ``C'`` may differ from the training ``C``: class names at inference).
            keep: ``[B, C·E]`` bool, class rows allowed in attention (default all).

        Returns:
            ``{"pred_logits": [B,K,C+1], "pred_masks": [B,K,H/4,W/4], "pred_embeds": [B,K,Dt],
            "keep": [B,K] bool, "aux_outputs": [dicts of the first three keys, one per earlier
            prediction (input rows and layers 1..L-1)]}``; without ``predict_embeds`` there is
            no ``pred_embeds``.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature levels, "
                f"got {len(multi_scale_features)}"
            )
        batch = mask_features.shape[0]
        rows, pos, row_keep = [], [], []
        if self.num_class_rows > 0:
            # Any number of classes C' (class names other than the training ones at inference):
            # the rows' weights are shared over classes, only the level embedding is per row.
            num_rows = 0 if class_queries is None else class_queries.shape[1]
            if num_rows == 0 or num_rows % self.num_levels != 0:
                got = None if class_queries is None else tuple(class_queries.shape)
                raise ValueError(
                    f"expected class queries [B, C'*{self.num_levels}, D] (training: "
                    f"{self.num_class_rows} rows), got {got}"
                )
            if keep is None:
                keep = torch.ones(
                    class_queries.shape[:2], dtype=torch.bool, device=mask_features.device
                )
            num_classes_rows = num_rows // self.num_levels
            level_pos = self.class_level_pos.weight.repeat(num_classes_rows, 1)
            rows.append(class_queries)
            pos.append(level_pos[None].expand(batch, -1, -1))
            row_keep.append(keep.bool())
        if self.num_instance_queries > 0:
            rows.append(self.query_feat.weight[None].expand(batch, -1, -1))
            pos.append(self.query_pos.weight[None].expand(batch, -1, -1))
            row_keep.append(
                torch.ones(
                    batch, self.num_instance_queries, dtype=torch.bool, device=mask_features.device
                )
            )
        x = torch.cat(rows, dim=1)
        query_pos = torch.cat(pos, dim=1).to(x.dtype)
        row_keep = torch.cat(row_keep, dim=1)
        num_rows = x.shape[1]
        eye = torch.eye(num_rows, dtype=torch.bool, device=x.device)
        self_allowed = (row_keep[:, None, :] | eye[None]).expand(batch, -1, -1)

        memories, memory_pos, sizes = [], [], []
        for i, feature in enumerate(multi_scale_features):
            sizes.append(feature.shape[-2:])
            memory_pos.append(self.pe_layer(feature).flatten(2).transpose(1, 2))
            projected = self.input_proj[i](feature).flatten(2)
            projected = projected + self.level_embed.weight[i][None, :, None]
            memories.append(projected.transpose(1, 2))

        predictions = [self._predict(x, mask_features, sizes[0])]
        for i, layer in enumerate(self.layers):
            level = i % self.num_feature_levels
            cross_allowed = predictions[-1].pop("attn_allowed")
            x = layer(x, query_pos, memories[level], memory_pos[level], cross_allowed, self_allowed)
            next_size = sizes[(i + 1) % self.num_feature_levels]
            predictions.append(self._predict(x, mask_features, next_size))
        predictions[-1].pop("attn_allowed")
        out = predictions[-1]
        out["keep"] = row_keep
        out["aux_outputs"] = predictions[:-1]
        return out

    def _predict(self, x: torch.Tensor, mask_features: torch.Tensor, attn_size) -> Dict:
        """Heads on the (normed) rows, and the cross-attention mask of the next layer: a row
        attends where its predicted mask, resized to that layer's level, is > 0.5 (everywhere
        when it is empty)."""
        z = self.decoder_norm(x)
        logits = self.class_embed(z)
        kernels = self.mask_embed(z)
        masks = torch.einsum("bkc,bchw->bkhw", kernels, mask_features)
        with torch.no_grad():
            resized = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False)
            allowed = resized.flatten(2).sigmoid() >= 0.5
            allowed = allowed | ~allowed.any(-1, keepdim=True)
        out = {"pred_logits": logits, "pred_masks": masks, "attn_allowed": allowed}
        if self.text_proj is not None:
            out["pred_embeds"] = self.text_proj(z)
        return out
