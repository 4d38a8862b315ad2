"""datasets/prepare_camvid.py on a tiny fake of the SegNet tutorial's CamVid/ layout: train and
val only (test held out), official split lists, void 11 declared as ignore and read as 255."""

from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hiervl.data.datasets.folder import register_folder
from hiervl.utils.testing import load_script

REPO = Path(__file__).resolve().parents[2]

prepare_camvid = load_script("prepare_camvid", REPO / "datasets" / "prepare_camvid.py")
check_dataset = load_script("check_dataset_tool_camvid", REPO / "tools" / "check_dataset.py")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))


def fake_camvid(root: Path, sizes=(("train", 3), ("val", 2), ("test", 2))) -> Path:
    """CamVid/ with frames of 6x8 px, annotations of ids 0..11 (11 = void) and split lists
    holding the SegNet authors' absolute paths."""
    rng = np.random.default_rng(0)
    for split, count in sizes:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(count):
            name = f"0001TP_{split}{i:03d}.png"
            Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(
                root / split / name
            )
            ids = (np.arange(48).reshape(6, 8) % 12).astype(np.uint8)
            Image.fromarray(ids).save(root / f"{split}annot" / name)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
        # the list's order, not the sorted one, is the split's order
        (root / f"{split}.txt").write_text("".join(reversed(lines)))
    return root


def test_prepare_camvid_train_val_and_void_as_ignore(tmp_path, capsys):
    source = fake_camvid(tmp_path / "CamVid")
    dest = tmp_path / "camvid"
    assert prepare_camvid.main([str(source), str(dest)]) == 0
    assert "3 train and 2 val frames, 11 classes" in capsys.readouterr().out
    lines = (dest / "classes.txt").read_text().splitlines()
    assert len(lines) == 12 and lines[0].split("\t")[0] == "sky" and lines[-1] == "ignore: 11"
    assert (dest / "splits" / "labeled.txt").read_text().splitlines()[0] == (
        "images/train/0001TP_train002.png masks/train/0001TP_train002.png"
    )
    assert len((dest / "splits" / "val.txt").read_text().splitlines()) == 2
    assert not (dest / "splits" / "unlabeled.txt").exists()
    assert not list(dest.rglob("*test*"))  # the test split stays held out
    # the annotations are copied unchanged (void keeps id 11) ...
    mask = np.asarray(Image.open(dest / "masks" / "val" / "0001TP_val000.png"))
    assert mask.max() == 11
    # ... and the folder is valid, with 11 read as 255
    report = check_dataset.check_folder(dest, progress=False)
    assert report.errors == []
    register_folder(dest, name="t_camvid")
    try:
        record = DatasetCatalog.get("t_camvid_val")[0]
        loaded = np.asarray(Image.open(record["sem_seg_file_name"]))
        assert np.array_equal(loaded, np.where(mask == 11, 255, mask))
        assert MetadataCatalog.get("t_camvid_val").stuff_classes[6] == "sign symbol"
    finally:
        for name in [n for n in DatasetCatalog.list() if n.startswith("t_camvid_")]:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    # rerunnable
    assert prepare_camvid.main([str(source), str(dest)]) == 0


def test_prepare_camvid_names_what_is_missing(tmp_path, capsys):
    source = fake_camvid(tmp_path / "CamVid", sizes=(("train", 2),))
    assert prepare_camvid.main([str(source), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{source / 'val'} not found: point the script at the CamVid/ folder" in err
    (source / "trainannot" / "0001TP_train000.png").unlink()
    (source / "val").mkdir()
    (source / "valannot").mkdir()
    (source / "val.txt").write_text("")
    assert prepare_camvid.main([str(source), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "1 files of the train split are missing" in err and "0001TP_train000.png" in err
