"""CLIP factory and image encoder: shapes, position-embedding interpolation, frozen copy."""

import pytest
import torch
from detectron2.config import get_cfg

from hiervl import add_hiervl_config
from hiervl.modeling.clip import CLIPImageEncoder, build_open_clip

TINY = "HierVL-Tiny-ViT"


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return build_open_clip(TINY, "", 64)


def _encoder(clip_model, frozen_copy=False):
    return CLIPImageEncoder(
        visual=clip_model.visual, feature_layers=[0, 1, 2, 3], conv_dim=32, frozen_copy=frozen_copy
    )


def test_random_init_and_missing_checkpoint(tmp_path):
    model = build_open_clip(TINY, "", 64)
    assert tuple(model.visual.grid_size) == (4, 4)
    missing = tmp_path / "nope" / "clip.pt"
    with pytest.raises(FileNotFoundError, match="nope/clip.pt"):
        build_open_clip(TINY, str(missing), 64)
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        build_open_clip(TINY, "weights.safetensors", 64)


def test_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    src = build_open_clip(TINY, "", 64)
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_open_clip(TINY, str(path), 64)
    ref = src.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # A checkpoint built for 64 px loads into a 96 px model: open_clip resizes the grid.
    bigger = build_open_clip(TINY, str(path), 96)
    assert bigger.visual.positional_embedding.shape[0] == 6 * 6 + 1


