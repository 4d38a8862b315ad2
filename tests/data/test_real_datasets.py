"""VOC / COCO / ADE20K / Cityscapes on miniature copies in the real file formats.

Each test fabricates a tiny layout (JPEGs, palette PNGs, SBD ``.mat``, a COCO json, raw ADE and
Cityscapes label PNGs), runs the preparation script and ``tools/make_splits.py``, registers the
splits under a test prefix, and checks counts, label mapping and error messages.
"""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hiervl.data.datasets.ade20k import ADE20K_SPEC
from hiervl.data.datasets.cityscapes import CITYSCAPES_SPEC
from hiervl.data.datasets.coco import COCO_CLASSES, COCO_SPEC, _THINGS
from hiervl.data.datasets.semi_splits import register_semi_dataset
from hiervl.data.datasets.semseg import SplitFileError, validate_semseg_files
from hiervl.data.datasets.voc import VOC_COLORS, VOC_SPEC

REPO = Path(__file__).resolve().parents[2]


def _script(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _jpg(path: Path, h=8, w=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _png(path: Path, array: np.ndarray, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    if palette is not None:
        img = img.convert("P")
        img.putpalette([v for rgb in palette for v in rgb] + [0] * (768 - 3 * len(palette)))
    img.save(path)


def _mask(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _register(spec, root, prefix, names, budgets):
    names += register_semi_dataset(dataclasses.replace(spec, budgets=budgets), root, prefix)


def _mini_voc(d: Path) -> Path:
    voc = d / "VOCdevkit" / "VOC2012"
    for i in ["a", "b", "c", "d", "e", "v"]:
        _jpg(voc / "JPEGImages" / f"{i}.jpg")
    seg = np.zeros((8, 10), np.uint8)
    seg[2:5, 2:6], seg[1, :] = 15, 255  # person + boundary
    for i in ["a", "b", "v"]:
        _png(voc / "SegmentationClass" / f"{i}.png", seg, palette=list(VOC_COLORS))
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("v\n")
    cls = d / "SBD" / "dataset" / "cls"
    cls.mkdir(parents=True)
    for i, label in [("a", 3), ("c", 7), ("d", 12), ("e", 20)]:
        m = np.zeros((8, 10), np.uint8)
        m[4:, :5] = label
        gt = {"Segmentation": m, "Boundaries": np.zeros((1, 1)), "CategoriesPresent": label}
        scipy.io.savemat(cls / f"{i}.mat", {"GTcls": gt})
    return voc


def test_voc_sbd_prepare_splits_and_registration(tmp_path, registered):
    voc = _mini_voc(tmp_path)
    assert _script("datasets/prepare_voc_sem_seg.py")(["--datasets-dir", str(tmp_path)]) == 0
    aug = voc / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == ["a", "b", "c", "d", "e", "v"]
    a = _mask(aug / "a.png")  # VOC's own mask wins over SBD's
    assert Image.open(aug / "a.png").mode == "L" and a[3, 3] == 15 and a[1, 0] == 255
    c = _mask(aug / "c.png")
    assert c[5, 0] == 7 and c[0, 0] == 0 and set(np.unique(c)) == {0, 7}

    _script("tools/make_splits.py")(
        ["--dataset", "voc", "--datasets-dir", str(tmp_path), "--budgets", "1", "2"]
    )
    _register(VOC_SPEC, voc, "t_voc", registered, (1, 2))
    lab1 = DatasetCatalog.get("t_voc_train_1_labeled")
    lab2 = DatasetCatalog.get("t_voc_train_2_labeled")
    unl1 = DatasetCatalog.get("t_voc_train_1_unlabeled")
    val = DatasetCatalog.get("t_voc_val")
    ids = lambda ds: {Path(d["file_name"]).stem for d in ds}  # noqa: E731
    assert ids(lab2) == {"a", "b"} and ids(lab1) < ids(lab2)  # drawn from the originals
    assert ids(unl1) == {"a", "b", "c", "d", "e"} - ids(lab1) and len(unl1) == 4
    assert ids(val) == {"v"}
    assert validate_semseg_files(lab2 + val, num_classes=21) == 3
    meta = MetadataCatalog.get("t_voc_val")
    assert meta.stuff_classes[15] == "person" and meta.evaluator_type == "sem_seg"

    # A published UniMatch line names SegmentationClass/: read from SegmentationClassAug/.
    pub = voc / "splits" / "pascal" / "92"
    pub.mkdir(parents=True)
    (pub / "labeled.txt").write_text("JPEGImages/c.jpg SegmentationClass/c.png\n")
    _register(VOC_SPEC, voc, "t_vocpub", registered, (92,))
    (d,) = DatasetCatalog.get("t_vocpub_train_92_labeled")
    assert d["sem_seg_file_name"] == str(aug / "c.png")


def test_coco_category_mapping_and_overlaps(tmp_path, registered):
    coco = tmp_path / "coco"
    images, anns = [], []
    for split, ids in (("train2017", [1, 2, 3]), ("val2017", [4])):
        for i in ids:
            _jpg(coco / split / f"{i:012d}.jpg", h=20, w=20)
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": 20, "width": 20})

    def box(ann_id, image_id, cat, x0, y0, x1, y1, crowd=0):  # noqa: E306
        poly = [x0, y0, x1, y0, x1, y1, x0, y1]
        area = float((x1 - x0) * (y1 - y0))
        return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": [poly],
                "area": area, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": crowd}  # fmt: skip

    anns = [
        box(10, 1, 1, 0, 0, 16, 16),  # person, large
        box(11, 1, 90, 4, 4, 8, 8),  # toothbrush on top (smaller)
        box(12, 2, 13, 2, 2, 10, 10),  # stop sign: id 13 → 12 (id 12 unused by COCO)
        box(13, 4, 1, 0, 0, 5, 5),
    ]
    cats = [{"id": c["id"], "name": c["name"], "supercategory": "x"} for c in _THINGS]
    (coco / "annotations").mkdir(parents=True)
    for split, ids in (("train2017", {1, 2, 3}), ("val2017", {4})):
        data = {
            "images": [im for im in images if im["id"] in ids],
            "annotations": [a for a in anns if a["image_id"] in ids],
            "categories": cats,
        }
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    assert _script("datasets/prepare_coco_sem_seg.py")(["--datasets-dir", str(tmp_path)]) == 0
    m1 = _mask(coco / "masks" / "000000000001.png")
    assert m1[1, 1] == 1 and m1[5, 5] == 80 and m1[18, 18] == 0
    assert COCO_CLASSES[80] == "toothbrush" and COCO_CLASSES[12] == "stop sign"
    m2 = _mask(coco / "masks" / "000000000002.png")
    assert set(np.unique(m2)) == {0, 12}
    assert not _mask(coco / "masks" / "000000000003.png").any()

    # A published fraction-named folder (UniMatch's 1_512 = 232 labelled images) is read.
    pub = coco / "splits" / "coco"
    (pub / "1_512").mkdir(parents=True)
    (pub / "1_512" / "labeled.txt").write_text(
        "train2017/000000000001.jpg masks/000000000001.png\n"
    )
    (pub / "1_512" / "unlabeled.txt").write_text(
        "train2017/000000000002.jpg masks/000000000002.png\ntrain2017/000000000003.jpg\n"
    )
    (pub / "val.txt").write_text("val2017/000000000004.jpg masks/000000000004.png\n")
    _register(COCO_SPEC, coco, "t_coco", registered, (232,))
    assert len(DatasetCatalog.get("t_coco_train_232_labeled")) == 1
    assert len(DatasetCatalog.get("t_coco_train_232_unlabeled")) == 2
    assert validate_semseg_files(DatasetCatalog.get("t_coco_val"), num_classes=81) == 1
    assert len(MetadataCatalog.get("t_coco_val").stuff_classes) == 81


def test_ade20k_reduce_zero_label(tmp_path, registered):
    ade = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150], [2, 0, 75]], np.uint8)
    for split, stem in (("training", "ADE_train_00000001"), ("training", "ADE_train_00000002"),
                        ("validation", "ADE_val_00000001")):  # fmt: skip
        _jpg(ade / "images" / split / f"{stem}.jpg", h=2, w=3)
        _png(ade / "annotations" / split / f"{stem}.png", raw)
    assert _script("datasets/prepare_ade20k_sem_seg.py")(["--datasets-dir", str(tmp_path)]) == 0
    out = _mask(ade / "annotations_detectron2" / "validation" / "ADE_val_00000001.png")
    assert out.tolist() == [[255, 0, 149], [1, 255, 74]]
    _script("tools/make_splits.py")(
        ["--dataset", "ade20k", "--datasets-dir", str(tmp_path), "--budgets", "1"]
    )
    # The published val.txt names the raw annotations/: read from annotations_detectron2/.
    (ade / "splits" / "ade" / "val.txt").write_text(
        "images/validation/ADE_val_00000001.jpg annotations/validation/ADE_val_00000001.png\n"
    )
    _register(ADE20K_SPEC, ade, "t_ade", registered, (1,))
    (v,) = DatasetCatalog.get("t_ade_val")
    assert "annotations_detectron2/validation" in v["sem_seg_file_name"]
    assert len(DatasetCatalog.get("t_ade_train_1_labeled")) == 1
    assert len(DatasetCatalog.get("t_ade_train_1_unlabeled")) == 1
    assert len(MetadataCatalog.get("t_ade_val").stuff_classes) == 150


def test_cityscapes_train_ids(tmp_path, registered):
    cs = tmp_path / "cityscapes"
    ids = np.array([[7, 26, 0], [33, 24, 255], [21, 6, 31]], np.uint8)
    for split, city, n in (("train", "aachen", 3), ("val", "lindau", 1)):
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            _jpg(cs / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", h=3, w=3)
            _png(cs / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    main = _script("datasets/prepare_cityscapes_sem_seg.py")
    assert main(["--datasets-dir", str(tmp_path)]) == 0
    out = _mask(cs / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png")
    assert out.tolist() == [[0, 13, 255], [18, 11, 255], [8, 255, 16]]
    _script("tools/make_splits.py")(
        ["--dataset", "cityscapes", "--datasets-dir", str(tmp_path), "--budgets", "2"]
    )
    _register(CITYSCAPES_SPEC, cs, "t_cs", registered, (2,))
    assert len(DatasetCatalog.get("t_cs_train_2_labeled")) == 2
    assert len(DatasetCatalog.get("t_cs_train_2_unlabeled")) == 1
    val = DatasetCatalog.get("t_cs_val")
    assert validate_semseg_files(val, num_classes=19) == 1


def test_make_splits_seeded_and_refuses_overwrite(tmp_path):
    _mini_voc(tmp_path)
    _script("datasets/prepare_voc_sem_seg.py")(["--datasets-dir", str(tmp_path)])
    make = _script("tools/make_splits.py")
    args = ["--dataset", "voc", "--datasets-dir", str(tmp_path), "--budgets", "1"]
    make(args + ["--seed", "3"])
    split = tmp_path / "VOCdevkit/VOC2012/splits/pascal/1/labeled.txt"
    first = split.read_text()
    with pytest.raises(FileExistsError, match="--force"):
        make(args)
    make(args + ["--seed", "3", "--force"])
    assert split.read_text() == first
    with pytest.raises(ValueError, match="exceed the 2 candidate"):
        make(["--dataset", "voc", "--datasets-dir", str(tmp_path), "--budgets", "5", "--force"])


def test_errors_name_layout_commands_and_lines(tmp_path, registered):
    _register(VOC_SPEC, tmp_path / "nowhere", "t_err", registered, (92,))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("t_err_train_92_labeled")
    msg = str(err.value)
    assert "Expected layout" in msg and "JPEGImages" in msg
    assert "python datasets/prepare_voc_sem_seg.py" in msg
    assert "python tools/make_splits.py --dataset voc" in msg

    voc = _mini_voc(tmp_path)
    _register(VOC_SPEC, voc, "t_err2", registered, (92,))
    with pytest.raises(FileNotFoundError, match="(?s)SegmentationClassAug not found.*prepare_voc"):
        DatasetCatalog.get("t_err2_val")
    _script("datasets/prepare_voc_sem_seg.py")(["--datasets-dir", str(tmp_path)])
    with pytest.raises(
        FileNotFoundError, match=r"(?s)val\.txt not found.*make_splits\.py --dataset"
    ):
        DatasetCatalog.get("t_err2_val")
    split_dir = voc / "splits" / "pascal"
    split_dir.mkdir(parents=True)
    (split_dir / "val.txt").write_text(
        "JPEGImages/v.jpg SegmentationClassAug/v.png\nJPEGImages/zz.jpg SegmentationClassAug/v.png\n"
    )
    with pytest.raises(SplitFileError, match=r"val\.txt:2: file not found: .*zz\.jpg"):
        DatasetCatalog.get("t_err2_val")
    (split_dir / "val.txt").write_text("JPEGImages/v.jpg SegmentationClassAug/zz.png\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)val\.txt:1: mask .*zz\.png not found"):
        DatasetCatalog.get("t_err2_val")


def test_builtin_names_registered():
    import hiervl.data  # noqa: F401

    names = set(DatasetCatalog.list())
    for spec, budgets in ((VOC_SPEC, (92, 1464)), (COCO_SPEC, (232, 3697)),
                          (ADE20K_SPEC, (158, 2526)), (CITYSCAPES_SPEC, (100, 1488))):  # fmt: skip
        for n in budgets:
            assert f"{spec.prefix}_train_{n}_labeled" in names
            assert f"{spec.prefix}_train_{n}_unlabeled" in names
        assert f"{spec.prefix}_val" in names
    assert MetadataCatalog.get("ade20k_sem_seg_val").split_file.endswith("splits/ade/val.txt")


def test_ade20k_validation_only_download(tmp_path, registered, caplog):
    # Before: prepare stopped with FileNotFoundError .../annotations/training, had no way to
    # prepare one split, and make_splits said "run prepare" and could not write val.txt alone.
    ade = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150], [2, 0, 75]], np.uint8)
    _jpg(ade / "images" / "validation" / "ADE_val_00000001.jpg", h=2, w=3)
    _png(ade / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    prepare = _script("datasets/prepare_ade20k_sem_seg.py")
    with pytest.raises(FileNotFoundError, match=r"split 'training' is missing: .*annotations"):
        prepare(["--datasets-dir", str(tmp_path), "--splits", "training"])
    with caplog.at_level("WARNING"):
        assert prepare(["--datasets-dir", str(tmp_path)]) == 0
    assert "split 'training' skipped" in caplog.text and "--splits validation" in caplog.text
    assert (ade / "annotations_detectron2" / "validation" / "ADE_val_00000001.png").is_file()
    assert not (ade / "annotations_detectron2" / "training").exists()

    make = _script("tools/make_splits.py")
    args = ["--dataset", "ade20k", "--datasets-dir", str(tmp_path), "--budgets", "1"]
    with pytest.raises(
        FileNotFoundError, match=r"ade20k split 'train' is missing: no train images"
    ):
        make(args + ["--splits", "train"])
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert make(args) == 0  # val.txt alone, the missing train split named
    assert "ade20k split 'train' skipped" in caplog.text
    split_dir = ade / "splits" / "ade"
    assert sorted(p.name for p in split_dir.iterdir()) == ["val.txt"]
    _register(ADE20K_SPEC, ade, "t_adeval", registered, (1,))
    (record,) = DatasetCatalog.get("t_adeval_val")
    assert record["sem_seg_file_name"].endswith(
        "annotations_detectron2/validation/ADE_val_00000001.png"
    )
    # Images without converted masks: the message names the split and the command.
    _jpg(ade / "images" / "training" / "ADE_train_00000001.jpg", h=2, w=3)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)1 of 1 train masks not found.*prepare_ade20k"
    ):
        make(args + ["--splits", "train"])


