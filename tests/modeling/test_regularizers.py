"""Regularisers (Eq. 3–7) against their formulas, empty masks, and the masked-view builder."""

import torch
import torch.nn.functional as F

from hiervl.modeling.regularizers import (
    AnchorHead,
    anchor_loss,
    build_masked_views,
    masked_consistency_loss,
    pixel_text_loss,
    prompt_losses,
    topology_loss,
    vision_language_losses,
)


def _unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def test_topology():
    t0 = _unit(5, 16)
    assert topology_loss(t0.clone(), t0).item() < 1e-10
    t_hat = _unit(5, 16).requires_grad_()
    loss = topology_loss(t_hat, t0)
    ref = ((t_hat @ t_hat.t() - t0 @ t0.t()) ** 2).mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert t_hat.grad.abs().sum() > 0
    # Invariant to a shared rotation of the learned embeddings.
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert topology_loss(t0 @ q, t0).item() < 1e-10


def test_anchor():
    t0 = torch.eye(4, 8)  # orthonormal anchors
    assert abs(anchor_loss(t0.clone(), t0, lam=1.0).item()) < 1e-7
    head = AnchorHead(dim=8)
    # h starts as the identity, so the loss is again zero at init.
    assert abs(anchor_loss(t0.clone(), t0, head=head, lam=1.0).item()) < 1e-7
    # All embeddings equal to anchor 0: pull = 1 - cos for c != 0; push hits anchor 0 only.
    t_hat = t0[:1].expand(4, -1)
    loss = anchor_loss(t_hat, t0, lam=0.5)
    pull = torch.tensor([0.0, 1.0, 1.0, 1.0])
    push = torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3])
    torch.testing.assert_close(loss, (pull + 0.5 * push).mean())
    # Negative cosines are clipped by the hinge: t̂ = [e0, -e0], t⁰ = [e0, e1] gives
    # pull = [0, 1] and push = [0, max(0, -1)] = [0, 0].
    t_hat = torch.stack([t0[0], -t0[0]])
    assert abs(anchor_loss(t_hat, t0[:2], lam=1.0).item() - 0.5) < 1e-6
    t_hat = torch.randn(4, 8, requires_grad=True)
    anchor_loss(t_hat, t0, head=head).backward()
    assert head.fc2.weight.grad.abs().sum() > 0 and t_hat.grad is not None
    assert torch.isfinite(anchor_loss(_unit(1, 8), _unit(1, 8)))


def test_masked_consistency():
    f = torch.randn(2, 8, 3, 4, requires_grad=True)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, 0] = True
    assert masked_consistency_loss(f, f.detach().clone(), mask).abs().item() < 1e-6
    assert abs(masked_consistency_loss(f, -f.detach(), mask).item() - 2.0) < 1e-5
    # Only masked positions count.
    other = f.detach().clone()
    other[:, :, 2] = -other[:, :, 2]
    assert masked_consistency_loss(f, other, mask).abs().item() < 1e-6
    empty = masked_consistency_loss(f, other, torch.zeros_like(mask))
    assert empty.item() == 0.0
    empty.backward()
    assert f.grad is not None


def test_pixel_text():
    text = torch.eye(3, 8)
    labels = torch.tensor([[[0, 1], [2, 255]]])
    feats = text[labels.clamp(max=2)].permute(0, 3, 1, 2).contiguous().requires_grad_()
    small = pixel_text_loss(feats, text, labels, temperature=0.07)
    assert small.item() < 1e-5
    shifted = torch.where(labels == 255, labels, (labels + 1) % 3)
    wrong = pixel_text_loss(feats, text, shifted)
    assert wrong.item() > 10.0
    # Matches the formula on the valid positions.
    f2 = torch.randn(1, 8, 2, 2)
    cos = F.normalize(f2, dim=1).permute(0, 2, 3, 1).reshape(-1, 8) @ text.t()
    ref = -torch.log_softmax(cos / 0.1, dim=1)[torch.arange(3), torch.tensor([0, 1, 2])].mean()
    torch.testing.assert_close(pixel_text_loss(f2, text, labels, temperature=0.1), ref)
    # Mask restricts further; an empty mask gives a zero with a grad path.
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True
    torch.testing.assert_close(
        pixel_text_loss(f2, text, labels, temperature=0.1, mask=mask),
        -torch.log_softmax(cos[1] / 0.1, dim=0)[1],
    )
    empty = pixel_text_loss(feats, text, labels, mask=torch.zeros_like(mask))
    assert empty.item() == 0.0
    empty.backward()
    assert feats.grad is not None


