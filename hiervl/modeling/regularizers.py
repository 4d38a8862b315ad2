"""Vision-language regularisers of HierVL (METHOD.md §6, Eq. 3–8).

Prompt regularisers (Eq. 3–5) compare the learnable-prompt embeddings ``t̂`` with the fixed
template ones ``t⁰``; the masked consistency (Eq. 6) and pixel–text (Eq. 7) losses work on the
tokens of one blanked class per image (``build_masked_views``). All return finite scalars,
with a grad path to their inputs, also on empty masks. ``prompt_losses`` and
``vision_language_losses`` are the weighted terms ``HierVL.losses`` adds, with the parts they
need passed in.
"""

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AnchorHead",
    "prompt_losses",
    "vision_language_losses",
    "topology_loss",
    "anchor_loss",
    "masked_consistency_loss",
    "pixel_text_loss",
    "build_masked_views",
]


def topology_loss(t_hat: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``mean_{i,j} (⟨t̂_i, t̂_j⟩ − ⟨t⁰_i, t⁰_j⟩)²``.

    Args:
        t_hat: ``[C, Dt]`` learnable-prompt class embeddings (normalised here).
        t0: ``[C, Dt]`` fixed-template class embeddings (normalised here).

    Returns:
        scalar.
    """
    t_hat = F.normalize(t_hat.float(), dim=-1)
    t0 = F.normalize(t0.float(), dim=-1)
    return (t_hat @ t_hat.t() - t0 @ t0.t()).pow(2).mean()


class AnchorHead(nn.Module):
    """The 2-layer MLP ``h`` of Eq. 4, residual with a zero-initialised output layer, so that
    ``h`` starts as the identity (ours)."""

    def __init__(self, *, dim: int, hidden_dim: Optional[int] = None):
        """
        Args:
            dim: ``Dt``, input and output size.
            hidden_dim: hidden size (default ``dim``).
        """
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., Dt]`` → ``[..., Dt]``."""
        return x + self.fc2(F.gelu(self.fc1(x)))


def anchor_loss(
    t_hat: torch.Tensor,
    t0: torch.Tensor,
    *,
    head: Optional[nn.Module] = None,
    lam: float = 1.0,
) -> torch.Tensor:
    """Eq. 4: ``mean_c [(1 − cos(h(t̂_c), t⁰_c)) + λ · mean_{j≠c} max(0, cos(h(t̂_c), t⁰_j))]``.

    Args:
        t_hat: ``[C, Dt]`` learnable-prompt class embeddings.
        t0: ``[C, Dt]`` fixed-template class embeddings.
        head: the MLP ``h`` (``AnchorHead``); None = identity.
        lam: ``λ``, weight of the hinge on the other classes' anchors.

    Returns:
        scalar (the hinge term is 0 with a single class).
    """
    mapped = head(t_hat) if head is not None else t_hat
    cos = F.normalize(mapped.float(), dim=-1) @ F.normalize(t0.float(), dim=-1).t()  # [C, C]
    num = cos.shape[0]
    pull = 1.0 - cos.diagonal()
    if num < 2:
        return pull.mean() + cos.sum() * 0.0
    off = ~torch.eye(num, dtype=torch.bool, device=cos.device)
    push = (cos.clamp(min=0) * off).sum(dim=1) / (num - 1)
    return (pull + lam * push).mean()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [N]`` where ``mask [N]``; ``0 · anchor.sum()`` when the mask is empty."""
    count = mask.sum()
    if int(count) == 0:
        return anchor.sum() * 0.0
    return (values * mask).sum() / count


def masked_consistency_loss(
    feats_masked: torch.Tensor, feats_frozen: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Eq. 6: ``mean_{i∈M} (1 − cos(f^m_i, f⁰_i))``.

    Args:
        feats_masked: ``[B, D, h, w]`` dense features of the blanked images (trained encoder).
        feats_frozen: ``[B, D, h, w]`` dense features of the original images (frozen encoder).
        mask: ``[B, h, w]`` bool, the masked token positions ``M``.

    Returns:
        scalar; 0 with a grad path to ``feats_masked`` when ``M`` is empty.
    """
    cos = F.cosine_similarity(feats_masked.float(), feats_frozen.float().detach(), dim=1)
    return _masked_mean((1.0 - cos).flatten(), mask.flatten(), feats_masked)


def pixel_text_loss(
    feats: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.07,
    mask: Optional[torch.Tensor] = None,
    ignore_label: int = 255,
) -> torch.Tensor:
    """Eq. 7: ``−mean_{i∈M} log softmax_c(cos(f_i, t_c) / τ)[y_i]``.

    Args:
        feats: ``[B, Dt, h, w]`` dense features in the text space.
        text: ``[C, Dt]`` class text embeddings.
        labels: ``[B, h, w]`` long class ids ``y_i``; ``ignore_label`` positions are skipped.
        temperature: ``τ``.
        mask: optional ``[B, h, w]`` bool restricting the positions (``M``).
        ignore_label: label value to skip.

    Returns:
        scalar; 0 with a grad path to ``feats`` and ``text`` when no position is valid.
    """
    valid = labels != ignore_label
    if mask is not None:
        valid = valid & mask
    num_classes = text.shape[0]
    if bool((labels[valid] >= num_classes).any()) or bool((labels[valid] < 0).any()):
        raise ValueError(
            f"pixel_text_loss: labels outside [0, {num_classes}) and != {ignore_label}"
        )
    anchor = feats.sum() + text.sum()
    if not bool(valid.any()):
        return anchor * 0.0
    f = F.normalize(feats.float(), dim=1).permute(0, 2, 3, 1)[valid]  # [N, Dt]
    logits = f @ F.normalize(text.float(), dim=-1).t() / temperature
    return F.cross_entropy(logits, labels[valid])


@torch.no_grad()
def build_masked_views(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    patch_size: int,
    ignore_label: int = 255,
    fill_value: float = 0.0,
    min_token_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, torch.Tensor]:
    """Blank one present class per image for Eq. 6–7.

    Per image, a class is drawn uniformly among those covering at least one token (a token is
    covered when ``>= min_token_fraction`` of its pixels carry the class); its pixels are set to
    ``fill_value`` (0 = the mean colour for CLIP-normalised input). Images without such a class
    stay unchanged, with an empty mask.

    Args:
        images: ``[B, 3, H, W]`` float, normalised; H, W multiples of ``patch_size``.
        labels: ``[B, H, W]`` long, ground truth or pseudo-labels, ``ignore_label`` = unknown.
        patch_size: ViT patch size ``p``.
        ignore_label: label value never picked.
        fill_value: value written into the blanked pixels.
        min_token_fraction: share of a token's pixels that makes it part of ``M``.
        generator: optional RNG for the class draw.

    Returns:
        dict with ``images [B,3,H,W]`` (blanked copy), ``token_mask [B,H/p,W/p]`` bool (``M``),
        ``token_labels [B,H/p,W/p]`` long (the chosen class on ``M``, ``ignore_label``
        elsewhere), ``classes [B]`` long (chosen class, -1 if none), ``valid [B]`` bool.
    """
    b, _, height, width = images.shape
    if labels.shape != (b, height, width):
        raise ValueError(
            f"labels must be [B, H, W] = {(b, height, width)}, got {tuple(labels.shape)}"
        )
    if height % patch_size or width % patch_size:
        raise ValueError(f"image {height}x{width} is not a multiple of patch size {patch_size}")
    grid = (height // patch_size, width // patch_size)
    out_images = images.clone()
    token_mask = torch.zeros(b, *grid, dtype=torch.bool, device=images.device)
    token_labels = torch.full((b, *grid), ignore_label, dtype=torch.long, device=images.device)
    classes = torch.full((b,), -1, dtype=torch.long, device=images.device)
    for i in range(b):
        present = [int(c) for c in labels[i].unique() if int(c) != ignore_label and int(c) >= 0]
        if not present:
            continue
        cand = torch.as_tensor(present, device=labels.device)
        onehot = (labels[i].unsqueeze(0) == cand.view(-1, 1, 1)).float().unsqueeze(1)
        cover = F.avg_pool2d(onehot, patch_size).squeeze(1) >= min_token_fraction  # [K, h, w]
        usable = cover.flatten(1).any(dim=1).nonzero().flatten()
        if usable.numel() == 0:
            continue
        pick = usable[torch.randint(usable.numel(), (1,), generator=generator).item()]
        cls = int(cand[pick])
        classes[i] = cls
        token_mask[i] = cover[pick]
        token_labels[i][cover[pick]] = cls
        out_images[i][:, labels[i] == cls] = fill_value
    return {
        "images": out_images,
        "token_mask": token_mask,
        "token_labels": token_labels,
        "classes": classes,
        "valid": classes >= 0,
    }


def prompt_losses(
    t_hat: torch.Tensor,
    t0: torch.Tensor,
    *,
    topo_weight: float,
    anchor_weight: float,
    anchor_head: Optional[nn.Module] = None,
    anchor_lambda: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """Eq. 3-5, weighted: ``loss_topo`` and ``loss_anchor`` (a term whose weight is 0 is left
    out).

    Args:
        t_hat: ``[C, Dt]`` learnable-prompt class embeddings.
        t0: ``[C, Dt]`` fixed-template class embeddings.
        topo_weight / anchor_weight: weights of Eq. 3 / Eq. 4.
        anchor_head / anchor_lambda: ``h`` and ``λ`` of Eq. 4 (``anchor_loss``).
    """
    losses = {}
    if topo_weight > 0:
        losses["loss_topo"] = topo_weight * topology_loss(t_hat, t0)
    if anchor_weight > 0:
        losses["loss_anchor"] = anchor_weight * anchor_loss(
            t_hat, t0, head=anchor_head, lam=anchor_lambda
        )
    return losses


def vision_language_losses(
    image_encoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    *,
    masked_consistency_weight: float,
    pixel_text_weight: float,
    temperature: float,
    ignore_label: int = 255,
) -> Dict[str, torch.Tensor]:
    """Eq. 6-8, weighted, on images with a present class (ground truth or pseudo-label): one
    class is blanked per image (``build_masked_views``); the trained encoder's dense tokens on
    ``M`` must match the frozen encoder's on the original image (Eq. 6, ``loss_masked_
    consistency``) and classify as that class (Eq. 7, ``loss_pixel_text``). Both are 0 when
    no image has a class to blank; a term whose weight is 0 is left out.

    Args:
        image_encoder: ``CLIPImageEncoder`` (``dense_embeddings``, ``frozen_dense_embeddings``
            with Eq. 6 on, ``patch_size``).
        images: ``[B, 3, H, W]`` normalised, padded training images.
        labels: ``[B, H, W]`` long targets (``ignore_label`` = ignored).
        text: ``[C, Dt]`` class embeddings ``t̂``.
        masked_consistency_weight / pixel_text_weight: weights of Eq. 6 / Eq. 7.
        temperature: ``τ`` of Eq. 7.
        ignore_label: label of ignored pixels.
    """
    mc_on = masked_consistency_weight > 0
    pt_on = pixel_text_weight > 0
    if not (mc_on or pt_on):
        return {}
    views = build_masked_views(
        images, labels, patch_size=image_encoder.patch_size, ignore_label=ignore_label
    )
    valid = views["valid"]
    losses = {}
    if not bool(valid.any()):
        zero = images.new_zeros(())
        if mc_on:
            losses["loss_masked_consistency"] = zero
        if pt_on:
            losses["loss_pixel_text"] = zero.clone()
        return losses
    feats = image_encoder.dense_embeddings(views["images"][valid])
    mask = views["token_mask"][valid]
    if mc_on:
        frozen = image_encoder.frozen_dense_embeddings(images[valid])
        losses["loss_masked_consistency"] = masked_consistency_weight * (
            masked_consistency_loss(feats, frozen, mask)
        )
    if pt_on:
        losses["loss_pixel_text"] = pixel_text_weight * pixel_text_loss(
            feats,
            text,
            views["token_labels"][valid],
            temperature=temperature,
            mask=mask,
            ignore_label=ignore_label,
        )
    return losses
