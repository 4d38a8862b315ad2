"""HierVLPixelDecoder: shapes, gradients, the keep mask, CMSAM off, and the registry build."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from hiervl.config import add_hiervl_config
from hiervl.modeling.pixel_decoder import (
    CMSAM,
    PIXEL_DECODER_REGISTRY,
    HierVLPixelDecoder,
    build_pixel_decoder,
)
from hiervl.ops import MSDeformAttn

B, Q, D, ENC, CONV, MASK = 2, 5, 24, 20, 32, 16
H, W = 64, 96
INPUT_SHAPE = {
    f"res{i}": ShapeSpec(channels=ENC, stride=s) for i, s in zip(range(2, 6), (4, 8, 16, 32))
}


def _decoder(**kwargs) -> HierVLPixelDecoder:
    torch.manual_seed(0)
    args = dict(
        input_shape=INPUT_SHAPE,
        in_features=["res3", "res4", "res5"],
        lateral_feature="res2",
        conv_dim=CONV,
        mask_dim=MASK,
        query_dim=D,
        num_layers=2,
        num_heads=4,
        num_points=2,
        ffn_dim=48,
        msda_impl="reference",
        cmsam_num_heads=4,
    )
    args.update(kwargs)
    return HierVLPixelDecoder(**args).eval()


def _features(height=H, width=W, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = {
        name: torch.randn(B, ENC, -(-height // s.stride), -(-width // s.stride), generator=g)
        for name, s in INPUT_SHAPE.items()
    }
    feats["global"] = torch.randn(B, 8, generator=g)  # ignored by the decoder
    queries = torch.randn(B, Q, D, generator=g)
    keep = torch.tensor([[True, False, True, True, False], [False, False, True, False, False]])
    return feats, queries, keep


@pytest.mark.parametrize("size", [(H, W), (50, 63)])
def test_output_shapes(size):
    m = _decoder()
    feats, queries, keep = _features(*size)
    with torch.no_grad():
        mask_features, multi_scale, refined, attn = m(feats, queries, keep, return_attn=True)
    h4, w4 = feats["res2"].shape[-2:]
    assert mask_features.shape == (B, MASK, h4, w4)
    assert m.transformer_strides == [32, 16, 8]
    assert [tuple(x.shape) for x in multi_scale] == [
        (B, CONV) + tuple(feats[f].shape[-2:]) for f in ("res5", "res4", "res3")
    ]
    assert refined.shape == (B, Q, D)
    assert [tuple(a.shape) for a in attn] == [(B, Q) + tuple(x.shape[-2:]) for x in multi_scale]
    torch.testing.assert_close(sum(a.sum((-2, -1)) for a in attn), torch.ones(B, Q))
    assert all(torch.isfinite(x).all() for x in [mask_features, refined, *multi_scale])


def test_uses_the_real_op_and_one_cmsam_per_layer():
    m = _decoder(num_layers=3)
    assert len(m.layers) == 3 and len(m.cmsam) == 3
    assert all(isinstance(layer.self_attn, MSDeformAttn) for layer in m.layers)
    assert all(layer.self_attn.impl == "reference" for layer in m.layers)
    assert all(isinstance(block, CMSAM) for block in m.cmsam)


def test_gradients_reach_every_parameter_and_the_queries():
    m = _decoder().train()
    feats, queries, keep = _features()
    queries.requires_grad_(True)
    mask_features, multi_scale, refined = m(feats, queries, keep)
    g = torch.Generator().manual_seed(3)
    loss = sum((x * torch.randn(x.shape, generator=g)).sum() for x in [mask_features, refined])
    loss = loss + sum((x * torch.randn(x.shape, generator=g)).sum() for x in multi_scale)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert queries.grad is not None and queries.grad[keep].abs().sum() > 0
    # The pixel outputs alone pull on the kept rows only.
    queries.grad = None
    mask_features, multi_scale, _ = m(feats, queries, keep)
    (mask_features.sum() + sum(x.sum() for x in multi_scale)).backward()
    assert queries.grad[keep].abs().sum() > 0
    assert queries.grad[~keep].abs().max() == 0


def test_masked_rows_do_not_influence_pixels():
    m = _decoder()
    feats, queries, keep = _features()
    perturbed = queries.clone()
    perturbed[~keep] = 10.0 * torch.randn_like(perturbed[~keep])
    with torch.no_grad():
        mf_a, ms_a, q_a = m(feats, queries, keep)
        mf_b, ms_b, q_b = m(feats, perturbed, keep)
        changed = queries.clone()
        changed[1, 2] = 10.0 * torch.randn(D)  # the one kept row of image 1
        mf_c, _, _ = m(feats, changed, keep)
    torch.testing.assert_close(mf_a, mf_b, atol=1e-5, rtol=0)
    for a, b in zip(ms_a, ms_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(q_a[keep], q_b[keep], atol=1e-5, rtol=0)
    assert (mf_c[1] - mf_a[1]).abs().max() > 1e-3
    torch.testing.assert_close(mf_c[0], mf_a[0], atol=1e-5, rtol=0)


def test_cmsam_disabled_or_no_queries_is_a_plain_pixel_decoder():
    feats, queries, keep = _features()
    off = _decoder(cmsam_enabled=False)
    assert off.cmsam is None
    assert not any("cmsam" in name for name, _ in off.named_parameters())
    with torch.no_grad():
        mf, ms, refined, attn = off(feats, queries, keep, return_attn=True)
        mf_none, ms_none, none = off(feats)
    assert refined is queries and attn is None and none is None
    torch.testing.assert_close(mf, mf_none)
    # With CMSAM on, no queries means no CMSAM block runs: same pixels as CMSAM off.
    on = _decoder()
    on.load_state_dict(off.state_dict(), strict=False)
    with torch.no_grad():
        mf_on, ms_on, none_on = on(feats)
        mf_q, _, refined_q = on(feats, queries, keep)
    assert none_on is None
    torch.testing.assert_close(mf_on, mf_none)
    for a, b in zip(ms_on, ms_none):
        torch.testing.assert_close(a, b)
    assert (mf_q - mf_on).abs().max() > 1e-3 and (refined_q - queries).abs().max() > 1e-3


def test_registry_build_from_config():
    assert PIXEL_DECODER_REGISTRY.get("HierVLPixelDecoder") is HierVLPixelDecoder
    cfg = get_cfg()
    add_hiervl_config(cfg)
    pd = cfg.MODEL.HIERVL.PIXEL_DECODER
    pd.CONV_DIM, pd.MASK_DIM, pd.NUM_LAYERS, pd.NUM_HEADS = CONV, MASK, 2, 4
    pd.NUM_POINTS, pd.FFN_DIM, pd.CMSAM_NUM_HEADS, pd.MSDA_IMPL = 2, 48, 4, "reference"
    cfg.MODEL.HIERVL.DECODER.HIDDEN_DIM = D
    m = build_pixel_decoder(cfg, INPUT_SHAPE)
    assert isinstance(m, HierVLPixelDecoder)
    assert m.lateral_feature == "res2" and m.transformer_features == ["res5", "res4", "res3"]
    assert len(m.layers) == 2 and m.layers[0].self_attn.impl == "reference"
    assert m.cmsam[0].num_heads == 4 and m.cmsam[0].query_dim == D
    feats, queries, keep = _features()
    with torch.no_grad():
        mf, ms, refined = m(feats, queries, keep)
    assert mf.shape == (B, MASK, H // 4, W // 4) and refined.shape == (B, Q, D)
    pd.CMSAM_ENABLED = False
    assert build_pixel_decoder(cfg, INPUT_SHAPE).cmsam is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        _decoder(conv_dim=48)
    with pytest.raises(ValueError, match="not in input_shape"):
        _decoder(in_features=["res3", "res4", "res6"])
    m = _decoder()
    feats, queries, _ = _features()
    with pytest.raises(ValueError, match="query_keep"):
        m(feats, queries, torch.ones(B, Q + 1, dtype=torch.bool))
