"""hiervl/data/datasets/promote.py: moving chosen images into a folder's labelled split."""

from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from hiervl.data.datasets.folder import FolderDatasetError, register_folder
from hiervl.data.datasets.promote import promote_to_labeled
from hiervl.utils.testing import load_script


make_folder = load_script(
    "folder_test_helpers", Path(__file__).with_name("test_folder.py")
).make_folder


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _split_texts(split_dir: Path):
    return {n: (split_dir / n).read_text() for n in ("labeled.txt", "unlabeled.txt", "val.txt")}


def _add_mask(root: Path, image: str):
    stem = Path(image).relative_to("images").with_suffix("")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "masks" / f"{stem}.png")


def test_missing_masks_are_named_and_nothing_moves(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3)
    register_folder(root, name="promote_a")
    split_dir = root / "splits"
    pool = (split_dir / "unlabeled.txt").read_text().split()
    before = _split_texts(split_dir)
    with pytest.raises(FolderDatasetError) as err:
        promote_to_labeled(root, pool[:2])
    assert pool[0] in str(err.value) and pool[1] in str(err.value)
    _add_mask(root, pool[0])
    with pytest.raises(FolderDatasetError) as err:
        promote_to_labeled(root, [str(root / pool[0]), pool[1]])  # absolute paths too
    assert pool[1] in str(err.value) and pool[0] not in str(err.value)
    assert _split_texts(split_dir) == before
    assert not (split_dir / "history").exists()


def test_chosen_images_join_the_labelled_split_and_nothing_is_deleted(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3)
    register_folder(root, name="promote_b")
    split_dir = root / "splits"
    pool = (split_dir / "unlabeled.txt").read_text().split()
    before = _split_texts(split_dir)
    for image in pool[:2]:
        _add_mask(root, image)
    files = _files(root)
    result = promote_to_labeled(root, pool[:2])
    assert [i for i, _ in result.moved] == pool[:2]
    labeled = (split_dir / "labeled.txt").read_text().splitlines()
    assert labeled[: len(before["labeled.txt"].splitlines())] == before["labeled.txt"].splitlines()
    for image, mask in result.moved:
        assert f"{image} {mask}" in labeled and (root / mask).is_file()
    assert (split_dir / "unlabeled.txt").read_text().split() == pool[2:]
    assert (split_dir / "val.txt").read_text() == before["val.txt"]
    # The old split files are kept; every file that was there still is.
    assert _split_texts(result.backup_dir) == before
    assert set(files) <= set(_files(root))
    # Registering again sees the new split; an image already moved is reported, not moved.
    info = register_folder(root, name="promote_b")
    assert info.counts["train_labeled"] == len(before["labeled.txt"].splitlines()) + 2
    records = DatasetCatalog.get("promote_b_train_labeled")
    assert {str(root / i) for i in pool[:2]} <= {r["file_name"] for r in records}
    again = promote_to_labeled(root, pool[:1])
    assert again.moved == [] and again.already_labeled == pool[:1]


def test_last_pool_image_and_images_outside_the_pool(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=1)
    register_folder(root, name="promote_c")
    split_dir = root / "splits"
    val_image = (split_dir / "val.txt").read_text().split()[0]
    with pytest.raises(FolderDatasetError, match="not in the unlabelled pool"):
        promote_to_labeled(root, [val_image])
    (pool_image,) = (split_dir / "unlabeled.txt").read_text().split()
    _add_mask(root, pool_image)
    result = promote_to_labeled(root, [pool_image])
    # An empty split file is not allowed: the emptied pool's file goes to the history.
    assert not (split_dir / "unlabeled.txt").exists()
    assert (result.backup_dir / "unlabeled.txt").read_text().split() == [pool_image]


def test_split_files_without_unlabeled_txt(tmp_path):
    # User-given labeled.txt and val.txt only: the pool is every image without a mask; once
    # the chosen image has its mask it is still promotable.
    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=2)
    (root / "splits").mkdir()
    (root / "splits" / "labeled.txt").write_text(
        "".join(f"images/img_{i:02d}.png masks/img_{i:02d}.png\n" for i in (0, 1, 3))
    )
    (root / "splits" / "val.txt").write_text("images/img_04.png masks/img_04.png\n")
    _add_mask(root, "images/img_05.jpg")
    result = promote_to_labeled(root, ["images/img_05.jpg"])
    assert result.moved == [("images/img_05.jpg", "masks/img_05.png")]
    assert not (root / "splits" / "unlabeled.txt").exists()
    with pytest.raises(FolderDatasetError, match="no split files"):
        promote_to_labeled(make_folder(tmp_path / "fresh", n_labeled=3, n_unlabeled=1), [])
