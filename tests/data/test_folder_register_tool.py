"""tools/register_folder.py: prints the registered names and counts, writes the split files."""

from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from hiervl.utils.testing import load_script

REPO = Path(__file__).resolve().parents[2]

register_tool = load_script("register_folder_tool", REPO / "tools" / "register_folder.py")
make_folder = load_script(
    "folder_test_helpers", REPO / "tests" / "data" / "test_folder.py"
).make_folder


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))
    yield
    for name in [n for n in DatasetCatalog.list() if n.startswith("t_tool_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_prints_names_counts_and_writes_splits(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=2, colour=True)
    code = register_tool.main(
        [
            str(root),
            "--name",
            "t_tool",
            "--palette",
            "palette.txt",
            "--val-fraction",
            "0.2",
            "--load",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "classes (3): background, cat, dog" in out
    assert "t_tool_train_labeled: 4 images" in out
    assert "t_tool_train_unlabeled: 2 images" in out
    assert "t_tool_val: 1 images" in out
    assert (root / "splits" / "labeled.txt").read_text().count("\n") == 4
    assert len(list((tmp_path / "cache" / "folders").rglob("*.png"))) == 5  # converted once


def test_no_write_and_errors(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", colour=True)
    assert register_tool.main([str(root), "--name", "t_tool", "--no-write-splits"]) == 0
    assert not (root / "splits").exists()
    code = register_tool.main([str(root), "--name", "t_tool", "--load"])
    assert code == 1
    assert "colour mask but no palette" in capsys.readouterr().err
