"""Shapes, masking and registry of the dual-query transformer decoder."""

import pytest
import torch

from hiervl.modeling.heads import (
    TRANSFORMER_DECODER_REGISTRY,
    DualQueryTransformerDecoder,
    build_transformer_decoder,
)
from hiervl.utils.testing import tiny_config

B, C, E, N, D, DM, DT, CIN = 2, 3, 2, 4, 32, 24, 16, 40


def _decoder(num_class_rows=C * E, num_instance=N, layers=3, **kw):
    torch.manual_seed(0)
    return DualQueryTransformerDecoder(
        num_classes=C,
        text_dim=DT,
        in_channels=CIN,
        mask_dim=DM,
        num_class_rows=num_class_rows,
        num_levels=E,
        num_instance_queries=num_instance,
        hidden_dim=D,
        num_heads=4,
        ffn_dim=48,
        num_layers=layers,
        **kw,
    ).eval()


def _inputs(height=64, width=96):
    torch.manual_seed(1)
    feats = [torch.randn(B, CIN, height // s, width // s) for s in (32, 16, 8)]
    return feats, torch.randn(B, DM, height // 4, width // 4), torch.randn(B, C * E, D)


def test_output_shapes_and_deep_supervision():
    dec = _decoder()
    feats, mask_features, queries = _inputs()
    out = dec(feats, mask_features, queries)
    k = C * E + N
    assert dec.num_rows == k
    assert out["pred_logits"].shape == (B, k, C + 1)
    assert out["pred_masks"].shape == (B, k, 16, 24)
    assert out["pred_embeds"].shape == (B, k, DT)
    assert out["keep"].shape == (B, k) and bool(out["keep"].all())
    # one prediction from the input rows plus one per layer; the last is the main output
    assert len(out["aux_outputs"]) == 3
    for aux in out["aux_outputs"]:
        assert set(aux) == {"pred_logits", "pred_masks", "pred_embeds"}
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    assert all(torch.isfinite(v).all() for v in (out["pred_logits"], out["pred_masks"]))


def test_masked_rows_do_not_influence_kept_rows():
    dec = _decoder()
    feats, mask_features, queries = _inputs()
    keep = torch.ones(B, C * E, dtype=torch.bool)
    keep[:, :E] = False  # class 0 (rows 0..E-1, class-major) masked out
    out1 = dec(feats, mask_features, queries, keep)
    changed = queries.clone()
    changed[:, :E] = torch.randn(B, E, D) * 10
    out2 = dec(feats, mask_features, changed, keep)
    torch.testing.assert_close(out1["pred_logits"][:, E:], out2["pred_logits"][:, E:])
    torch.testing.assert_close(out1["pred_masks"][:, E:], out2["pred_masks"][:, E:])
    # ... while an unmasked change does propagate to the other rows
    out3 = dec(feats, mask_features, changed, torch.ones_like(keep))
    assert not torch.allclose(out1["pred_logits"][:, E:], out3["pred_logits"][:, E:])
    assert torch.equal(out1["keep"][:, : C * E], keep)


def test_all_class_rows_masked_without_instance_rows_is_finite():
    dec = _decoder(num_instance=0, layers=2)
    feats, mask_features, queries = _inputs()
    keep = torch.zeros(B, C * E, dtype=torch.bool)
    out = dec(feats, mask_features, queries, keep)
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_masks"]).all()


def test_instance_rows_only_and_backward():
    dec = _decoder(num_class_rows=0).train()
    feats, mask_features, _ = _inputs(32, 32)
    out = dec(feats, mask_features)
    assert out["pred_logits"].shape == (B, N, C + 1)
    loss = out["pred_masks"].mean() + out["pred_logits"].mean() + out["pred_embeds"].mean()
    loss = loss + sum(a["pred_masks"].mean() for a in out["aux_outputs"])
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None]
    # the last layer's cross-attention key/value see the level of layer 3; all get gradients
    assert not missing, missing


def test_bad_arguments():
    with pytest.raises(ValueError):
        _decoder(num_class_rows=0, num_instance=0)
    dec = _decoder()
    feats, mask_features, queries = _inputs()
    with pytest.raises(ValueError):
        dec(feats, mask_features, None)
    with pytest.raises(ValueError):
        dec(feats[:2], mask_features, queries)


def test_registry_build_from_config():
    cfg = tiny_config()
    assert "DualQueryTransformerDecoder" in TRANSFORMER_DECODER_REGISTRY
    dec = build_transformer_decoder(
        cfg, num_classes=8, text_dim=64, num_class_rows=16, num_levels=2
    )
    assert dec.num_rows == 16 + cfg.MODEL.HIERVL.DECODER.NUM_INSTANCE_QUERIES
    assert len(dec.layers) == cfg.MODEL.HIERVL.DECODER.NUM_LAYERS
