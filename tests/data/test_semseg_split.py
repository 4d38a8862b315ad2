"""Split-file parsing, registration, metadata and validation of ``register_semseg_split``."""

from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hiervl.data.datasets.semseg import (
    SplitFileError,
    datasets_root,
    load_semseg_split,
    read_split_file,
    register_semseg_split,
    validate_semseg_files,
    validate_semseg_sample,
)


def _write_pair(root: Path, stem: str, size=(6, 4), value=1):
    (root / "img").mkdir(exist_ok=True)
    (root / "lbl").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(root / "img" / f"{stem}.jpg")
    Image.fromarray(np.full((size[1], size[0]), value, np.uint8)).save(root / "lbl" / f"{stem}.png")
    return f"img/{stem}.jpg lbl/{stem}.png"


@pytest.fixture
def catalog_names():
    names = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_read_split_file_skips_blank_and_comments(tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("# header\n\na.jpg a.png\n  b.jpg   b.png  \nc.jpg\n")
    assert read_split_file(split, labeled=False) == [
        (3, "a.jpg", "a.png"),
        (4, "b.jpg", "b.png"),
        (5, "c.jpg", None),
    ]
    with pytest.raises(SplitFileError, match=r"s\.txt:5: labelled split line has no mask"):
        read_split_file(split, labeled=True)


def test_read_split_file_errors(tmp_path):
    with pytest.raises(SplitFileError, match="Split file not found"):
        read_split_file(tmp_path / "missing.txt")
    (tmp_path / "three.txt").write_text("a b c\n")
    with pytest.raises(SplitFileError, match=r"three\.txt:1: expected 'image \[mask\]'"):
        read_split_file(tmp_path / "three.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SplitFileError, match="empty"):
        read_split_file(tmp_path / "empty.txt")


def test_load_split_names_missing_file_and_line(tmp_path):
    lines = [_write_pair(tmp_path, "a"), "img/b.jpg lbl/b.png"]
    (tmp_path / "split.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SplitFileError, match=r"split\.txt:2: file not found: .*b\.jpg"):
        load_semseg_split(root=tmp_path, split_file=tmp_path / "split.txt")


def test_unlabeled_dicts_have_no_mask(tmp_path):
    line = _write_pair(tmp_path, "a")
    (tmp_path / "u.txt").write_text(f"{line}\nimg/a.jpg\n")
    dicts = load_semseg_split(root=tmp_path, split_file=tmp_path / "u.txt", labeled=False)
    assert [d["image_id"] for d in dicts] == ["img/a", "img/a"]
    assert all("sem_seg_file_name" not in d for d in dicts)


def test_register_is_lazy_and_sets_metadata(tmp_path, catalog_names):
    split = tmp_path / "l.txt"
    calls = []
    register_semseg_split(
        "hiervl_test_lazy",
        root=tmp_path,
        split_file=split,
        stuff_classes=["a", "b"],
        stuff_colors=[(1, 2, 3), (4, 5, 6)],
        prepare=lambda: calls.append(1),
        class_descriptions=[["a thing"], ["b thing"]],
        resolve_mask=lambda rel: rel.replace("raw/", "lbl/"),
    )
    catalog_names.append("hiervl_test_lazy")
    assert calls == []  # nothing read or prepared at registration
    split.write_text(_write_pair(tmp_path, "a").replace("lbl/", "raw/") + "\n")
    dicts = DatasetCatalog.get("hiervl_test_lazy")
    assert calls == [1]
    assert dicts == [
        {
            "file_name": str(tmp_path / "img/a.jpg"),
            "image_id": "img/a",
            "sem_seg_file_name": str(tmp_path / "lbl/a.png"),
        }
    ]
    meta = MetadataCatalog.get("hiervl_test_lazy")
    assert meta.stuff_classes == ["a", "b"]
    assert meta.stuff_colors == [(1, 2, 3), (4, 5, 6)]
    assert meta.ignore_label == 255
    assert meta.evaluator_type == "sem_seg"
    assert meta.class_descriptions == [["a thing"], ["b thing"]]


def test_register_rejects_colour_count(tmp_path):
    with pytest.raises(ValueError, match="2 classes but 1 colours"):
        register_semseg_split(
            "hiervl_test_bad",
            root=tmp_path,
            split_file=tmp_path / "x.txt",
            stuff_classes=["a", "b"],
            stuff_colors=[(0, 0, 0)],
        )
    assert "hiervl_test_bad" not in DatasetCatalog.list()


def test_datasets_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path
    monkeypatch.delenv("DETECTRON2_DATASETS")
    monkeypatch.chdir(tmp_path)
    # detectron2's rule (detectron2/data/datasets/builtin.py): ./datasets of the working
    # directory, so that our roots and detectron2's builtin ones are the same folder.
    assert datasets_root() == tmp_path / "datasets"


def test_validate_sample():
    mask = np.array([[0, 1], [255, 2]], np.uint8)
    validate_semseg_sample((2, 2), mask, num_classes=3)
    with pytest.raises(ValueError, match=r"mask m\.png is 2x2 \(WxH\) but its image is 3x2"):
        validate_semseg_sample((2, 3), mask, num_classes=3, file_name="m.png")
    with pytest.raises(ValueError, match=r"label ids \[2\] outside 0\.\.1 .*\(m\.png\)"):
        validate_semseg_sample((2, 2), mask, num_classes=2, file_name="m.png")
    with pytest.raises(ValueError, match="single-channel"):
        validate_semseg_sample((2, 2), np.zeros((2, 2, 3), np.uint8), num_classes=2)


def test_validate_files(tmp_path):
    line = _write_pair(tmp_path, "a", value=4)
    (tmp_path / "s.txt").write_text(line + "\n")
    dicts = load_semseg_split(root=tmp_path, split_file=tmp_path / "s.txt")
    assert validate_semseg_files(dicts, num_classes=5) == 1
    with pytest.raises(ValueError, match=r"\[4\] outside 0\.\.3"):
        validate_semseg_files(dicts, num_classes=4)


def test_load_compares_pair_sizes_from_headers(tmp_path):
    # Before: loading succeeded and training stretched the masks silently (val: a numpy
    # broadcast error at the end of training, naming no file).
    lines = [_write_pair(tmp_path, "a"), _write_pair(tmp_path, "b"), _write_pair(tmp_path, "c")]
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "lbl" / "b.png")
    # c: stored 6x4 with EXIF orientation 8 (read as 4x6); its mask has the stored orientation.
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "img" / "c.jpg", exif=exif)
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SplitFileError) as err:
        load_semseg_split(root=tmp_path, split_file=tmp_path / "s.txt")
    msg = str(err.value)
    assert msg.startswith("2 of 3 labelled pairs cannot be used")
    assert "s.txt:2: mask " in msg and "b.png is 5x3 (WxH) but its image " in msg
    assert "s.txt:3: mask " in msg and "EXIF orientation 8" in msg and "s.txt:1" not in msg
    # Unlabelled splits and check_sizes=False do not read headers.
    assert len(load_semseg_split(root=tmp_path, split_file=tmp_path / "s.txt", labeled=False)) == 3
    assert len(load_semseg_split(root=tmp_path, split_file=tmp_path / "s.txt", check_sizes=False))


def test_split_file_with_byte_order_mark(tmp_path):
    line = _write_pair(tmp_path, "a")
    (tmp_path / "s.txt").write_text("\ufeff" + line + "\n", encoding="utf-8")
    (record,) = load_semseg_split(root=tmp_path, split_file=tmp_path / "s.txt")
    assert record["file_name"] == str(tmp_path / "img" / "a.jpg")
