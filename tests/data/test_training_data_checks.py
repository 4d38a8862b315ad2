"""Real runs of the tiny HierVL on a folder dataset with one bad file (issue 17, items 2, 3, 8):
each stops with an error that names the file, before training when it can."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import hiervl.hiervl_model  # noqa: F401  (registers the META_ARCH)
from hiervl.data.datasets import folder
from hiervl.data.datasets.semseg import SplitFileError
from hiervl.engine import HierVLTrainer
from hiervl.utils.testing import tiny_config

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "folder_test_helpers_tr", REPO / "tests/data/test_folder.py"
)
folder_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(folder_tests)
NAME = "t_runcheck"


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A folder with one labelled training image (img_00), val img_01 / img_02, unlabelled rest;
    yields (root, cfg) and unregisters afterwards."""
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))
    root = folder_tests.make_folder(tmp_path / "ds", n_labeled=3, n_unlabeled=2, hw=(40, 48))
    (root / "splits").mkdir()
    (root / "splits" / "labeled.txt").write_text("images/img_00.png masks/img_00.png\n")
    (root / "splits" / "val.txt").write_text(
        "images/img_01.png masks/img_01.png\nimages/img_02.jpg masks/img_02.png\n"
    )
    cfg = tiny_config(
        OUTPUT_DIR=str(tmp_path / "out"),
        DATASETS__TRAIN=(f"{NAME}_train_labeled",),
        DATASETS__TEST=(f"{NAME}_val",),
        SEMI__UNLABELED_DATASETS=(f"{NAME}_train_unlabeled",),
        SEMI__ENABLED=False,
        SOLVER__MAX_ITER=2,
        SOLVER__CHECKPOINT_PERIOD=100,
        MODEL__SEM_SEG_HEAD__NUM_CLASSES=3,
    )
    yield root, cfg
    for name in [n for n in DatasetCatalog.list() if n.startswith(NAME + "_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _register(root):
    folder.register_folder(root, name=NAME)


def test_val_mask_of_another_size_stops_before_training(dataset):
    # Before: training ran to the end, then the evaluation failed with a numpy broadcast error
    # that named no file.
    root, cfg = dataset
    Image.fromarray(np.zeros((90, 100), np.uint8)).save(root / "masks" / "img_02.png")
    _register(root)
    with pytest.raises(SplitFileError) as err:
        HierVLTrainer(cfg)  # builds the loaders and reads the test split: nothing trained yet
    msg = str(err.value)
    assert "val.txt:2: mask " in msg and "img_02.png is 100x90 (WxH)" in msg
    assert "img_02.jpg is 48x40" in msg


def test_mask_ids_outside_the_classes_stop_training_naming_the_file(dataset):
    # Before: with PIXEL_TEXT_WEIGHT 0 the pixels of ids >= NUM_CLASSES were ignored and the
    # run finished without a word.
    root, cfg = dataset
    cfg.MODEL.HIERVL.LOSS.PIXEL_TEXT_WEIGHT = 0.0
    bad = folder_tests.id_mask(0, (40, 48))
    bad[10:20, 10:20] = 9
    Image.fromarray(bad).save(root / "masks" / "img_00.png")
    _register(root)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(
        ValueError, match=r"ids \[9\] outside 0\.\.2 and ignore 255 \(.*img_00\.png"
    ):
        trainer.train()


def test_truncated_training_image_names_the_file(dataset):
    # Before: "OSError: image file is truncated" with no file name.
    root, cfg = dataset
    image = root / "images" / "img_00.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) * 2 // 3])
    _register(root)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(OSError, match=r"images/img_00\.png: cannot read image"):
        trainer.train()
