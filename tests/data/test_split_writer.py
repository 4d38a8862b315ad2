"""One split writer: every split file of the package goes through semseg.write_split_files.

Issue 18 found three writers (folder.py's, semi_splits.py's and one inlined in demo.py), two
of them not atomic. These tests spy on the atomic write under the one writer and check that
every split file the demo generator, the nested-split writer, a folder registration and a
promotion leave on disk was written through it.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hiervl.data.datasets import semseg
from hiervl.data.datasets.demo import generate_demo_dataset
from hiervl.data.datasets.folder import FolderSplits, register_folder, write_folder_splits
from hiervl.data.datasets.promote import promote_to_labeled
from hiervl.data.datasets.semi_splits import write_nested_splits
from hiervl.utils.testing import load_script


make_folder = load_script(
    "folder_test_helpers_sw", Path(__file__).with_name("test_folder.py")
).make_folder


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def written(monkeypatch):
    """Paths written through the one writer (it writes each file with atomic_write_text)."""
    paths = []
    real = semseg.atomic_write_text

    def spy(path, text, *args, **kwargs):
        paths.append(Path(path))
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(semseg, "atomic_write_text", spy)
    return paths


def _split_files(directory: Path):
    return sorted(p for p in directory.rglob("*.txt") if "history" not in p.parts)


def test_the_demo_generator_writes_its_nested_splits_through_the_one_writer(tmp_path, written):
    root = generate_demo_dataset(
        tmp_path / "demo", num_train=6, num_val=2, image_size=32, budgets=(2, 4)
    )
    on_disk = _split_files(root / "splits")
    assert len(on_disk) == 5  # val.txt, {2,4}/{labeled,unlabeled}.txt
    assert sorted(written) == on_disk
    assert (root / "splits" / "hiervl_demo" / "2" / "labeled.txt").read_text().count("\n") == 2


def test_nested_splits_go_through_the_one_writer(tmp_path, written):
    train = [f"images/{i}.jpg masks/{i}.png" for i in range(6)]
    counts = write_nested_splits(
        tmp_path / "pascal", train_lines=train, val_lines=train[:1], budgets=(2, 3), seed=0
    )
    on_disk = _split_files(tmp_path / "pascal")
    assert sorted(written) == on_disk and len(on_disk) == 5
    assert counts == {
        "val.txt": 1,
        "2/labeled.txt": 2,
        "2/unlabeled.txt": 4,
        "3/labeled.txt": 3,
        "3/unlabeled.txt": 3,
    }
    labeled_2 = set((tmp_path / "pascal" / "2" / "labeled.txt").read_text().splitlines())
    assert labeled_2 <= set((tmp_path / "pascal" / "3" / "labeled.txt").read_text().splitlines())


def test_folder_registration_and_promotion_go_through_the_one_writer(tmp_path, written):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3)
    register_folder(root, name="split_writer")
    on_disk = _split_files(root / "splits")
    assert sorted(written) == on_disk and len(on_disk) == 3
    written.clear()
    image = (root / "splits" / "unlabeled.txt").read_text().split()[0]
    stem = Path(image).relative_to("images").with_suffix("")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "masks" / f"{stem}.png")
    promote_to_labeled(root, [image])
    assert sorted(written) == [root / "splits" / "labeled.txt", root / "splits" / "unlabeled.txt"]


def test_a_failing_split_write_keeps_the_old_files_and_leaves_no_temporary_file(
    tmp_path, monkeypatch
):
    # The old folder writer left its temporary file behind when the rename failed, and the
    # demo's and the nested writers wrote in place (half a file on a full disk).
    splits = FolderSplits(
        [("images/a.png", "masks/a.png")], ["images/u.png"], [("images/v.png", "masks/v.png")]
    )
    write_folder_splits(splits, tmp_path / "splits")
    before = {p.name: p.read_text() for p in (tmp_path / "splits").iterdir()}

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    splits.labeled.append(("images/b.png", "masks/b.png"))
    with pytest.raises(OSError, match="No space left"):
        write_folder_splits(splits, tmp_path / "splits")
    assert {p.name: p.read_text() for p in (tmp_path / "splits").iterdir()} == before
