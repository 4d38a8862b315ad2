"""Folder datasets: class list, palette, scanning, splits, registration, colour masks, demo export.

``make_folder`` (also used by tests/tools) builds tiny folders on disk.
"""

import hashlib
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import hiervl.data  # noqa: F401  (registers the demo names)
from hiervl.config import add_hiervl_config
from hiervl.data.datasets import folder
from hiervl.data.datasets.folder import FolderDatasetError
from hiervl.data.datasets.semseg import SplitFileError

CLASSES = ["background", "cat", "dog"]
PALETTE = [(0, 0, 0), (200, 30, 30), (30, 30, 200)]
IGNORE_COLOR = (255, 255, 255)


def id_mask(index: int, hw=(12, 16)) -> np.ndarray:
    """Vertical stripes of every class, shifted by ``index``, plus an ignore corner."""
    h, w = hw
    ids = ((np.arange(w)[None, :] // 3 + index) % len(CLASSES)).repeat(h, 0).astype(np.uint8)
    ids[:2, :2] = 255
    return ids


def make_folder(
    root: Path,
    *,
    n_labeled: int = 5,
    n_unlabeled: int = 3,
    colour: bool = False,
    classes: Sequence[str] = CLASSES,
    descriptions: Optional[Dict[str, str]] = None,
    hw=(12, 16),
) -> Path:
    """``root`` with images ``img_00..`` (png, every third jpg), masks for the first
    ``n_labeled``, ``classes.txt`` and (colour) ``palette.txt``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n_labeled + n_unlabeled):
        ext = ".jpg" if i % 3 == 2 else ".png"
        pixels = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img_{i:02d}{ext}")
        if i < n_labeled:
            ids = id_mask(i, hw)
            if colour:
                table = np.array(PALETTE + [IGNORE_COLOR] * (256 - len(PALETTE)), np.uint8)
                Image.fromarray(table[ids]).save(root / "masks" / f"img_{i:02d}.png")
            else:
                Image.fromarray(ids).save(root / "masks" / f"img_{i:02d}.png")
    descriptions = descriptions or {}
    (root / "classes.txt").write_text(
        "".join(f"{c}\t{descriptions[c]}\n" if c in descriptions else f"{c}\n" for c in classes)
    )
    if colour:
        lines = [f"{r} {g} {b}" for r, g, b in PALETTE[:-1]] + ["#1e1ec8"]
        (root / "palette.txt").write_text("\n".join(lines + ["255 255 255 ignore"]) + "\n")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Converted masks and read-only splits go to a per-test cache."""
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))


