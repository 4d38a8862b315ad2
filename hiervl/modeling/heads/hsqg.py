"""Hierarchical Semantic Query Generator (HSQG / HTQG, METHOD.md §2)."""

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

__all__ = ["HSQG"]


class HSQG(nn.Module):
    """Class queries ``q_c^e = MLP_e(t_c)`` scaled by the semantic relevance ``r_c``.

    Rows are class-major: row ``c * E + e`` is class ``c`` at level ``e``. Relevance
    ``r_c = σ(α cos(g, t_c) + β)`` (learnable scalars α, β); on labelled images the caller passes
    the ground-truth presence, which replaces ``r_c`` in the query scaling and the keep mask
    (α, β then learn from ``relevance_loss``). Rows with ``r_c < threshold`` are marked
    ``keep=False`` (masked out of attention by the consumers); every image keeps at least the
    rows of its most relevant class.
    """

    @configurable
    def __init__(
        self,
        *,
        text_dim: int,
        hidden_dim: int,
        num_levels: int = 3,
        hierarchical: bool = True,
        relevance_enabled: bool = True,
        relevance_threshold: float = 0.5,
        init_alpha: float = 10.0,
        init_beta: float = -2.0,
    ):
        """
        Args:
            text_dim: ``Dt``, size of the class text embeddings and of ``g``.
            hidden_dim: ``D``, size of the queries.
            num_levels: ``E``, hierarchy levels (one 2-layer MLP each).
            hierarchical: False → one linear projection of ``t_c`` per class (``E = 1``).
            relevance_enabled: False → ``r_c ≡ 1`` (all rows kept; no α, β).
            relevance_threshold: ``τ_rel``; rows with ``r_c < τ_rel`` get ``keep=False``.
            init_alpha: initial α.
            init_beta: initial β.
        """
        super().__init__()
        self.hierarchical = hierarchical
        self.num_levels = num_levels if hierarchical else 1
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.hidden_dim = hidden_dim
        if hierarchical:
            self.level_mlps = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(text_dim, hidden_dim),
                    nn.ReLU(inplace=True),
                    nn.Linear(hidden_dim, hidden_dim),
                )
                for _ in range(self.num_levels)
            )
        else:
            self.level_mlps = nn.ModuleList([nn.Linear(text_dim, hidden_dim)])
        self.relevance_enabled = relevance_enabled
        self.relevance_threshold = relevance_threshold
        if relevance_enabled:
            self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))
            self.beta = nn.Parameter(torch.tensor(float(init_beta)))

    @classmethod
    def from_config(cls, cfg, text_dim: int):
        """``text_dim``: ``Dt`` of the text encoder (``PromptTextEncoder.embed_dim``)."""
        hsqg_cfg = cfg.MODEL.HIERVL.HSQG
        return {
            "text_dim": text_dim,
            "hidden_dim": cfg.MODEL.HIERVL.DECODER.HIDDEN_DIM,
            "num_levels": hsqg_cfg.NUM_LEVELS,
            "hierarchical": hsqg_cfg.ENABLED,
            "relevance_enabled": hsqg_cfg.RELEVANCE_ENABLED,
            "relevance_threshold": hsqg_cfg.RELEVANCE_THRESHOLD,
            "init_alpha": hsqg_cfg.RELEVANCE_INIT_ALPHA,
            "init_beta": hsqg_cfg.RELEVANCE_INIT_BETA,
        }

    def row_class(self, num_classes: int, device=None) -> torch.Tensor:
        """Class id of every query row, class-major: ``[C * E]`` long."""
        return torch.arange(num_classes, device=device).repeat_interleave(self.num_levels)

    def forward(
        self,
        text: torch.Tensor,
        image_global: torch.Tensor,
        presence: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            text: ``[C, Dt]`` class text embeddings ``t_c``.
            image_global: ``[B, Dt]`` CLIP global image embeddings ``g`` (any norm).
            presence: ``[B, C]`` bool ground-truth class presence (labelled images) or None.

        Returns:
            dict with ``queries [B, C*E, D]`` (``r_c · q_c^e``; ``r`` = presence when given, else
            the predicted relevance), ``relevance [B, C]`` (predicted ``σ``; ones when the
            estimator is off), ``relevance_logits [B, C]`` (``α s + β``; zeros when off),
            ``keep [B, C*E]`` bool and ``row_class [C*E]`` long.
        """
        num_classes = text.shape[0]
        batch = image_global.shape[0]
        levels = torch.stack([mlp(text) for mlp in self.level_mlps], dim=1)  # [C, E, D]
        rows = levels.reshape(num_classes * self.num_levels, self.hidden_dim)
        if self.relevance_enabled:
            sim = F.normalize(image_global.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()
            logits = self.alpha * sim + self.beta
            relevance = logits.sigmoid()
        else:
            logits = text.new_zeros(batch, num_classes)
            relevance = text.new_ones(batch, num_classes)
        if presence is not None:
            if presence.shape != (batch, num_classes):
                raise ValueError(
                    f"presence must be [B, C] = {(batch, num_classes)}, got {tuple(presence.shape)}"
                )
            scale = presence.to(rows.dtype)
        else:
            scale = relevance.to(rows.dtype)
        queries = scale.repeat_interleave(self.num_levels, dim=1).unsqueeze(-1) * rows.unsqueeze(0)
        keep_class = scale >= self.relevance_threshold
        # Every image keeps at least its most relevant class (by the scale, then the prediction).
        best = (scale + 1e-3 * relevance.detach()).argmax(dim=1)
        keep_class = keep_class | F.one_hot(best, num_classes).bool()
        keep = keep_class.repeat_interleave(self.num_levels, dim=1)
        return {
            "queries": queries,
            "relevance": relevance,
            "relevance_logits": logits,
            "keep": keep,
            "row_class": self.row_class(num_classes, device=text.device),
        }

    def relevance_loss(
        self, relevance_logits: torch.Tensor, presence: torch.Tensor
    ) -> torch.Tensor:
        """BCE of the relevance estimator against ground-truth presence (labelled images).

        Args:
            relevance_logits: ``[B, C]`` from ``forward``.
            presence: ``[B, C]`` bool.

        Returns:
            scalar; 0 (with a grad path) when the estimator is disabled.
        """
        if not self.relevance_enabled:
            return relevance_logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(
            relevance_logits, presence.to(relevance_logits.dtype)
        )