def test_forward_shapes_and_output_shape(tiny_clip):
    enc = _encoder(tiny_clip)
    out = enc(torch.randn(2, 3, 64, 64))
    spec = enc.output_shape()
    for name, stride in [("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)]:
        assert spec[name].stride == stride and spec[name].channels == 32
        assert out[name].shape == (2, 32, 64 // stride, 64 // stride)
    assert out["global"].shape == (2, 64)
    # At the built size, "global" is exactly open_clip's (unnormalised) image embedding.
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(enc(x)["global"], tiny_clip.visual(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(96, 128), (224, 256)])
def test_other_input_sizes(tiny_clip, size):
    enc = _encoder(tiny_clip)
    h, w = size
    out = enc(torch.randn(1, 3, h, w))
    assert out["res2"].shape[-2:] == (h // 4, w // 4)
    assert out["res4"].shape[-2:] == (h // 16, w // 16)
    assert out["res5"].shape[-2:] == (-(-h // 32), -(-w // 32))
    assert torch.isfinite(out["res5"]).all()
    dense = enc.dense_embeddings(torch.randn(1, 3, h, w))
    assert dense.shape == (1, 64, h // 16, w // 16)


def test_pos_embed_interpolation_and_cache(tiny_clip):
    enc = _encoder(tiny_clip)
    visual = enc.visual
    pos = enc._pos_embed(visual, (4, 4))
    assert pos is visual.positional_embedding
    with torch.no_grad():
        big = enc._pos_embed(visual, (6, 8))
        assert big.shape == (1 + 48, 64)
        torch.testing.assert_close(big[0], visual.positional_embedding[0])
        assert enc._pos_embed(visual, (6, 8)) is big  # cached without grad
        # Bicubic interpolation of a constant grid stays constant.
        const = torch.ones(1, 64)
        visual.positional_embedding[1:] = const
        flat = enc._pos_embed(visual, (6, 8))  # parameter changed: cache refreshed
        assert flat is not big
        torch.testing.assert_close(flat[1:], const.expand(48, -1))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        enc(torch.randn(1, 3, 70, 64))


def test_gradients_reach_vit_and_frozen_copy(tiny_clip):
    import copy

    clip_model = copy.deepcopy(tiny_clip)
    enc = _encoder(clip_model, frozen_copy=True)
    enc.train()
    assert not enc.frozen_visual.training
    assert all(not p.requires_grad for p in enc.frozen_visual.parameters())
    out = enc(torch.randn(1, 3, 96, 64))
    (sum(v.float().mean() for v in out.values())).backward()
    assert enc.visual.conv1.weight.grad is not None
    assert enc.visual.positional_embedding.grad is not None
    x = torch.randn(1, 3, 64, 64)
    frozen = enc.frozen_dense_embeddings(x)
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, enc.dense_embeddings(x).detach())
    with torch.no_grad():
        enc.visual.conv1.weight.add_(1.0)
    assert not torch.allclose(enc.frozen_dense_embeddings(x), enc.dense_embeddings(x))
    assert _encoder(clip_model).frozen_visual is None


def test_from_config_tiny():
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.MODEL.HIERVL.CLIP.MODEL_NAME = TINY
    cfg.MODEL.HIERVL.CLIP.PRETRAINED = ""
    cfg.MODEL.HIERVL.CLIP.IMAGE_SIZE = 64
    cfg.MODEL.HIERVL.CLIP.FEATURE_LAYERS = [0, 1, 2, 3]
    cfg.MODEL.HIERVL.PIXEL_DECODER.CONV_DIM = 64
    enc = CLIPImageEncoder(cfg)
    assert enc.frozen_visual is None  # the caller asks for the frozen copy (frozen_copy=True)
    assert enc.output_shape()["res3"].channels == 64
    cfg.MODEL.HIERVL.CLIP.FEATURE_LAYERS = [0, 1, 2, 7]
    with pytest.raises(ValueError, match="out of range"):
        CLIPImageEncoder(cfg)


def test_vit_b16_512_forward():
    """The one full-size check: ViT-B/16 at 512 px, random init, one forward on the CPU."""
    torch.manual_seed(0)
    model = build_open_clip("ViT-B-16", "", 512)
    enc = CLIPImageEncoder(visual=model.visual, feature_layers=[3, 5, 7, 11], conv_dim=256)
    enc.eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 512, 512))
    assert out["res2"].shape == (1, 256, 128, 128)
    assert out["res5"].shape == (1, 256, 16, 16)
    assert out["global"].shape == (1, 512)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_pretrained_tag_goes_to_open_clip(monkeypatch):
    import open_clip
    from torch import nn

    from hiervl.modeling.clip import factory

    calls = []

    def fake_create_model(name, pretrained=None, force_image_size=None, **kwargs):
        calls.append((name, pretrained, force_image_size, kwargs))
        return nn.Identity()

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    monkeypatch.setattr(factory, "_cached_weights", lambda cfg: "/cache/weights.bin")
    build_open_clip("ViT-B-16", "openai", 512)
    build_open_clip("ViT-B-16", "", 512)
    # OpenAI's weights were trained with QuickGELU (open_clip's pretrained config of the tag
    # says so); open_clip's ViT-B-16 config alone builds nn.GELU. Random init keeps the config.
    assert calls == [
        ("ViT-B-16", "openai", 512, {"force_quick_gelu": True, "weights_only": True}),
        ("ViT-B-16", None, 512, {"quick_gelu": False, "weights_only": True}),
    ]


def test_shared_clip_model_between_encoders(tiny_clip):
    import copy

    from hiervl.modeling.clip import PromptTextEncoder

    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.MODEL.HIERVL.CLIP.MODEL_NAME = TINY
    cfg.MODEL.HIERVL.CLIP.FEATURE_LAYERS = [0, 1, 2, 3]
    clip_model = copy.deepcopy(tiny_clip)
    image = CLIPImageEncoder(cfg, clip_model=clip_model, frozen_copy=True)
    text = PromptTextEncoder(cfg, clip_model=clip_model)
    assert image.visual is clip_model.visual and image.frozen_visual is not None
    assert text.tower.token_embedding is clip_model.token_embedding
    image_params = {id(p) for p in image.parameters()}
    assert not image_params & {id(p) for p in text.parameters()}
    assert not any(n.startswith("visual") for n, _ in text.named_parameters())