def _unregister(prefix: str) -> None:
    for name in [n for n in DatasetCatalog.list() if n.startswith(prefix + "_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_parse_classes_descriptions_and_problems():
    names, desc, problems = folder.parse_classes("sky\tblue sky\tthe sky\ncar\n\n")
    assert names == ["sky", "car"] and desc == [["blue sky", "the sky"], []]
    assert problems == []
    _, _, problems = folder.parse_classes("a\nb\na\n")
    assert problems == ["classes.txt:3: duplicate class name 'a' (first on line 1)"]
    _, _, problems = folder.parse_classes("a\n\nb\n")
    assert "classes.txt:2: empty class name" in problems[0]
    assert folder.parse_classes("\n\n")[2] == ["classes.txt: no class names (one name per line)"]


def test_parse_palette_formats_and_problems():
    pal, problems = folder.parse_palette("0 0 0\n#ff8000\n1,2,3\n9 9 9 ignore\n", 3)
    assert problems == []
    assert pal.class_colors == [(0, 0, 0), (255, 128, 0), (1, 2, 3)]
    assert pal.lookup()[(9 << 16) | (9 << 8) | 9] == 255
    _, problems = folder.parse_palette("0 0 0\n300 0 0\n", None, "p.txt")
    assert problems == ["p.txt:2: expected 'R G B' (0-255) or '#rrggbb', got '300 0 0'"]
    _, problems = folder.parse_palette("0 0 0\n0 0 0\n", None, "p.txt")
    assert problems == ["p.txt:2: colour (0, 0, 0) already used on line 1"]
    _, problems = folder.parse_palette("0 0 0\n", 2, "p.txt")
    assert "1 class colours for 2 classes" in problems[0]


def test_mask_to_ids_modes():
    ids = id_mask(0)
    p_mode = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    assert np.array_equal(folder.mask_to_ids(p_mode, None, "m.png"), ids)
    wide = Image.fromarray(ids.astype(np.uint16))
    assert np.array_equal(folder.mask_to_ids(wide, None, "m.png"), ids)
    grey_rgb = Image.fromarray(np.stack([ids] * 3, -1))
    assert np.array_equal(folder.mask_to_ids(grey_rgb, None, "m.png"), ids)
    colour = Image.fromarray(np.stack([ids, ids // 2, ids], -1))
    with pytest.raises(FolderDatasetError, match="m.png: colour mask but no palette"):
        folder.mask_to_ids(colour, None, "m.png")
    pal = folder.Palette(PALETTE, [IGNORE_COLOR])
    table = np.array(PALETTE + [IGNORE_COLOR] * 253, np.uint8)
    assert np.array_equal(folder.mask_to_ids(Image.fromarray(table[ids]), pal, "m.png"), ids)
    rgb = table[ids].copy()
    rgb[5, 5] = (1, 2, 3)
    with pytest.raises(FolderDatasetError, match=r"m.png: colours not in the palette: \(1, 2, 3\)"):
        folder.mask_to_ids(Image.fromarray(rgb), pal, "m.png")


def test_distinct_colors_are_distinct_and_stable():
    colors = folder.distinct_colors(40)
    assert len(set(colors)) == 40 and colors[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_register_id_masks_splits_and_unlabeled_pool(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3, descriptions={"cat": "a cat"})
    info = folder.register_folder(root, name="t_ids", val_fraction=0.4)
    try:
        assert info.num_classes == 3 and info.split_dir == root.resolve() / "splits"
        assert info.counts == {"train_labeled": 3, "train_unlabeled": 3, "val": 2}
        labeled = DatasetCatalog.get("t_ids_train_labeled")
        val = DatasetCatalog.get("t_ids_val")
        unlabeled = DatasetCatalog.get("t_ids_train_unlabeled")
        ids = lambda ds: [d["image_id"] for d in ds]  # noqa: E731
        assert sorted(ids(labeled) + ids(val)) == [f"images/img_{i:02d}" for i in range(5)]
        assert ids(unlabeled) == [f"images/img_{i:02d}" for i in range(5, 8)]
        assert all("sem_seg_file_name" not in d for d in unlabeled)
        assert labeled[0]["sem_seg_file_name"].startswith(str(root.resolve() / "masks"))
        meta = MetadataCatalog.get("t_ids_val")
        assert meta.stuff_classes == CLASSES and meta.ignore_label == 255
        assert meta.evaluator_type == "sem_seg"
        assert meta.stuff_colors == folder.distinct_colors(3)
        assert meta.class_descriptions == [[], ["a cat"], []]
        written = (root / "splits" / "val.txt").read_text()
        # A second registration reads the written files instead of drawing again.
        info2 = folder.register_folder(root, name="t_ids", val_fraction=0.9)
        assert info2.counts == info.counts and ids(DatasetCatalog.get("t_ids_val")) == ids(val)
        # The draw depends only on the seed and the stems, not on the folder's path.
        other = make_folder(tmp_path / "other", n_labeled=5, n_unlabeled=3)
        folder.register_folder(other, name="t_ids2", val_fraction=0.4)
        assert (other / "splits" / "val.txt").read_text() == written
        folder.register_folder(other, name="t_ids3", val_fraction=0.4, seed=1, write_splits=False)
    finally:
        _unregister("t_ids")
        _unregister("t_ids2")
        _unregister("t_ids3")


def test_colour_masks_are_converted_into_cache(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=1, colour=True)
    info = folder.register_folder(root, name="t_col", palette="palette.txt", val_fraction=0.25)
    try:
        assert MetadataCatalog.get("t_col_val").stuff_colors == PALETTE
        records = DatasetCatalog.get("t_col_train_labeled") + DatasetCatalog.get("t_col_val")
        assert len(records) == info.counts["train_labeled"] + info.counts["val"] == 4
        for record in records:
            mask_path = Path(record["sem_seg_file_name"])
            assert mask_path.is_relative_to(tmp_path / "cache" / "folders")
            with Image.open(mask_path) as m:
                assert m.mode == "L"
                index = int(Path(record["image_id"]).name.split("_")[1])
                assert np.array_equal(np.asarray(m), id_mask(index))
        # An unknown colour fails loading with the file and the colour.
        bad = np.array(Image.open(root / "masks" / "img_00.png"))
        bad[3, 3] = (7, 8, 9)
        Image.fromarray(bad).save(root / "masks" / "img_01.png")
        Image.fromarray(bad).save(root / "masks" / "img_00.png")
        with pytest.raises(FolderDatasetError, match=r"img_0[01].png: colours not in the palette"):
            DatasetCatalog.get("t_col_train_labeled")
    finally:
        _unregister("t_col")


def test_colour_masks_without_palette_fail_on_load(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=3, n_unlabeled=1, colour=True)
    folder.register_folder(root, name="t_nopal", val_fraction=0.3)
    try:
        with pytest.raises(FolderDatasetError, match="colour mask but no palette"):
            DatasetCatalog.get("t_nopal_val")
    finally:
        _unregister("t_nopal")


def test_read_only_folder_writes_splits_to_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "ds").resolve()
    original = folder.write_folder_splits

    def refuse_in_folder(splits, directory):
        if Path(directory) == root / "splits":
            raise PermissionError(13, "Read-only", str(directory))
        return original(splits, directory)

    monkeypatch.setattr(folder.splits, "write_folder_splits", refuse_in_folder)
    info = folder.register_folder(root, name="t_ro")
    try:
        assert not (root / "splits").exists()
        assert info.split_dir == folder.folder_cache_dir(root) / "splits"
        assert folder.find_split_dir(root) == info.split_dir
        assert len(DatasetCatalog.get("t_ro_val")) == 1
    finally:
        _unregister("t_ro")


def test_user_split_files(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=2)
    (root / "splits").mkdir()
    (root / "splits" / "labeled.txt").write_text(
        "images/img_03.png masks/img_03.png\nimages/img_00.png masks/img_00.png\n"
    )
    with pytest.raises(FolderDatasetError, match=r"split files \['val.txt'\] missing"):
        folder.register_folder(root, name="t_user")
    (root / "splits" / "val.txt").write_text("# held out\nimages/img_01.png masks/img_01.png\n")
    info = folder.register_folder(root, name="t_user")
    try:
        assert info.counts == {"train_labeled": 2, "train_unlabeled": 2, "val": 1}
        assert [d["image_id"] for d in DatasetCatalog.get("t_user_train_labeled")] == [
            "images/img_03",
            "images/img_00",
        ]
        # No unlabeled.txt: the pool is every image without a mask.
        unlabeled = DatasetCatalog.get("t_user_train_unlabeled")
        assert [d["image_id"] for d in unlabeled] == ["images/img_04", "images/img_05"]
    finally:
        _unregister("t_user")


def test_no_unlabeled_images_and_too_few_labelled(tmp_path):
    root = make_folder(tmp_path / "ds", n_labeled=3, n_unlabeled=0)
    folder.register_folder(root, name="t_nounl")
    try:
        with pytest.raises(FolderDatasetError, match="SEMI.ENABLED False"):
            DatasetCatalog.get("t_nounl_train_unlabeled")
    finally:
        _unregister("t_nounl")
    with pytest.raises(FolderDatasetError, match="1 labelled image"):
        folder.register_folder(make_folder(tmp_path / "one", n_labeled=1), name="t_one")
    dup = make_folder(tmp_path / "dup")
    Image.open(dup / "images" / "img_00.png").save(dup / "images" / "img_00.bmp")
    with pytest.raises(FolderDatasetError, match="images/img_00.bmp, images/img_00.png"):
        folder.register_folder(dup, name="t_one")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "classes.txt").write_text("a\nb\n")
    with pytest.raises(FolderDatasetError, match="No images/ folder"):
        folder.register_folder(tmp_path / "empty", name="t_one")


def test_register_folder_from_cfg(tmp_path):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    assert folder.register_folder_from_cfg(cfg) is None
    root = make_folder(tmp_path / "ds", colour=True)
    cfg.merge_from_list(
        ["DATASETS.CUSTOM.ROOT", str(root), "DATASETS.CUSTOM.NAME", "t_cfg"]
        + [
            "DATASETS.CUSTOM.PALETTE",
            str(root / "palette.txt"),
            "DATASETS.CUSTOM.VAL_FRACTION",
            0.2,
        ]
    )
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 21
    info = folder.register_folder_from_cfg(cfg)
    try:
        assert info.num_classes == 3 and info.counts["val"] == 1
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
        cfg.freeze()
        assert folder.register_folder_from_cfg(cfg).num_classes == 3  # frozen, matching: fine
        cfg.defrost()
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
        cfg.freeze()
        with pytest.raises(FolderDatasetError, match="NUM_CLASSES=5 but .* has 3 classes"):
            folder.register_folder_from_cfg(cfg)
        assert {"t_cfg_train_labeled", "t_cfg_train_unlabeled", "t_cfg_val"} <= set(
            DatasetCatalog.list()
        )
    finally:
        _unregister("t_cfg")


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_demo_exported_as_folder_gives_identical_dataset_dicts(tmp_path, monkeypatch):
    monkeypatch.delenv("HIERVL_CACHE_DIR")  # the demo's usual cache, shared with other tests
    dest = folder.export_demo_as_folder(tmp_path / "demo_folder")
    info = folder.register_folder(dest, name="t_demo", palette="palette.txt")
    try:
        for split in ("train_labeled", "train_unlabeled", "val"):
            built_in = DatasetCatalog.get(f"hiervl_demo_{split}")
            exported = DatasetCatalog.get(f"t_demo_{split}")
            src_root = Path(MetadataCatalog.get(f"hiervl_demo_{split}").image_root)

            def normalise(records, base):
                return [
                    {
                        k: (str(Path(v).relative_to(base)), _digest(v)) if k != "image_id" else v
                        for k, v in r.items()
                    }
                    for r in records
                ]

            assert normalise(exported, dest.resolve()) == normalise(built_in, src_root)
            assert info.counts[split] == len(built_in)
            a, b = MetadataCatalog.get(f"t_demo_{split}"), MetadataCatalog.get(
                f"hiervl_demo_{split}"
            )
            for key in ("stuff_classes", "stuff_colors", "ignore_label", "evaluator_type"):
                assert getattr(a, key) == getattr(b, key), key
            assert [list(d) for d in a.class_descriptions] == [
                list(d) for d in b.class_descriptions
            ]
    finally:
        _unregister("t_demo")


def test_config_template_names_match_the_registration(tmp_path):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.merge_from_file(
        str(Path(__file__).resolve().parents[2] / "configs/custom/hiervl_folder.yaml")
    )
    root = make_folder(tmp_path / "ds")
    cfg.merge_from_list(["DATASETS.CUSTOM.ROOT", str(root)])
    info = folder.register_folder_from_cfg(cfg)
    try:
        assert cfg.DATASETS.TRAIN == (info.names["train_labeled"],)
        assert cfg.DATASETS.TEST == (info.names["val"],)
        assert cfg.SEMI.UNLABELED_DATASETS == (info.names["train_unlabeled"],)
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(CLASSES)
    finally:
        _unregister("custom")


# ---- issue 17: byte-order marks, stale split files, pairs of different sizes -----------------


def test_class_list_and_palette_with_byte_order_mark(tmp_path):
    # Windows editors write a BOM: before, class 0 was registered as "\ufeffbackground".
    root = make_folder(tmp_path / "ds", colour=True)
    for name in ("classes.txt", "palette.txt"):
        text = (root / name).read_text(encoding="utf-8")
        (root / name).write_text("\ufeff" + text, encoding="utf-8")
    folder.register_folder(root, name="t_bom", palette="palette.txt")
    try:
        assert MetadataCatalog.get("t_bom_val").stuff_classes == CLASSES
        assert MetadataCatalog.get("t_bom_val").stuff_colors == PALETTE
    finally:
        _unregister("t_bom")


def _add_image(root: Path, stem: str, mask: bool) -> None:
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "images" / f"{stem}.png")
    if mask:
        Image.fromarray(id_mask(1)).save(root / "masks" / f"{stem}.png")


def test_files_added_after_the_split_files_are_named_not_resplit(tmp_path, caplog):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3).resolve()
    folder.register_folder(root, name="t_stale")  # writes splits/ (with unlabeled.txt)
    try:
        before = {p.name: p.read_text() for p in (root / "splits").iterdir()}
        _add_image(root, "new_labelled", mask=True)
        _add_image(root, "new_unlabelled", mask=False)
        Image.fromarray(id_mask(2)).save(root / "masks" / "img_06.png")  # listed as unlabelled
        with caplog.at_level(logging.WARNING, logger="hiervl.data.datasets.folder"):
            info = folder.register_folder(root, name="t_stale")
        # Nothing is re-split: the split files and counts are those written before.
        assert {p.name: p.read_text() for p in (root / "splits").iterdir()} == before
        assert info.counts == {"train_labeled": 4, "train_unlabeled": 3, "val": 1}
        text = caplog.text
        assert "1 image(s) with a mask, in no split file (images/new_labelled.png)" in text
        assert "1 image(s) listed in unlabeled.txt that have a mask now (images/img_06.png)" in text
        assert "1 image(s) without a mask, in no split file (images/new_unlabelled.png)" in text
        assert f"python tools/make_splits.py --folder {root}" in text
        assert f"delete {root / 'splits'}" in text
        # refresh_splits: the new files join the training splits, val and listed ones stay.
        scan = folder.scan_folder(root)
        splits = folder.read_folder_splits(root / "splits", scan)
        refreshed = folder.refresh_splits(scan, splits)
        assert refreshed.val == splits.val and refreshed.labeled[:4] == splits.labeled
        assert refreshed.labeled[4:] == [
            ("images/img_06.png", "masks/img_06.png"),
            ("images/new_labelled.png", "masks/new_labelled.png"),
        ]
        assert refreshed.unlabeled == ["images/img_05.jpg", "images/img_07.png"] + [
            "images/new_unlabelled.png"
        ]
        assert not folder.find_stale_splits(scan, refreshed)
    finally:
        _unregister("t_stale")


def test_mask_of_another_size_fails_when_the_split_is_loaded(tmp_path):
    # The pair is named before training (the trainer loads DATASETS.TRAIN and TEST first).
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=1)
    Image.fromarray(np.zeros((90, 100), np.uint8)).save(root / "masks" / "img_02.png")
    folder.register_folder(root, name="t_size", val_fraction=0.4)
    try:
        with pytest.raises(SplitFileError, match=r"masks/img_02\.png is 100x90 \(WxH\)"):
            DatasetCatalog.get("t_size_train_labeled") + DatasetCatalog.get("t_size_val")
    finally:
        _unregister("t_size")


def test_parse_ignore_ids_and_class_lines_after_it():
    text = "sky\ncar\nignore: 11\n"
    names, _, problems = folder.parse_classes(text)
    assert names == ["sky", "car"] and problems == []  # the ignore line is no class
    assert folder.parse_ignore_ids(text, 2) == ([11], [])
    assert folder.parse_ignore_ids("a\nIgnore: 12, 11\nignore: 11\n", 1) == ([11, 12], [])
    assert folder.parse_ignore_ids("a\nb\n", 2) == ([], [])
    _, problems = folder.parse_ignore_ids("a\nb\nignore: 1\n", 2)
    assert problems == [
        "classes.txt:3: ignore id 1 is class id 1 (classes are 0..1); an ignore id must be no class"
    ]
    _, problems = folder.parse_ignore_ids("a\nignore: void\n", 1)
    assert problems == [
        "classes.txt:2: expected 'ignore: <id>' with mask ids 0-255, got 'ignore: void'"
    ]
    # "Line i is class id i-1": a class after the ignore line would make its id ambiguous (is
    # the ignore line counted?), so the ignore line must come last.
    _, _, problems = folder.parse_classes("a\nignore: 9\nb\n")
    assert problems == [
        "classes.txt:3: class line after the 'ignore:' line 2 (line i is class id i-1: put "
        "'ignore:' after the last class)"
    ]


def test_declared_ignore_id_is_255_for_training_and_evaluation(tmp_path):
    """CamVid's void is id 11: ``ignore: 11`` in classes.txt. The masks are converted once into
    the cache with 11 -> 255 (the ``ignore_label`` of the metadata), so the mapper, the
    trainer and SemSegEvaluator all leave those pixels out."""
    from hiervl.evaluation import build_semseg_evaluator
    from hiervl.utils.testing import tiny_config

    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=1)
    for i in range(4):  # the ignore corner of every mask as id 7 instead of 255
        ids = id_mask(i)
        ids[ids == 255] = 7
        Image.fromarray(ids).save(root / "masks" / f"img_{i:02d}.png")
    with open(root / "classes.txt", "a") as f:
        f.write("ignore: 7\n")
    info = folder.register_folder(root, name="t_ign", val_fraction=0.25)
    try:
        assert info.num_classes == 3
        val = DatasetCatalog.get("t_ign_val")
        meta = MetadataCatalog.get("t_ign_val")
        assert meta.ignore_label == 255
        for record in DatasetCatalog.get("t_ign_train_labeled") + val:
            assert Path(record["sem_seg_file_name"]).is_relative_to(tmp_path / "cache")
            index = int(Path(record["image_id"]).name.split("_")[1])
            assert np.array_equal(
                np.asarray(Image.open(record["sem_seg_file_name"])), id_mask(index)
            )
        # Evaluation: a prediction right on every class pixel and wrong on the ignored corner.
        evaluator = build_semseg_evaluator(tiny_config(), "t_ign_val", None)
        evaluator.reset()
        for record in val:
            truth = id_mask(int(Path(record["image_id"]).name.split("_")[1]))
            pred = np.where(truth == 255, 0, truth)
            pred[:2, :2] = 1  # the ignored corner, where id 7 was: not a class, not counted
            scores = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), 3).permute(2, 0, 1)
            evaluator.process([record], [{"sem_seg": scores.float()}])
        assert evaluator.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)
    finally:
        _unregister("t_ign")
    (root / "classes.txt").write_text("background\ncat\ndog\nignore: 2\n")
    with pytest.raises(FolderDatasetError, match="ignore id 2 is class id 2"):
        folder.register_folder(root, name="t_ign2")
