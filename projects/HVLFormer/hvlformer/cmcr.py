"""Cross-view and Modal Consistency Regularisation (CMCR, METHOD §7).

For two views ``a`` (the target, detached) and ``b`` of the same images:
    * mask (every decoder layer): ``BCE(σ(m_b), σ(m_a))`` per row and pixel;
    * class (every decoder layer): Jensen–Shannon divergence between the rows' class
      distributions ``softmax(l)``;
    * attention: ``1 − cos`` between the views' pixel–text attention maps — CMSAM's
      pixel → text attention ``a_k(x)`` of each class row ``k`` over the pixels (its last block,
      strides 32/16/8 together; ours: the papers do not say which block).
Rows masked out by the relevance gate (``keep`` False in either view) take no part: every term
averages over the rows kept in both views. Pixel terms use the valid (confident, non-padded)
pixels only: the mask term averages over them, the attention term compares the maps restricted
to them. The class term averages over images weighted by ``class_weight``.
"""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "attention_consistency",
    "cmcr_layer_losses",
    "cmcr_losses",
    "decoder_layers",
    "js_divergence",
]


def decoder_layers(outputs: Dict) -> List[Dict[str, torch.Tensor]]:
    """The decoder's per-layer predictions (``aux_outputs`` then the final one)."""
    return list(outputs.get("aux_outputs", [])) + [outputs]


def js_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen–Shannon divergence of distributions ``p``, ``q`` along ``dim`` (natural log)."""
    m = (0.5 * (p + q)).clamp(min=1e-8)
    kl_pm = (p * (p.clamp(min=1e-8).log() - m.log())).sum(dim)
    kl_qm = (q * (q.clamp(min=1e-8).log() - m.log())).sum(dim)
    return 0.5 * (kl_pm + kl_qm)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` (same shape; 0 with the graph kept when none)."""
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp(min=1.0)


def _resize_valid(valid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, H, W]`` bool pixel mask at ``size`` ``(h, w)`` (nearest)."""
    return F.interpolate(valid[:, None].float(), size=tuple(size), mode="nearest")[:, 0] > 0.5


def _kept_rows(target: Dict, pred: Dict, shape: Sequence[int]) -> torch.Tensor:
    """``[B, K]`` bool: rows kept by the relevance gate in both views (all when not given)."""
    kept = torch.ones(*shape, dtype=torch.bool, device=pred["pred_logits"].device)
    for outputs in (target, pred):
        if outputs.get("keep") is not None:
            kept = kept & outputs["keep"].to(kept.device).bool()
    return kept


def cmcr_layer_losses(
    target: Dict[str, torch.Tensor],
    pred: Dict[str, torch.Tensor],
    valid: torch.Tensor,
    class_weight: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Mask and class terms of CMCR for one decoder layer.

    Args:
        target: view ``a``'s ``pred_logits`` ``[B, K, C+1]``, ``pred_masks`` ``[B, K, h, w]``
            (used detached).
        pred: view ``b``'s, same shapes.
        valid: ``[B, H, W]`` bool, pixels taking part (resized to ``h x w``, nearest).
        class_weight: ``[B]`` weight of each image in the class term (default 1).
        keep: ``[B, K]`` bool rows taking part (default: all).

    Returns:
        ``{"mask", "class"}`` scalars: the mask BCE averaged over the kept rows and the valid
        pixels, the class JS divergence averaged over the kept rows and the images.
    """
    m_a, m_b = target["pred_masks"].detach().float(), pred["pred_masks"].float()
    batch, rows = m_b.shape[:2]
    kept = (torch.ones(batch, rows, dtype=torch.bool) if keep is None else keep).to(m_b.device)
    row_w = kept.to(m_b.dtype)
    num_kept = row_w.sum(1)  # [B]
    v = _resize_valid(valid, m_b.shape[-2:]).to(m_b.device)
    bce = F.binary_cross_entropy_with_logits(m_b, m_a.sigmoid(), reduction="none")
    # masked-out rows are zeroed by where (not by a product: their BCE may be inf)
    bce = torch.where(kept[..., None, None], bce, torch.zeros((), device=bce.device))
    pixel_bce = bce.sum(1) / num_kept.clamp(min=1.0)[:, None, None]  # [B, h, w]
    p_a = target["pred_logits"].detach().float().softmax(-1)
    p_b = pred["pred_logits"].float().softmax(-1)
    js = torch.where(kept, js_divergence(p_b, p_a), torch.zeros((), device=m_b.device))
    js = js.sum(1) / num_kept.clamp(min=1.0)  # [B]
    w = torch.ones_like(js) if class_weight is None else class_weight.to(js)
    w = w * (num_kept > 0).to(w.dtype)
    return {
        "mask": _masked_mean(pixel_bce, v & (num_kept > 0)[:, None, None]),
        "class": (js * w).sum() / w.sum().clamp(min=1.0),
    }


