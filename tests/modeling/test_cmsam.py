"""CMSAM: the equations of METHOD.md §3.3, the keep mask, attention maps and gradients."""

import pytest
import torch

from hiervl.modeling.pixel_decoder import CMSAM

B, Q, S, D, C, HEADS = 2, 5, 30, 24, 32, 4


def _module(**kwargs) -> CMSAM:
    torch.manual_seed(0)
    m = CMSAM(query_dim=D, pixel_dim=C, num_heads=HEADS, **kwargs)
    # Non-trivial LayerNorm affines so the test sees them.
    with torch.no_grad():
        for norm in (m.p2t_norm_q, m.p2t_norm_f, m.t2p_norm_f, m.t2p_norm_q):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
    return m.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, Q, D, generator=g)
    f = torch.randn(B, S, C, generator=g)
    pos = torch.randn(B, S, C, generator=g)
    keep = torch.tensor([[True, False, True, True, False], [False, True, False, False, False]])
    return q, f, pos, keep


def _attend(q_in, k_in, v_in, wq, wk, wv, wo, heads, key_mask=None):
    """Multi-head softmax(W_Q q . W_K k / sqrt(d)) W_V v, then W_O, written out with einsum."""
    qh = wq(q_in).unflatten(-1, (heads, -1))
    kh = wk(k_in).unflatten(-1, (heads, -1))
    vh = wv(v_in).unflatten(-1, (heads, -1))
    logits = torch.einsum("bqhd,bshd->bhqs", qh, kh) / qh.shape[-1] ** 0.5
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    a = logits.softmax(-1)
    return wo(torch.einsum("bhqs,bshd->bqhd", a, vh).flatten(2)), a.mean(1)


def test_matches_equations():
    m = _module()
    q, f, pos, keep = _inputs()
    with torch.no_grad():
        q_out, f_out, attn = m(q, f, pos, keep, return_attn=True)
        # pixel -> text (Eq. 1), pre-norm; position embedding on the keys only
        fn = m.p2t_norm_f(f)
        upd, ref_attn = _attend(
            m.p2t_norm_q(q), fn + pos, fn, m.p2t_q, m.p2t_k, m.p2t_v, m.p2t_out, HEADS
        )
        q_ref = q + upd
        # text -> pixel over the kept rows of the refined queries
        fn = m.t2p_norm_f(f)
        qn = m.t2p_norm_q(q_ref)
        upd, _ = _attend(
            fn + pos, qn, qn, m.t2p_q, m.t2p_k, m.t2p_v, m.t2p_out, HEADS, key_mask=keep
        )
        f_ref = f + upd
    torch.testing.assert_close(q_out, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_out, f_ref, atol=1e-5, rtol=1e-5)
    assert attn.shape == (B, Q, S)
    torch.testing.assert_close(attn, ref_attn, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, Q))


def test_fused_and_explicit_paths_agree():
    m = _module()
    q, f, pos, keep = _inputs()
    with torch.no_grad():
        a = m(q, f, pos, keep, return_attn=False)
        b = m(q, f, pos, keep, return_attn=True)
    assert a[2] is None
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)


def test_masked_rows_do_not_reach_pixels():
    m = _module()
    q, f, pos, keep = _inputs()
    perturbed = q.clone()
    perturbed[~keep] += 10.0 * torch.randn_like(perturbed[~keep])
    with torch.no_grad():
        _, f_a, _ = m(q, f, pos, keep)
        _, f_b, _ = m(perturbed, f, pos, keep)
        kept_changed = q.clone()
        kept_changed[0, 0] += 10.0 * torch.randn(D)
        _, f_c, _ = m(kept_changed, f, pos, keep)
    torch.testing.assert_close(f_a, f_b, atol=1e-5, rtol=0)
    # A kept row does reach the pixels of its own image (and only those).
    assert (f_c[0] - f_a[0]).abs().max() > 1e-3
    torch.testing.assert_close(f_c[1], f_a[1], atol=1e-5, rtol=0)


def test_image_without_kept_rows_keeps_its_pixels():
    m = _module()
    q, f, pos, keep = _inputs()
    keep = keep.clone()
    keep[1] = False
    with torch.no_grad():
        q_out, f_out, _ = m(q, f, pos, keep)
    assert torch.isfinite(f_out).all() and torch.isfinite(q_out).all()
    torch.testing.assert_close(f_out[1], f[1], atol=0, rtol=0)
    assert (f_out[0] - f[0]).abs().max() > 1e-3
    # Queries are still refined from the pixels.
    assert (q_out[1] - q[1]).abs().max() > 1e-3


def test_keep_none_equals_all_kept():
    m = _module()
    q, f, pos, _ = _inputs()
    with torch.no_grad():
        a = m(q, f, pos, None)
        b = m(q, f, pos, torch.ones(B, Q, dtype=torch.bool))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-6)


def test_gradients_reach_everything():
    m = _module().train()
    q, f, pos, keep = _inputs()
    q.requires_grad_(True)
    f.requires_grad_(True)
    q_out, f_out, attn = m(q, f, pos, keep, return_attn=True)
    g = torch.Generator().manual_seed(2)
    loss = (q_out * torch.randn(q_out.shape, generator=g)).sum()
    loss = loss + (f_out * torch.randn(f_out.shape, generator=g)).sum()
    loss = loss + (attn * torch.randn(attn.shape, generator=g)).sum()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert q.grad.abs().sum() > 0 and f.grad.abs().sum() > 0
    # Masked rows get gradient only through pixel -> text, never from the pixel output.
    assert q.grad[~keep].abs().sum() > 0


def test_bad_keep_shape_and_heads():
    m = _module()
    q, f, pos, _ = _inputs()
    with pytest.raises(ValueError, match="keep"):
        m(q, f, pos, torch.ones(B, Q + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        CMSAM(query_dim=D, pixel_dim=30, num_heads=4)
