"""tools/rank_unlabeled.py: the ranked CSV, the contact sheet, --input, and --promote."""

import csv
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from hiervl.data.datasets.demo import DEMO_CLASSES
from hiervl.utils.testing import tiny_config, train_tiny_model
from hiervl.utils.testing import load_script

REPO = Path(__file__).resolve().parents[2]

rank_tool = load_script("rank_unlabeled_tool", REPO / "tools" / "rank_unlabeled.py")
make_folder = load_script(
    "folder_test_helpers", REPO / "tests" / "data" / "test_folder.py"
).make_folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """The tiny HierVL trained on the demo's classes, as a config naming its weights."""
    folder = tmp_path_factory.mktemp("rank")
    weights = folder / "trained.pth"
    torch.save({"model": train_tiny_model().state_dict()}, weights)
    path = folder / "config.yaml"
    path.write_text(tiny_config(MODEL__WEIGHTS=str(weights)).dump())
    return str(path)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ranking_csv_and_contact_sheet_of_the_unlabelled_split(tmp_path, config_file):
    out = tmp_path / "out"
    rc = rank_tool.main(
        ["--config-file", config_file, "--output", str(out), "--top-k", "3", "--limit", "12"]
        + ["--thumb-height", "64"]
    )
    assert rc == 0
    rows = _rows(out / "ranking.csv")
    assert list(rows[0]) == list(rank_tool.CSV_FIELDS)
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    pool = [r["file_name"] for r in DatasetCatalog.get("hiervl_demo_train_unlabeled")][:12]
    assert sorted(r["image"] for r in rows) == sorted(pool)
    for r in rows:
        parts = {k: float(r[k]) for k in ("score", "uncertainty", "balance", "redundancy")}
        # default weights 0.5 / 0.5 (the CSV rounds to 4 decimals)
        expected = parts["uncertainty"] + 0.5 * parts["balance"] - 0.5 * parts["redundancy"]
        assert parts["score"] == pytest.approx(expected, abs=2e-4)
        assert 0 <= parts["uncertainty"] <= 1 and 0 <= parts["balance"] <= 1
        names = [c.rsplit(" ", 1)[0] for c in r["classes"].split("; ")]
        assert names and set(names) <= set(DEMO_CLASSES)
    sheet = np.asarray(Image.open(out / "top_k.png"))
    # three rows of 64-pixel panels under their captions, three panels wide
    assert sheet.shape[0] > 3 * 64 and sheet.shape[1] >= 3 * 64


def test_a_folder_of_images(tmp_path, config_file):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = rank_tool.main(
        ["--config-file", config_file, "--output", str(out), "--input", str(folder)]
        + ["--top-k", "2", "--uncertainty", "margin", "--diversity-weight", "0"]
    )
    assert rc == 0
    rows = _rows(out / "ranking.csv")
    assert sorted(Path(r["image"]).name for r in rows) == ["a.png", "b.jpg", "c.png"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # no diversity penalty: plain order


def test_promote_moves_the_top_images_of_a_ranking(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3)
    cfg = tiny_config(
        DATASETS__CUSTOM__ROOT=str(root),
        DATASETS__CUSTOM__NAME=f"promote_{uuid.uuid4().hex[:6]}",
        MODEL__SEM_SEG_HEAD__NUM_CLASSES=3,
    )
    config = tmp_path / "folder.yaml"
    config.write_text(cfg.dump())
    rank_tool.load_config(str(config), [])  # registers the folder: writes its split files
    pool = (root / "splits" / "unlabeled.txt").read_text().split()
    ranking = tmp_path / "ranking.csv"
    with open(ranking, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rank_tool.CSV_FIELDS)
        for rank, image in enumerate([pool[2], pool[0], pool[1]], start=1):
            writer.writerow([rank, str(root / image), 0, 0, 0, 0, ""])
    args = ["--config-file", str(config), "--promote", str(ranking), "--top-k", "2"]
    assert rank_tool.main(args) == 1  # no masks yet: refused
    for image in (pool[2], pool[0]):
        stem = Path(image).relative_to("images").with_suffix("")
        Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "masks" / f"{stem}.png")
    assert rank_tool.main(args) == 0
    assert (root / "splits" / "unlabeled.txt").read_text().split() == [pool[1]]