def attention_consistency(
    target: Sequence[torch.Tensor],
    pred: Sequence[torch.Tensor],
    valid: torch.Tensor,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``1 − cos`` between two views' pixel–text attention maps, mean over the kept rows.

    Args:
        target: view ``a``'s attention maps (used detached), per level ``[B, Q, h_l, w_l]``
            (CMSAM's pixel → text attention; each row sums to 1 over all levels).
        pred: view ``b``'s, same shapes.
        valid: ``[B, H, W]`` bool, pixels taking part (resized to each level, nearest): each
            row's map is compared on these pixels only.
        keep: ``[B, Q]`` bool rows taking part (default: all).

    Returns:
        scalar; 0 (with the graph) when no row of an image with a valid pixel is kept.
    """
    batch, rows = pred[0].shape[:2]
    flat_a, flat_b, flat_v = [], [], []
    for a, b in zip(target, pred):
        v = _resize_valid(valid, b.shape[-2:]).to(b.device)
        flat_a.append(a.detach().float().flatten(2))
        flat_b.append(b.float().flatten(2))
        flat_v.append(v.flatten(1))
    a, b = torch.cat(flat_a, 2), torch.cat(flat_b, 2)  # [B, Q, S]
    v = torch.cat(flat_v, 1)[:, None].to(b.dtype)  # [B, 1, S]
    cos = F.cosine_similarity(a * v, b * v, dim=-1, eps=1e-12)  # [B, Q]
    kept = torch.ones(batch, rows, dtype=torch.bool) if keep is None else keep
    kept = kept.to(b.device) & (v.sum(-1) > 0)
    return _masked_mean(1.0 - cos, kept)


def cmcr_losses(
    target_outputs: Dict,
    pred_outputs: Dict,
    valid: torch.Tensor,
    class_weight: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """CMCR between two views' outputs (``HierVL.view_outputs`` / ``HierVL.losses(...,
    return_attn=True)``): :func:`cmcr_layer_losses` averaged over the decoder layers, and
    :func:`attention_consistency` of their ``cmsam_attn`` (``"attn"`` only when both views
    have CMSAM attention maps). Rows take part when kept in both views (``keep``)."""
    layers = list(zip(decoder_layers(target_outputs), decoder_layers(pred_outputs)))
    keep = _kept_rows(target_outputs, pred_outputs, pred_outputs["pred_logits"].shape[:2])
    total: Dict[str, torch.Tensor] = {}
    for a, b in layers:
        for key, value in cmcr_layer_losses(a, b, valid, class_weight, keep).items():
            total[key] = total.get(key, 0.0) + value / len(layers)
    attn_a, attn_b = target_outputs.get("cmsam_attn"), pred_outputs.get("cmsam_attn")
    if attn_a is not None and attn_b is not None:
        # CMSAM's rows are the class rows, the decoder's first rows
        total["attn"] = attention_consistency(attn_a, attn_b, valid, keep[:, : attn_b[0].shape[1]])
    return total
