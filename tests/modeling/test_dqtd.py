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


def _predictions(out):
    """The input rows' prediction, then one per layer (the last one is the main output)."""
    return out["aux_outputs"] + [{k: out[k] for k in ("pred_logits", "pred_masks")}]


def test_masked_attention_follows_the_previous_mask():
    # One instance row and no class rows: self-attention has nothing to mix in, so the row's
    # output after layer 1 depends only on the stride-32 keys its cross-attention may see.
    dec = _decoder(num_class_rows=0, num_instance=1, layers=1)
    height, width = 64, 128  # stride-32 grid 2 x 4: columns 0-1 are the left half
    torch.manual_seed(2)
    feats = [torch.randn(B, CIN, height // s, width // s) for s in (32, 16, 8)]
    with torch.no_grad():
        kernel = dec.mask_embed(dec.decoder_norm(dec.query_feat.weight))[0]  # [Dm]
    for region_is_left in (True, False):
        # P = ±kernel: the input row's mask logit is +3 on its region and -3 elsewhere.
        sign = -torch.ones(height // 4, width // 4)
        sign[:, : width // 8] = 1.0
        if not region_is_left:
            sign = -sign
        mask_features = (kernel[:, None, None] * sign * 3 / kernel.pow(2).sum())[None].repeat(
            B, 1, 1, 1
        )
        out = dec(feats, mask_features)
        assert bool(((out["aux_outputs"][0]["pred_masks"] > 0) == (sign > 0)).all())
        inside, outside = [f.clone() for f in feats], [f.clone() for f in feats]
        left, right = (slice(0, 2), slice(2, 4))
        region, rest = (left, right) if region_is_left else (right, left)
        inside[0][..., region] += 5 * torch.randn_like(inside[0][..., region])
        outside[0][..., rest] += 5 * torch.randn_like(outside[0][..., rest])
        same = dec(outside, mask_features)
        torch.testing.assert_close(same["pred_logits"], out["pred_logits"])
        torch.testing.assert_close(same["pred_masks"], out["pred_masks"])
        moved = dec(inside, mask_features)
        assert not torch.allclose(moved["pred_logits"], out["pred_logits"], atol=1e-4)


def test_layers_read_the_levels_round_robin_32_16_8():
    dec = _decoder(layers=4)
    feats, mask_features, queries = _inputs()  # 64 x 96: grids 2x3, 4x6, 8x12 (strides 32/16/8)
    keys = []
    for layer in dec.layers:
        layer.cross_attn.register_forward_hook(lambda m, args, out: keys.append(args[1].shape[1]))
    out = dec(feats, mask_features, queries)
    assert keys == [2 * 3, 4 * 6, 8 * 12, 2 * 3]
    # ... and a change of one level reaches the predictions first after the layer that reads it.
    base = _predictions(out)
    for level, first_layer in ((0, 0), (1, 1), (2, 2)):
        changed = [f.clone() for f in feats]
        changed[level] += torch.randn_like(changed[level])
        preds = _predictions(dec(changed, mask_features, queries))
        for i, (p, q) in enumerate(zip(base, preds)):
            # predictions[i + 1] is the output of layer i
            same = torch.allclose(p["pred_logits"], q["pred_logits"])
            assert same == (i <= first_layer), (level, i)


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
        cfg, num_classes=8, text_dim=64, num_class_rows=16, num_levels=2, predict_embeds=False
    )
    assert dec.text_proj is None
    assert dec.num_rows == 16 + cfg.MODEL.HIERVL.DECODER.NUM_INSTANCE_QUERIES
    assert len(dec.layers) == cfg.MODEL.HIERVL.DECODER.NUM_LAYERS


def test_checkpoints_with_the_old_mask_mlp_keys_still_load(tmp_path):
    """``mask_embed`` is torchvision's MLP (``mask_embed.0/3/6``); checkpoints written with our
    old MLP (``mask_embed.layers.0/1/2``) load into it, through the strict checkpointer too."""
    from torch import nn

    from hiervl.utils.checkpoint import StrictCheckpointer

    trained = _decoder()
    old = {}
    for key, value in trained.state_dict().items():
        if key.startswith("mask_embed."):
            index, rest = key[len("mask_embed.") :].split(".", 1)
            key = f"mask_embed.layers.{int(index) // 3}.{rest}"
        old[key] = value
    assert "mask_embed.layers.2.weight" in old and "mask_embed.6.weight" not in old
    fresh = _decoder()
    torch.nn.init.zeros_(fresh.mask_embed[0].weight)
    fresh.load_state_dict(old)  # strict
    feats, mask_features, queries = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(feats, mask_features, queries)["pred_masks"],
            trained(feats, mask_features, queries)["pred_masks"],
        )
    # through the checkpointer (a model that holds the decoder, as HierVL does)
    torch.save({"model": {f"decoder.{k}": v for k, v in old.items()}}, tmp_path / "old.pth")
    holder = nn.Module()
    holder.decoder = _decoder(layers=3)
    torch.nn.init.zeros_(holder.decoder.mask_embed[6].bias)
    StrictCheckpointer(holder).load(str(tmp_path / "old.pth"))
    torch.testing.assert_close(holder.decoder.mask_embed[6].bias, trained.mask_embed[6].bias)
