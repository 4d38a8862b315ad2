"""CLIP weights: the activation they were trained with, what counts as a checkpoint, offline tags.

No test here needs the network or the real weights: open_clip's download and checkpoint load are
patched where a real ViT-B-16 tag is asked for, and the local "OpenAI" file is a TorchScript
archive of the tiny CLIP written into a temporary folder.
"""

import time

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from torch import nn

from hiervl.modeling.clip import build_open_clip, build_open_clip_from_config
from hiervl.modeling.clip import factory
from hiervl.utils.testing import tiny_config

TINY = "HierVL-Tiny-ViT"


def _activations(model: nn.Module):
    """Types of every activation module of the model's transformer blocks."""
    return {type(m) for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}


def _tiny_openai_archive(path):
    """A TorchScript archive of the tiny CLIP laid out as OpenAI ships its weights (a traced
    model whose state dict has ``input_resolution`` and no ``attn_mask``); returns the model."""
    factory.register_model_configs()
    torch.manual_seed(3)
    model = open_clip.create_model(TINY, force_quick_gelu=True).eval()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    mask = model._buffers.pop("attn_mask")
    model.attn_mask = mask  # a constant of the trace, as in OpenAI's archives
    model.register_buffer("input_resolution", torch.tensor(64))
    traced = torch.jit.trace(
        model, (torch.randn(1, 3, 64, 64), torch.zeros(1, 32, dtype=torch.long)), check_trace=False
    )
    traced.save(str(path))
    return reference


@pytest.fixture
def fake_download(monkeypatch):
    """open_clip's download and checkpoint load replaced by recorders; the hub reachable."""
    calls = {"download": [], "load": []}

    def download_pretrained(cfg, *args, **kwargs):
        calls["download"].append(cfg)
        return "/downloads/open_clip_model.safetensors"

    def load_checkpoint(model, path, *args, **kwargs):
        calls["load"].append(path)

    monkeypatch.setattr(open_clip.factory, "download_pretrained", download_pretrained)
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", load_checkpoint)
    # raising=False: the old builder had neither helper (the test then fails on its result).
    monkeypatch.setattr(factory, "_cached_weights", lambda cfg: None, raising=False)
    monkeypatch.setattr(factory, "_can_reach", lambda *a, **k: True, raising=False)
    return calls


def test_openai_tag_builds_quick_gelu_blocks(fake_download):
    # OpenAI's weights were trained with QuickGELU; open_clip's ViT-B-16 config builds nn.GELU
    # unless told, and our text tower is frozen: a GELU build can never train the mismatch away.
    model = build_open_clip("ViT-B-16", "openai", 224)
    assert fake_download["load"] == ["/downloads/open_clip_model.safetensors"]
    assert _activations(model) == {QuickGELU}
    for tower in (model.visual.transformer, model.transformer):
        assert all(isinstance(block.mlp.gelu, QuickGELU) for block in tower.resblocks)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_local_openai_archive_builds_quick_gelu_and_loads(tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    reference = _tiny_openai_archive(path)
    model = build_open_clip(TINY, str(path), 64)
    assert _activations(model) == {QuickGELU}
    assert factory.checkpoint_kind(str(path)) == "torchscript"
    got = model.state_dict()
    for key, value in reference.items():
        assert torch.equal(got[key], value), key


def test_quick_gelu_choices(tmp_path):
    # Random init and state dicts keep the model config's default unless told.
    assert _activations(build_open_clip(TINY, "", 64)) == {nn.GELU}
    assert _activations(build_open_clip(TINY, "", 64, quick_gelu=True)) == {QuickGELU}
    path = tmp_path / "tiny.pt"
    torch.save(build_open_clip(TINY, "", 64).state_dict(), path)
    assert _activations(build_open_clip(TINY, str(path), 64)) == {nn.GELU}
    assert _activations(build_open_clip(TINY, str(path), 64, quick_gelu=True)) == {QuickGELU}
    # The decision for tags and model configs, without building ViT-B-16 each time.
    assert factory.resolve_quick_gelu("ViT-B-16", "openai", None, None)[0] is True
    assert factory.resolve_quick_gelu("ViT-B-16", "openai", None, False)[0] is False
    assert factory.resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None, None)[0] is False
    assert factory.resolve_quick_gelu("ViT-B-16-quickgelu", "", None, None)[0] is True
    assert factory.resolve_quick_gelu("ViT-B-16", "/x/ViT-B-16.pt", "torchscript", None)[0] is True
    assert factory.resolve_quick_gelu("ViT-B-16", "/x/weights.bin", "torch", None)[0] is False
    # The config key: strings, any case; anything else is an error naming the key.
    cfg = tiny_config()
    cfg.MODEL.HIERVL.CLIP.QUICK_GELU = "True"
    assert _activations(build_open_clip_from_config(cfg)) == {QuickGELU}
    cfg.MODEL.HIERVL.CLIP.QUICK_GELU = "yes"
    with pytest.raises(ValueError, match="MODEL.HIERVL.CLIP.QUICK_GELU"):
        build_open_clip_from_config(cfg)


