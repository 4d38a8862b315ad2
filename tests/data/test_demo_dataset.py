"""The embedded demo dataset: generation, determinism, registration, cache safety."""

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import hiervl.data  # noqa: F401  (registers the built-in names)
from hiervl.data.datasets import demo
from hiervl.data.datasets.semseg import validate_semseg_files


def _digest(root: Path):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo_registered(tmp_path_factory):
    """The default demo names re-registered onto a fresh root, generated once (timed)."""
    root = tmp_path_factory.mktemp("demo_cache") / "hiervl_demo"
    names = [name for name, _, _ in demo.demo_dataset_names()]

    def _unregister():
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

    _unregister()
    demo.register_demo(root)
    start = time.perf_counter()
    yield root, names, start
    _unregister()
    demo.register_demo()


def test_names_registered_at_import_without_generating():
    registered = DatasetCatalog.list()
    for name in [
        "hiervl_demo_train_labeled",
        "hiervl_demo_train_unlabeled",
        "hiervl_demo_train_8_labeled",
        "hiervl_demo_train_8_unlabeled",
        "hiervl_demo_train_16_labeled",
        "hiervl_demo_train_16_unlabeled",
        "hiervl_demo_val",
    ]:
        assert name in registered


def test_lazy_generation_counts_and_metadata(demo_registered):
    root, names, start = demo_registered
    assert not root.exists()
    labeled = DatasetCatalog.get("hiervl_demo_train_labeled")
    elapsed = time.perf_counter() - start
    assert elapsed < 20.0, f"demo generation took {elapsed:.1f}s"
    assert root.is_dir()
    unlabeled = DatasetCatalog.get("hiervl_demo_train_unlabeled")
    val = DatasetCatalog.get("hiervl_demo_val")
    assert len(labeled) == demo.DEMO_DEFAULT_BUDGET
    assert len(labeled) + len(unlabeled) == demo.DEMO_NUM_TRAIN
    assert len(val) == demo.DEMO_NUM_VAL
    assert all("sem_seg_file_name" not in d for d in unlabeled)
    l8 = {d["file_name"] for d in DatasetCatalog.get("hiervl_demo_train_8_labeled")}
    l16 = {d["file_name"] for d in labeled}
    assert len(l8) == 8 and l8 < l16  # nested budgets
    assert not l16 & {d["file_name"] for d in unlabeled}
    meta = MetadataCatalog.get("hiervl_demo_val")
    assert meta.stuff_classes == demo.DEMO_CLASSES
    assert len(meta.stuff_colors) == len(meta.stuff_classes)
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert len(meta.class_descriptions) == len(demo.DEMO_CLASSES)
    assert validate_semseg_files(val, num_classes=len(demo.DEMO_CLASSES)) == len(val)


def test_every_class_occurs(demo_registered):
    DatasetCatalog.get("hiervl_demo_val")
    counts = np.zeros(256, np.int64)
    for d in DatasetCatalog.get("hiervl_demo_train_unlabeled")[:80]:
        mask = np.asarray(Image.open(d["file_name"].replace("images/", "masks/")))
        counts += np.bincount(mask.ravel(), minlength=256)
    assert (counts[: len(demo.DEMO_CLASSES)] > 0).all()
    image = np.asarray(Image.open(d["file_name"]))
    assert image.shape == (demo.DEMO_IMAGE_SIZE, demo.DEMO_IMAGE_SIZE, 3)


def test_same_seed_same_bytes(tmp_path):
    kw = dict(num_train=5, num_val=2, budgets=(2,), image_size=64)
    a = _digest(demo.generate_demo_dataset(tmp_path / "a", seed=3, **kw))
    b = _digest(demo.generate_demo_dataset(tmp_path / "b", seed=3, **kw))
    c = _digest(demo.generate_demo_dataset(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert a["images/train/00000.png"] != c["images/train/00000.png"]
    assert sorted(a) == sorted(c)
    assert "splits/hiervl_demo/2/labeled.txt" in a and "splits/hiervl_demo/val.txt" in a


def test_budget_larger_than_train_rejected(tmp_path):
    with pytest.raises(ValueError, match="exceed"):
        demo.generate_demo_dataset(tmp_path, num_train=3, num_val=1, budgets=(4,))


def test_prepare_loses_race_gracefully(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "demo"

    def _other_process_wins(out_dir, **kwargs):
        root.mkdir(parents=True)
        (root / "marker").write_text("first")
        Path(out_dir, "partial").write_text("x")

    monkeypatch.setattr(demo, "generate_demo_dataset", _other_process_wins)
    assert demo.prepare_demo_dataset(root) == root
    assert (root / "marker").read_text() == "first"
    assert sorted(p.name for p in root.parent.iterdir()) == ["demo"]  # temp dir cleaned


def test_cache_dir_is_versioned(monkeypatch, tmp_path):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path))
    assert demo.demo_cache_dir() == tmp_path
    assert demo.demo_root().parent == tmp_path / "hiervl_demo"
    assert f"v{demo.GENERATOR_VERSION}_" in demo.demo_root().name
