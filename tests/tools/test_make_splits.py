"""tools/make_splits.py --folder: images added after a folder's split files join them."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hiervl.utils.testing import load_script

REPO = Path(__file__).resolve().parents[2]

make_splits = load_script("make_splits_tool", REPO / "tools" / "make_splits.py")
folder_tests = load_script("folder_test_helpers_ms", REPO / "tests" / "data" / "test_folder.py")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))


def _lines(path: Path):
    return path.read_text().splitlines()


def test_folder_refresh_adds_new_files_and_keeps_val(tmp_path, caplog):
    root = folder_tests.make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3).resolve()
    assert make_splits.main(["--folder", str(root)]) == 0  # no split files: drawn and written
    splits = root / "splits"
    val, labeled, unlabeled = (
        _lines(splits / n) for n in ("val.txt", "labeled.txt", "unlabeled.txt")
    )
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "images" / "z_new.png")
    Image.fromarray(folder_tests.id_mask(0)).save(root / "masks" / "z_new.png")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "images" / "z_pool.png")
    Image.fromarray(folder_tests.id_mask(1)).save(root / "masks" / "img_06.png")
    assert make_splits.main(["--folder", str(root)]) == 0
    assert _lines(splits / "val.txt") == val
    assert _lines(splits / "labeled.txt") == labeled + [
        "images/img_06.png masks/img_06.png",
        "images/z_new.png masks/z_new.png",
    ]
    assert _lines(splits / "unlabeled.txt") == [
        u for u in unlabeled if u != "images/img_06.png"
    ] + ["images/z_pool.png"]
    caplog.clear()
    with caplog.at_level("INFO", logger="make_splits"):
        assert make_splits.main(["--folder", str(root)]) == 0
    assert "list every image; nothing to add" in caplog.text


def test_folder_refresh_keeps_a_missing_unlabeled_txt_missing(tmp_path):
    # Without unlabeled.txt the pool is "every image without a mask": refreshing keeps that.
    root = folder_tests.make_folder(tmp_path / "ds", n_labeled=3, n_unlabeled=2).resolve()
    (root / "splits").mkdir()
    (root / "splits" / "labeled.txt").write_text("images/img_00.png masks/img_00.png\n")
    (root / "splits" / "val.txt").write_text("images/img_01.png masks/img_01.png\n")
    assert make_splits.main(["--folder", str(root)]) == 0
    assert _lines(root / "splits" / "labeled.txt") == [
        "images/img_00.png masks/img_00.png",
        "images/img_02.jpg masks/img_02.png",
    ]
    assert not (root / "splits" / "unlabeled.txt").exists()
