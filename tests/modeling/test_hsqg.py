"""HSQG: query shapes, presence vs predicted relevance, keep mask, ablation switches."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from hiervl import add_hiervl_config
from hiervl.modeling.heads.hsqg import HSQG


def _hsqg(**kw):
    args = dict(text_dim=16, hidden_dim=8, num_levels=3, init_alpha=10.0, init_beta=-2.0)
    args.update(kw)
    torch.manual_seed(0)
    return HSQG(**args)


def test_predicted_path_shapes_and_formula():
    head = _hsqg()
    text = F.normalize(torch.randn(5, 16), dim=-1)
    g = torch.randn(2, 16) * 3.0
    out = head(text, g)
    assert out["queries"].shape == (2, 15, 8)
    assert out["relevance"].shape == out["relevance_logits"].shape == (2, 5)
    assert out["keep"].shape == (2, 15) and out["keep"].dtype == torch.bool
    assert out["row_class"].tolist() == [c for c in range(5) for _ in range(3)]
    expected = torch.sigmoid(10.0 * F.cosine_similarity(g[:, None], text[None], dim=-1) - 2.0)
    torch.testing.assert_close(out["relevance"], expected)
    # Rows are r_c · MLP_e(t_c), class-major.
    levels = torch.stack([mlp(text) for mlp in head.level_mlps], dim=1)  # [C, E, D]
    r = out["relevance"]
    torch.testing.assert_close(out["queries"][1, 2 * 3 + 1], r[1, 2] * levels[2, 1])
    keep_ref = (r >= 0.5).repeat_interleave(3, dim=1)
    assert torch.equal(out["keep"] | keep_ref, out["keep"])


def test_presence_path_and_at_least_one_kept():
    head = _hsqg(relevance_threshold=0.5)
    text = torch.randn(4, 16)
    g = torch.randn(3, 16)
    presence = torch.tensor(
        [[True, False, True, False], [False, False, False, False], [False, True, False, False]]
    )
    out = head(text, g, presence)
    q = out["queries"].view(3, 4, 3, 8)
    assert torch.all(q[0, 1] == 0) and torch.all(q[0, 3] == 0)
    assert torch.all(q[0, 0] != 0)
    assert out["keep"].view(3, 4, 3)[0, :, 0].tolist() == [True, False, True, False]
    assert out["keep"].view(3, 4, 3)[2, :, 0].tolist() == [False, True, False, False]
    # An image with no present class keeps exactly the class of highest predicted relevance.
    kept = out["keep"].view(3, 4, 3)[1, :, 0]
    assert kept.sum() == 1 and kept.nonzero().item() == out["relevance"][1].argmax().item()
    # Relevance BCE trains alpha and beta.
    loss = head.relevance_loss(out["relevance_logits"], presence)
    loss.backward()
    assert head.alpha.grad is not None and head.beta.grad is not None


def test_threshold_masks_rows_in_predicted_path():
    head = _hsqg(init_alpha=0.0, init_beta=-5.0)  # r = σ(-5) < 0.5 for all classes
    out = head(torch.randn(3, 16), torch.randn(2, 16))
    assert out["keep"].sum(dim=1).tolist() == [3, 3]  # one class (E rows) per image
    head = _hsqg(init_alpha=0.0, init_beta=5.0)
    assert head(torch.randn(3, 16), torch.randn(2, 16))["keep"].all()


def test_switches_off():
    head = _hsqg(hierarchical=False, relevance_enabled=False)
    assert head.num_levels == 1
    assert not any("alpha" in n or "beta" in n for n, _ in head.named_parameters())
    text = torch.randn(4, 16)
    out = head(text, torch.randn(2, 16))
    assert out["queries"].shape == (2, 4, 8)
    assert torch.all(out["relevance"] == 1) and out["keep"].all()
    torch.testing.assert_close(out["queries"][0], head.level_mlps[0](text))
    assert head.relevance_loss(out["relevance_logits"], torch.ones(2, 4, dtype=torch.bool)) == 0


def test_from_config_and_bad_presence():
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.MODEL.HIERVL.HSQG.NUM_LEVELS = 2
    cfg.MODEL.HIERVL.DECODER.HIDDEN_DIM = 32
    head = HSQG(cfg, text_dim=64)
    out = head(torch.randn(6, 64), torch.randn(1, 64))
    assert out["queries"].shape == (1, 12, 32)
    assert head.alpha.item() == cfg.MODEL.HIERVL.HSQG.RELEVANCE_INIT_ALPHA
    with pytest.raises(ValueError, match="presence"):
        head(torch.randn(6, 64), torch.randn(1, 64), torch.ones(1, 5, dtype=torch.bool))
