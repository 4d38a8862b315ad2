"""hiervl/evaluation/label_next.py: each part of the label-next score on hand-made maps."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from hiervl.evaluation.label_next import (
    RARITY_EPS,
    ImageStats,
    balance_term,
    class_probabilities,
    class_weights,
    diverse_order,
    image_stats,
    labelled_class_frequency,
    pixel_uncertainty,
    rank_images,
)


def _map(*pixels):
    """``[C, 1, N]`` probability map from N per-pixel distributions."""
    return torch.tensor(pixels, dtype=torch.float32).t()[:, None, :]


def test_pixel_uncertainty_entropy_and_margin():
    probs = _map([1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.6, 0.3, 0.1])
    entropy = pixel_uncertainty(probs, "entropy")[0]
    assert entropy[0] == pytest.approx(0.0, abs=1e-6)  # sure
    assert entropy[1] == pytest.approx(1.0, abs=1e-6)  # uniform
    assert entropy[2] == pytest.approx(math.log(2) / math.log(3), abs=1e-6)
    margin = pixel_uncertainty(probs, "margin")[0]
    assert margin.tolist() == pytest.approx([0.0, 1.0, 1.0, 0.7], abs=1e-6)
    assert pixel_uncertainty(torch.ones(1, 2, 2), "entropy").abs().max() == 0  # one class
    with pytest.raises(ValueError, match="kind"):
        pixel_uncertainty(probs, "variance")


def test_class_probabilities_normalise_the_scores():
    sem = torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]], [[4.0, 0.0]]])
    probs = class_probabilities(sem)
    assert probs[:, 0, 0].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert probs[:, 0, 1].tolist() == pytest.approx([1 / 3] * 3)  # no score: uniform


def test_image_stats_shares_and_per_class_uncertainty():
    probs = _map([0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5])
    stats = image_stats(probs, torch.tensor([1.0, 2.0]), kind="margin", name="a.png")
    # argmax: 0, 0, 1, 0 (a tie goes to the first class)
    assert stats.class_share.tolist() == pytest.approx([0.75, 0.25])
    assert stats.class_pixels.tolist() == [3, 1]
    assert stats.class_uncertainty_sum.tolist() == pytest.approx([0.2 + 0.8 + 1.0, 0.4])
    assert stats.uncertainty == pytest.approx((0.2 + 0.8 + 0.4 + 1.0) / 4)
    assert stats.embedding.tolist() == [1.0, 2.0] and stats.name == "a.png"


def _stats(name, uncertainty, share, unc_per_class=None, embedding=None):
    share = np.asarray(share, dtype=np.float64)
    pixels = share * 100
    per_class = np.full_like(share, uncertainty) if unc_per_class is None else unc_per_class
    emb = np.asarray(embedding if embedding is not None else np.ones(3), dtype=np.float64)
    return ImageStats(name, uncertainty, share, pixels * np.asarray(per_class), pixels, emb)


def test_class_weights_rarity_and_uncertainty():
    pool = [
        _stats("a", 0.2, [0.5, 0.5, 0.0], unc_per_class=[0.1, 0.3, 0.0]),
        _stats("b", 0.4, [1.0, 0.0, 0.0], unc_per_class=[0.5, 0.0, 0.0]),
    ]
    labelled = np.array([0.9, 0.1, 0.0])
    w = class_weights(pool, labelled)
    raw = (labelled + RARITY_EPS) ** -0.5
    assert w["rarity"] == pytest.approx(raw / raw.max())
    assert w["rarity"][2] == 1.0 and w["rarity"][0] < w["rarity"][1] < 1.0
    # pooled over the pool's pixels of each class: (50*0.1 + 100*0.5) / 150; 0.3; never = 0
    assert w["uncertainty"] == pytest.approx([55 / 150, 0.3, 0.0])
    assert w["weight"] == pytest.approx((w["rarity"] + w["uncertainty"]) / 2)
    # Without a labelled split, the pool's predicted frequency stands in.
    pool_freq = np.array([0.75, 0.25, 0.0])
    raw = (pool_freq + RARITY_EPS) ** -0.5
    assert class_weights(pool)["rarity"] == pytest.approx(raw / raw.max())


def test_balance_term_square_root_shares():
    weight = np.array([0.1, 1.0])
    assert balance_term(np.array([1.0, 0.0]), weight) == pytest.approx(0.1)
    assert balance_term(np.array([0.0, 1.0]), weight) == pytest.approx(1.0)
    # 99 % common, 1 % rare: the rare class weighs sqrt(0.01) against sqrt(0.99).
    expected = (math.sqrt(0.99) * 0.1 + math.sqrt(0.01) * 1.0) / (math.sqrt(0.99) + 0.1)
    assert balance_term(np.array([0.99, 0.01]), weight) == pytest.approx(expected)
    assert balance_term(np.zeros(2), weight) == 0.0


def test_diverse_order_skips_near_duplicates():
    scores = np.array([1.0, 0.99, 0.9, 0.5])
    # A shared offset (what a random-init encoder gives every image) plus the image's own
    # direction; images 0 and 1 are the same picture.
    offset = np.full(4, 10.0)
    own = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    embeddings = offset + own
    order, redundancy = diverse_order(scores, embeddings, diversity_weight=0.0, num_select=2)
    assert order.tolist() == [0, 1, 2, 3]  # no penalty: by score
    order, redundancy = diverse_order(scores, embeddings, diversity_weight=0.5, num_select=2)
    assert order.tolist() == [0, 2, 3, 1]  # the duplicate goes last
    assert redundancy[1] == pytest.approx(1.0)
    assert redundancy[0] == 0.0 and redundancy[2] == 0.0  # centred: distinct images unlike


def test_rank_images_combines_the_parts():
    # Same uncertainty; image "rare" shows class 2, which the labelled set lacks.
    pool = [
        _stats("common", 0.5, [1.0, 0.0, 0.0], embedding=[1.0, 0, 0]),
        _stats("rare", 0.5, [0.5, 0.0, 0.5], embedding=[0, 1.0, 0]),
        _stats("unsure", 0.9, [0.0, 1.0, 0.0], embedding=[0, 0, 1.0]),
    ]
    labelled = np.array([0.7, 0.3, 0.0])
    ranking = rank_images(
        pool, balance_weight=0.0, diversity_weight=0.0, num_select=3, labelled_frequency=labelled
    )
    assert [r.name for r in ranking][0] == "unsure"  # uncertainty alone
    ranking = rank_images(
        pool, balance_weight=0.5, diversity_weight=0.5, num_select=3, labelled_frequency=labelled
    )
    names = [r.name for r in ranking]
    assert names.index("rare") < names.index("common")
    weights = class_weights(pool, labelled)["weight"]
    for r in ranking:
        stats = next(s for s in pool if s.name == r.name)
        assert r.balance == pytest.approx(balance_term(stats.class_share, weights))
        assert r.score == pytest.approx(r.uncertainty + 0.5 * r.balance - 0.5 * r.redundancy)
    assert [r.rank for r in ranking] == [1, 2, 3]
    rare = next(r for r in ranking if r.name == "rare")
    assert rare.classes == [(0, 0.5), (2, 0.5)]
    assert rank_images([]) == []


def test_labelled_class_frequency_counts_pixels(tmp_path):
    masks = [np.array([[0, 0], [1, 255]], np.uint8), np.array([[2, 2], [2, 0]], np.uint8)]
    records = []
    for i, mask in enumerate(masks):
        path = tmp_path / f"m{i}.png"
        Image.fromarray(mask).save(path)
        records.append({"sem_seg_file_name": str(path)})
    freq = labelled_class_frequency(records, 4)
    assert freq.tolist() == pytest.approx([3 / 7, 1 / 7, 3 / 7, 0.0])
