"""Prompted text encoder: frozen tower, learnable prompts, template embeddings, descriptions."""

import pytest
import torch
from detectron2.config import get_cfg

from hiervl import add_hiervl_config
from hiervl.modeling.clip import (
    PromptTextEncoder,
    build_open_clip,
    build_tokenizer,
    load_class_descriptions,
)

TINY = "HierVL-Tiny-ViT"
NAMES = ["dog", "cat", "potted plant"]


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return build_open_clip(TINY, "", 64)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TINY)


def _encoder(clip_model, tokenizer, **kw):
    kw.setdefault("prompt_length", 4)
    return PromptTextEncoder(clip_model=clip_model, tokenizer=tokenizer, **kw)


def _reference(clip_model, tokenizer, texts):
    return clip_model.encode_text(tokenizer(texts), normalize=True)


def test_shapes_and_template_matches_open_clip(tiny_clip, tokenizer):
    enc = _encoder(tiny_clip, tokenizer)
    t_hat = enc(NAMES)
    t0 = enc.template_embeddings(NAMES)
    assert t_hat.shape == t0.shape == (3, enc.embed_dim) == (3, 64)
    torch.testing.assert_close(t_hat.norm(dim=-1), torch.ones(3))
    assert t_hat.requires_grad and not t0.requires_grad
    with torch.no_grad():
        ref = _reference(tiny_clip, tokenizer, [f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(t0, ref, rtol=1e-5, atol=1e-5)
    # No prompts: t̂ is open_clip's embedding of "name.".
    bare = _encoder(tiny_clip, tokenizer, prompt_length=0)
    with torch.no_grad():
        torch.testing.assert_close(
            bare(NAMES),
            _reference(tiny_clip, tokenizer, [f"{n}." for n in NAMES]),
            rtol=1e-5,
            atol=1e-5,
        )
        assert not torch.allclose(enc(NAMES), bare(NAMES), atol=1e-4)


def test_prompts_match_manual_insertion(tiny_clip, tokenizer):
    """The prompts sit between SOT and the name tokens; EOT pooling moves with them."""
    enc = _encoder(tiny_clip, tokenizer, prompt_length=3)
    tokens = tokenizer(["dog."])
    m = tiny_clip
    with torch.no_grad():
        x = m.token_embedding(tokens)
        x = torch.cat([x[:, :1], enc.prompts.unsqueeze(0), x[:, 1:-3]], dim=1)
        x = m.transformer(x + m.positional_embedding, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        eot = tokens.argmax(-1) + 3
        ref = torch.nn.functional.normalize(x[torch.arange(1), eot] @ m.text_projection, dim=-1)
        torch.testing.assert_close(enc(["dog"]), ref, rtol=1e-5, atol=1e-5)


def test_only_prompts_get_grads_and_template_is_stable(tiny_clip, tokenizer):
    enc = _encoder(tiny_clip, tokenizer)
    enc.train()
    assert not enc.tower.training
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable == ["prompts"]
    t0_before = enc.template_embeddings(NAMES).clone()
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=10.0)
    before = enc(NAMES).detach()
    loss = (enc(NAMES) @ t0_before.t()).diagonal().sum()
    loss.backward()
    assert enc.prompts.grad is not None and enc.prompts.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in enc.named_parameters() if n != "prompts")
    opt.step()
    assert not torch.allclose(enc(NAMES).detach(), before)
    torch.testing.assert_close(enc.template_embeddings(NAMES), t0_before)
    with torch.no_grad():
        fresh = _reference(tiny_clip, tokenizer, [f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(enc.template_embeddings(NAMES), fresh, rtol=1e-5, atol=1e-5)


def test_no_grad_cache_follows_prompt_updates(tiny_clip, tokenizer):
    enc = _encoder(tiny_clip, tokenizer)
    with torch.no_grad():
        a = enc(NAMES)
        assert enc(NAMES) is a
        enc.prompts.add_(0.5)
        b = enc(NAMES)
    assert b is not a and not torch.allclose(a, b)


def test_descriptions_average(tiny_clip, tokenizer, tmp_path):
    path = tmp_path / "desc.txt"
    path.write_text(
        "# comment\ndog\ta furry pet that barks\n\ndog\ta loyal animal.\ncat\ta small feline\n"
    )
    descs = load_class_descriptions(str(path))
    assert descs == {
        "dog": ["a furry pet that barks", "a loyal animal."],
        "cat": ["a small feline"],
    }
    enc = _encoder(tiny_clip, tokenizer, descriptions=descs)
    plain = _encoder(tiny_clip, tokenizer)
    with torch.no_grad():
        plain.prompts.copy_(enc.prompts)
        variants = {
            "dog": plain(["dog", "a furry pet that barks", "a loyal animal"]),
            "cat": plain(["cat", "a small feline"]),
        }
        expected = torch.stack(
            [torch.nn.functional.normalize(variants[n].mean(0), dim=0) for n in ["dog", "cat"]]
        )
        torch.testing.assert_close(enc(["dog", "cat"]), expected, rtol=1e-5, atol=1e-5)
        # A class without descriptions is just its name.
        torch.testing.assert_close(enc(["bird"]), plain(["bird"]))
        # Per-call metadata descriptions add to the file's; template side uses them verbatim.
        meta = enc(["cat"], class_descriptions=[["a tabby"]])
        exp = plain(["cat", "a small feline", "a tabby"]).mean(0)
        torch.testing.assert_close(meta[0], torch.nn.functional.normalize(exp, dim=0))
        t0 = enc.template_embeddings(["cat"])
        ref = _reference(tiny_clip, tokenizer, ["a photo of a cat.", "a small feline."]).mean(0)
        torch.testing.assert_close(t0[0], torch.nn.functional.normalize(ref, dim=0))
    bad = tmp_path / "bad.txt"
    bad.write_text("dog a pet without a tab\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        load_class_descriptions(str(bad))
    with pytest.raises(FileNotFoundError):
        load_class_descriptions(str(tmp_path / "missing.txt"))


def test_many_classes_and_from_config(tmp_path):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.MODEL.HIERVL.CLIP.MODEL_NAME = TINY
    cfg.MODEL.HIERVL.CLIP.PRETRAINED = ""
    cfg.MODEL.HIERVL.CLIP.IMAGE_SIZE = 64
    cfg.MODEL.HIERVL.CLIP.PROMPT_LENGTH = 8
    path = tmp_path / "d.txt"
    path.write_text("class 3\tthe third class\n")
    cfg.MODEL.HIERVL.CLIP.DESCRIPTIONS_FILE = str(path)
    enc = PromptTextEncoder(cfg)
    assert enc.prompts.shape == (8, 64)
    names = [f"class {i}" for i in range(40)]
    out = enc(names)
    assert out.shape == (40, 64) and torch.isfinite(out).all()
    assert enc.template_embeddings(names).shape == (40, 64)
    with pytest.raises(ValueError, match="class_descriptions"):
        enc(names, class_descriptions=[["x"]])