def test_text_file_is_not_a_checkpoint(tmp_path):
    # Issue 17, item 9: a text file gave "KeyError: 101" from deep inside torch.load.
    for name in ("clip.pt", "notes.txt"):
        path = tmp_path / name
        path.write_text("example text, not weights\n")
        with pytest.raises(ValueError, match=rf"{name} .*is not a checkpoint.*accepted"):
            build_open_clip(TINY, str(path), 64)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth .*is not a checkpoint"):
        build_open_clip(TINY, str(empty), 64)


def test_checkpoint_kinds(tmp_path):
    from safetensors.torch import save_file

    tensors = {"w": torch.zeros(2, 2)}
    torch.save(tensors, tmp_path / "zip.pt")
    torch.save(tensors, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(tensors, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", w=np.zeros(2))
    assert factory.checkpoint_kind(str(tmp_path / "zip.pt")) == "torch"
    assert factory.checkpoint_kind(str(tmp_path / "legacy.pt")) == "torch"
    assert factory.checkpoint_kind(str(tmp_path / "w.safetensors")) == "safetensors"
    assert factory.checkpoint_kind(str(tmp_path / "w.npz")) == "numpy"
    # open_clip reads safetensors by the file name: a misnamed one is an error, not a crash.
    (tmp_path / "w.safetensors").rename(tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match="renamed.pt .*safetensors"):
        factory.checkpoint_kind(str(tmp_path / "renamed.pt"))


def test_offline_tag_fails_at_once_with_instructions(monkeypatch, fake_download):
    # Issue 17, item 13: offline, open_clip retried the download for ~50 s, then a traceback.
    monkeypatch.setattr(factory, "_can_reach", lambda *a, **k: False, raising=False)
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        build_open_clip("ViT-B-16", "openai", 224)
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "cannot be reached" in message
    assert "MODEL.HIERVL.CLIP.PRETRAINED /path/to/file" in message
    assert "ViT-B-16.pt" in message  # OpenAI's archive, recognised as QuickGELU by "auto"
    assert "QUICK_GELU true" in message  # a state dict does not say its activation
    assert fake_download["download"] == []  # no download was started


def test_offline_hub_env_and_cached_weights(monkeypatch):
    from huggingface_hub import constants

    def no_probe(*args, **kwargs):
        raise AssertionError("the host must not be probed")

    monkeypatch.setattr(factory, "_can_reach", no_probe)
    monkeypatch.setattr(factory, "_cached_weights", lambda cfg: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        factory._check_download_can_start("ViT-B-16", "openai", True)
    # Weights already in open_clip's cache need no network: no probe, no error.
    monkeypatch.setattr(factory, "_cached_weights", lambda cfg: "/cache/open_clip_model.bin")
    factory._check_download_can_start("ViT-B-16", "openai", True)
    # A tag open_clip does not know is left to open_clip's own error.
    factory._check_download_can_start("ViT-B-16", "no-such-tag", True)


def test_probe_of_an_unresolvable_host_is_quick(monkeypatch):
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    assert factory._can_reach("hiervl-test.invalid", timeout=1.0) is False  # RFC 2606 name
    assert time.perf_counter() - start < 10.0
