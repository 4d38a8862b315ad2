"""Cross-view and Modal Consistency Regularisation (CMCR, METHOD §7), layer by layer.

For two views ``a`` (the target, detached) and ``b`` of the same images, at every decoder layer:
    * mask: ``BCE(σ(m_b), σ(m_a))`` per row and pixel;
    * class: Jensen–Shannon divergence between the rows' class distributions ``softmax(l)``;
    * attention (ours: the pixel→row assignment ``softmax_k(m_k(x))`` stands for the pixel–text
      attention map): ``1 − cos`` between the views' assignments at each pixel.
Pixel terms average over valid (confident, non-padded) pixels, the class term over images
weighted by ``class_weight``.
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

__all__ = ["decoder_layers", "js_divergence", "cmcr_layer_losses", "cmcr_losses"]


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
    """Mean of ``values`` ``[B, h, w]`` over ``valid`` (0 with the graph kept when none)."""
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp(min=1.0)


def cmcr_layer_losses(
    target: Dict[str, torch.Tensor],
    pred: Dict[str, torch.Tensor],
    valid: torch.Tensor,
    class_weight: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """CMCR terms of one decoder layer.

    Args:
        target: view ``a``'s ``pred_logits`` ``[B, K, C+1]``, ``pred_masks`` ``[B, K, h, w]``
            (used detached).
        pred: view ``b``'s, same shapes.
        valid: ``[B, H, W]`` bool, pixels taking part (resized to ``h x w``, nearest).
        class_weight: ``[B]`` weight of each image in the class term (default 1).

    Returns:
        ``{"mask", "class", "attn"}`` scalars.
    """
    m_a, m_b = target["pred_masks"].detach().float(), pred["pred_masks"].float()
    v = F.interpolate(valid[:, None].float(), size=m_b.shape[-2:], mode="nearest")[:, 0] > 0.5
    bce = F.binary_cross_entropy_with_logits(m_b, m_a.sigmoid(), reduction="none").mean(1)
    attn = 1.0 - F.cosine_similarity(m_b.softmax(1), m_a.softmax(1), dim=1)
    p_a = target["pred_logits"].detach().float().softmax(-1)
    p_b = pred["pred_logits"].float().softmax(-1)
    js = js_divergence(p_b, p_a).mean(1)  # [B]
    w = torch.ones_like(js) if class_weight is None else class_weight.to(js)
    return {
        "mask": _masked_mean(bce, v),
        "class": (js * w).sum() / w.sum().clamp(min=1.0),
        "attn": _masked_mean(attn, v),
    }


def cmcr_losses(
    target_outputs: Dict,
    pred_outputs: Dict,
    valid: torch.Tensor,
    class_weight: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """:func:`cmcr_layer_losses` averaged over the decoder layers of two views' outputs."""
    layers = list(zip(decoder_layers(target_outputs), decoder_layers(pred_outputs)))
    total: Dict[str, torch.Tensor] = {}
    for a, b in layers:
        for key, value in cmcr_layer_losses(a, b, valid, class_weight).items():
            total[key] = total.get(key, 0.0) + value / len(layers)
    return total