def test_prepare_cityscapes_and_coco_per_split(tmp_path, caplog):
    cs = tmp_path / "cityscapes"
    ids = np.array([[7, 26], [0, 24]], np.uint8)
    _png(cs / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", ids)
    main = _script("datasets/prepare_cityscapes_sem_seg.py")
    with caplog.at_level("WARNING"):
        assert main(["--datasets-dir", str(tmp_path)]) == 0
    assert "Cityscapes split 'train' skipped" in caplog.text
    assert (cs / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png").is_file()
    with pytest.raises(FileNotFoundError, match=r"Cityscapes split 'train' is missing"):
        main(["--datasets-dir", str(tmp_path), "--splits", "train", "val"])
    with pytest.raises(FileNotFoundError, match=r"COCO split 'train2017' is missing: .*json"):
        _script("datasets/prepare_coco_sem_seg.py")(["--datasets-dir", str(tmp_path)])


def test_select_splits():
    from hiervl.data.datasets.preparation import select_splits

    missing = {"train": "x not found", "val": None}
    assert select_splits(missing, None, dataset="D") == ["val"]
    assert select_splits(missing, ["val"], dataset="D") == ["val"]
    with pytest.raises(
        FileNotFoundError, match="D split 'train' is missing: x not found; pass --splits val"
    ):
        select_splits(missing, ["train", "val"], dataset="D")
    with pytest.raises(FileNotFoundError, match="D split 'val' is missing: y"):
        select_splits({"train": "x", "val": "y"}, None, dataset="D")