def test_build_masked_views():
    p = 4
    images = torch.randn(3, 3, 8, 12)
    labels = torch.full((3, 8, 12), 255, dtype=torch.long)
    labels[0, :4, :8] = 2  # covers tokens (0,0) and (0,1)
    labels[0, 4:, :] = 0
    labels[1, :2, :2] = 5  # a quarter of one token only: not usable
    out = build_masked_views(
        images, labels, patch_size=p, generator=torch.Generator().manual_seed(0)
    )
    assert out["token_mask"].shape == out["token_labels"].shape == (3, 2, 3)
    assert out["valid"].tolist() == [True, False, False]
    cls = out["classes"][0].item()
    assert cls in (0, 2)
    blanked = labels[0] == cls
    assert torch.all(out["images"][0][:, blanked] == 0)
    torch.testing.assert_close(out["images"][0][:, ~blanked], images[0][:, ~blanked])
    torch.testing.assert_close(out["images"][1:], images[1:])
    expected = F.avg_pool2d((labels[0] == cls).float()[None, None], p)[0, 0] >= 0.5
    assert torch.equal(out["token_mask"][0], expected)
    assert torch.all(out["token_labels"][0][expected] == cls)
    assert torch.all(out["token_labels"][0][~expected] == 255)
    assert not out["token_mask"][1:].any()
    # Both classes get drawn over seeds.
    seen = {
        build_masked_views(
            images, labels, patch_size=p, generator=torch.Generator().manual_seed(s)
        )["classes"][0].item()
        for s in range(20)
    }
    assert seen == {0, 2}


def test_weighted_prompt_terms_leave_out_zero_weights():
    t0, t_hat = _unit(4, 8), _unit(4, 8)
    both = prompt_losses(t_hat, t0, topo_weight=2.0, anchor_weight=0.5)
    torch.testing.assert_close(both["loss_topo"], 2.0 * topology_loss(t_hat, t0))
    torch.testing.assert_close(both["loss_anchor"], 0.5 * anchor_loss(t_hat, t0))
    assert set(prompt_losses(t_hat, t0, topo_weight=0.0, anchor_weight=1.0)) == {"loss_anchor"}


class _Encoder(torch.nn.Module):
    """Dense tokens: a 1x1 conv on 4x4 patches (trained) and its frozen copy."""

    patch_size = 4

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 4, stride=4)

    def dense_embeddings(self, images):
        return self.proj(images)

    def frozen_dense_embeddings(self, images):
        with torch.no_grad():
            return self.proj(images)


def test_weighted_vision_language_terms_and_no_class_to_blank():
    encoder, text = _Encoder(), _unit(3, 8)
    images = torch.randn(2, 3, 16, 16)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, :, 8:] = 1
    kwargs = dict(masked_consistency_weight=1.0, pixel_text_weight=0.5, temperature=0.07)
    losses = vision_language_losses(encoder, images, labels, text, **kwargs)
    assert set(losses) == {"loss_masked_consistency", "loss_pixel_text"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_pixel_text"] > 0
    ignored = torch.full_like(labels, 255)
    empty = vision_language_losses(encoder, images, ignored, text, **kwargs)
    assert {k: float(v) for k, v in empty.items()} == {
        "loss_masked_consistency": 0.0,
        "loss_pixel_text": 0.0,
    }
    off = dict(kwargs, masked_consistency_weight=0.0, pixel_text_weight=0.0)
    assert vision_language_losses(encoder, images, labels, text, **off) == {}
