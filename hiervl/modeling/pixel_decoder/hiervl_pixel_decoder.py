"""``HierVLPixelDecoder``: multi-scale deformable-attention encoder with CMSAM blocks (§3.3)."""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec
from torch import nn

from hiervl.ops import MSDeformAttn

from .build import PIXEL_DECODER_REGISTRY
from .cmsam import CMSAM
from .position_encoding import PositionEmbeddingSine

__all__ = ["HierVLPixelDecoder", "MSDeformAttnEncoderLayer"]

logger = logging.getLogger(__name__)

# GroupNorm groups of every conv of the decoder (Mask2Former's choice).
_GN_GROUPS = 32


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm deformable encoder layer: MSDeformAttn self-attention over all pixel tokens,
    then an FFN, each with a residual connection and a LayerNorm."""

    def __init__(
        self,
        *,
        d_model: int,
        ffn_dim: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        impl: str,
    ):
        """
        Args:
            d_model: channels ``C`` of the pixel tokens.
            ffn_dim: hidden width of the FFN.
            dropout: dropout on the residual branches.
            n_levels, n_heads, n_points: levels ``L``, heads and sampling points of
                ``MSDeformAttn``.
            impl: ``MSDeformAttn`` implementation (``"auto"``, ``"reference"``, ``"fused"``).
        """
        super().__init__()
        self.self_attn = MSDeformAttn(
            d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points, impl=impl
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        shapes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        """
        Args:
            src: ``[B, S, C]`` pixel tokens of all levels, flattened level by level.
            pos: ``[B, S, C]`` position + level embedding.
            reference_points: ``[B, S, L, 2]`` pixel centres ``(x, y)`` in ``[0, 1]``.
            spatial_shapes: long ``[L, 2]`` ``(h, w)`` per level.
            level_start_index: long ``[L]`` offset of every level in ``S``.
            shapes: ``spatial_shapes`` as Python ints (see ``MSDeformAttn.forward``), or None.

        Returns:
            ``[B, S, C]``.
        """
        attn = self.self_attn(
            src + pos,
            reference_points,
            src,
            spatial_shapes,
            level_start_index,
            None,
            shapes=shapes,
        )
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


@PIXEL_DECODER_REGISTRY.register()
class HierVLPixelDecoder(nn.Module):
    """Mask2Former-style pixel decoder with a CMSAM block after every deformable layer.

    Steps:

    1. Every feature of ``in_features`` (strides 8 / 16 / 32) goes through a 1x1 conv +
       GroupNorm(32) to ``conv_dim``; the levels are flattened into one token sequence ordered
       coarse to fine (strides 32, 16, 8), with a sine position embedding plus a learnable
       level embedding.
    2. ``num_layers`` deformable encoder layers (MSDeformAttn self-attention + FFN); after
       each, when queries are given and CMSAM is enabled, a ``CMSAM`` block refines the queries
       from the pixel tokens and the pixel tokens from the kept queries.
    3. The tokens are unflattened into the multi-scale features (strides 32, 16, 8).
    4. FPN-style stride 4: the lateral feature (``res2``) through 1x1 conv + GroupNorm is added
       to the bilinearly upsampled stride-8 output; a 3x3 conv + GroupNorm + ReLU smooths the
       sum and a linear 1x1 conv projects it to ``mask_dim`` (no activation: the mask head takes
       dot products with it).

    Without queries, or with ``cmsam_enabled=False``, this is the plain MSDeformAttn pixel
    decoder of Mask2Former and the queries pass through unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        in_features: List[str],
        lateral_feature: str,
        conv_dim: int,
        mask_dim: int,
        query_dim: int,
        num_layers: int,
        num_heads: int,
        num_points: int,
        ffn_dim: int,
        dropout: float = 0.0,
        msda_impl: str = "auto",
        cmsam_enabled: bool = True,
        cmsam_num_heads: int = 8,
    ):
        """
        Args:
            input_shape: ``ShapeSpec`` (channels, stride) of every image-encoder feature.
            in_features: names of the deformable encoder's inputs (strides 8 / 16 / 32).
            lateral_feature: name of the stride-4 feature of the FPN lateral (``"res2"``).
            conv_dim: channels ``C`` of the decoder (divisible by 32 for GroupNorm).
            mask_dim: channels ``Dm`` of the stride-4 mask features.
            query_dim: channels ``D`` of the queries CMSAM refines.
            num_layers: deformable encoder layers (each followed by CMSAM).
            num_heads: heads of MSDeformAttn.
            num_points: sampling points per head and level of MSDeformAttn.
            ffn_dim: hidden width of the encoder FFN.
            dropout: dropout in the encoder layers and CMSAM.
            msda_impl: MSDeformAttn implementation (``"auto"``, ``"reference"``, ``"fused"``).
            cmsam_enabled: insert CMSAM blocks (off: the queries pass through unchanged).
            cmsam_num_heads: heads of the CMSAM cross-attentions.
        """
        super().__init__()
        missing = [f for f in list(in_features) + [lateral_feature] if f not in input_shape]
        if missing:
            raise ValueError(f"features {missing} not in input_shape {sorted(input_shape)}")
        if conv_dim % _GN_GROUPS != 0:
            raise ValueError(f"conv_dim ({conv_dim}) must be divisible by {_GN_GROUPS}")
        # Coarse to fine: strides 32, 16, 8 (the decoder round-robins in this order).
        self.transformer_features = sorted(in_features, key=lambda f: -input_shape[f].stride)
        self.transformer_strides = [input_shape[f].stride for f in self.transformer_features]
        self.lateral_feature = lateral_feature
        if input_shape[lateral_feature].stride >= min(self.transformer_strides):
            raise ValueError(
                f"lateral feature {lateral_feature!r} (stride "
                f"{input_shape[lateral_feature].stride}) must be finer than {in_features}"
            )
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        self.query_dim = query_dim
        self.cmsam_enabled = cmsam_enabled
        num_levels = len(self.transformer_features)

        self.input_proj = nn.ModuleList()
        for name in self.transformer_features:
            proj = nn.Sequential(
                nn.Conv2d(input_shape[name].channels, conv_dim, kernel_size=1),
                nn.GroupNorm(_GN_GROUPS, conv_dim),
            )
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=conv_dim // 2)
        self.level_embed = nn.Parameter(torch.empty(num_levels, conv_dim))
        nn.init.normal_(self.level_embed)

        self.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(
                d_model=conv_dim,
                ffn_dim=ffn_dim,
                dropout=dropout,
                n_levels=num_levels,
                n_heads=num_heads,
                n_points=num_points,
                impl=msda_impl,
            )
            for _ in range(num_layers)
        )
        if cmsam_enabled:
            self.cmsam = nn.ModuleList(
                CMSAM(
                    query_dim=query_dim,
                    pixel_dim=conv_dim,
                    num_heads=cmsam_num_heads,
                    dropout=dropout,
                )
                for _ in range(num_layers)
            )
        else:
            self.cmsam = None

        self.lateral_conv = Conv2d(
            input_shape[lateral_feature].channels,
            conv_dim,
            kernel_size=1,
            bias=False,
            norm=nn.GroupNorm(_GN_GROUPS, conv_dim),
        )
        self.output_conv = Conv2d(
            conv_dim,
            conv_dim,
            kernel_size=3,
            padding=1,
            bias=False,
            norm=nn.GroupNorm(_GN_GROUPS, conv_dim),
            activation=F.relu,
        )
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        for conv in (self.lateral_conv, self.output_conv, self.mask_features):
            weight_init.c2_xavier_fill(conv)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        pixel_cfg = cfg.MODEL.HIERVL.PIXEL_DECODER
        in_features = list(pixel_cfg.IN_FEATURES)
        # The FPN lateral is the finest encoder feature outside the deformable encoder (res2).
        candidates = [
            k for k, s in input_shape.items() if k not in in_features and s.stride is not None
        ]
        if not candidates:
            raise ValueError(
                f"input_shape {sorted(input_shape)} has no stride-4 feature besides {in_features}"
            )
        lateral_feature = min(candidates, key=lambda k: input_shape[k].stride)
        return {
            "input_shape": dict(input_shape),
            "in_features": in_features,
            "lateral_feature": lateral_feature,
            "conv_dim": pixel_cfg.CONV_DIM,
            "mask_dim": pixel_cfg.MASK_DIM,
            "query_dim": cfg.MODEL.HIERVL.DECODER.HIDDEN_DIM,
            "num_layers": pixel_cfg.NUM_LAYERS,
            "num_heads": pixel_cfg.NUM_HEADS,
            "num_points": pixel_cfg.NUM_POINTS,
            "ffn_dim": pixel_cfg.FFN_DIM,
            "dropout": pixel_cfg.DROPOUT,
            "msda_impl": pixel_cfg.MSDA_IMPL,
            "cmsam_enabled": pixel_cfg.CMSAM_ENABLED,
            "cmsam_num_heads": pixel_cfg.CMSAM_NUM_HEADS,
        }

    @staticmethod
    def _reference_points(
        shapes: List[Tuple[int, int]], num_levels: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Pixel centres ``(x, y)`` in ``[0, 1]`` of every token, ``[1, S, L, 2]`` (no padding:
        the same normalised point on every level)."""
        points = []
        for h, w in shapes:
            ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
        ref = torch.cat(points, dim=0)
        return ref[None, :, None, :].expand(1, -1, num_levels, -1)

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        queries: Optional[torch.Tensor] = None,
        query_keep: Optional[torch.Tensor] = None,
        return_attn: bool = False,
    ):
        """
        Args:
            features: ``{"res2": [B, C2, H/4, W/4], ..., "res5": [B, C5, H/32, W/32]}`` (other
                keys are ignored).
            queries: ``[B, Q, D]`` class queries to refine, or None.
            query_keep: bool ``[B, Q]``, False for rows masked out of text -> pixel attention;
                None keeps all rows.
            return_attn: also return the last CMSAM block's pixel -> text attention.

        Returns:
            ``(mask_features [B, Dm, H/4, W/4], multi_scale_features, refined_queries)``:
            ``multi_scale_features`` a list of ``[B, C, h, w]`` at strides 32, 16, 8 (the order
            of ``transformer_strides``); ``refined_queries`` ``[B, Q, D]`` (the input queries
            when CMSAM is off; None without queries). With ``return_attn`` a fourth element:
            the last layer's pixel -> text attention averaged over heads, split per level,
            a list of ``[B, Q, h, w]`` at strides 32, 16, 8 (summing to 1 over all levels), or
            None when no CMSAM block ran.
        """
        srcs, poss, shapes = [], [], []
        for lvl, name in enumerate(self.transformer_features):
            x = self.input_proj[lvl](features[name])
            pos = self.pe_layer(x) + self.level_embed[lvl].to(x.dtype)[None, :, None, None]
            shapes.append((x.shape[-2], x.shape[-1]))
            srcs.append(x.flatten(2).transpose(1, 2))
            poss.append(pos.flatten(2).transpose(1, 2))
        src = torch.cat(srcs, dim=1)
        pos = torch.cat(poss, dim=1)
        batch = src.shape[0]
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src.device)
        sizes = spatial_shapes.prod(dim=1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        reference_points = self._reference_points(
            shapes, len(shapes), src.device, src.dtype
        ).expand(batch, -1, -1, -1)

        use_cmsam = queries is not None and self.cmsam is not None
        if use_cmsam and query_keep is not None and query_keep.shape != queries.shape[:2]:
            raise ValueError(
                f"query_keep {tuple(query_keep.shape)} does not match queries "
                f"{tuple(queries.shape)}"
            )
        attn = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, shapes)
            if use_cmsam:
                queries, src, layer_attn = self.cmsam[i](
                    queries, src, pos, query_keep, return_attn=return_attn and i == last
                )
                if layer_attn is not None:
                    attn = layer_attn

        sizes_list = [h * w for h, w in shapes]
        multi_scale_features = [
            tokens.transpose(1, 2).reshape(batch, self.conv_dim, h, w)
            for tokens, (h, w) in zip(torch.split(src, sizes_list, dim=1), shapes)
        ]
        lateral = self.lateral_conv(features[self.lateral_feature])
        top = F.interpolate(
            multi_scale_features[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        mask_features = self.mask_features(self.output_conv(lateral + top))

        if not return_attn:
            return mask_features, multi_scale_features, queries
        attn_maps = None
        if attn is not None:
            num_queries = attn.shape[1]
            attn_maps = [
                a.reshape(batch, num_queries, h, w)
                for a, (h, w) in zip(torch.split(attn, sizes_list, dim=2), shapes)
            ]
        return mask_features, multi_scale_features, queries, attn_maps
