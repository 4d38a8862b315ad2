"""tools/visualize_data.py and tools/visualize_relevance.py on tiny splits (real tiny HierVL)."""

import importlib.util
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from hiervl.data.datasets.demo import DEMO_CLASSES, DEMO_COLORS
from hiervl.utils.testing import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"hiervl_tool_{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


visualize_data = _load("visualize_data")
visualize_relevance = _load("visualize_relevance")


def _split(tmp_path, n, size, labeled):
    """A registered split of ``n`` flat sky-over-grass images of ``size`` (h, w)."""
    name = f"test_vis_{uuid.uuid4().hex[:8]}"
    h, w = size
    records = []
    for i in range(n):
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[: h // 2], image[h // 2 :] = DEMO_COLORS[0], DEMO_COLORS[3]
        mask = np.full((h, w), 3, dtype=np.uint8)
        mask[: h // 2] = 0
        image_path, mask_path = str(tmp_path / f"{name}_{i}.png"), str(tmp_path / f"m_{i}.png")
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(mask_path)
        record = {"file_name": image_path, "image_id": i}
        if labeled:
            record["sem_seg_file_name"] = mask_path
        records.append(record)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=list(DEMO_CLASSES),
        stuff_colors=[tuple(c) for c in DEMO_COLORS],
        ignore_label=255,
        evaluator_type="sem_seg",
        labeled=labeled,
    )
    return name, records


def test_labelled_split_draws_image_and_ground_truth(tmp_path):
    name, records = _split(tmp_path, 2, (64, 96), labeled=True)
    out = tmp_path / "out"
    assert visualize_data.main(["--dataset", name, "--output", str(out)]) == 0
    assert len(os.listdir(out)) == 2
    picture = np.asarray(Image.open(out / os.path.basename(records[0]["file_name"]))).astype(int)
    assert picture.shape == (64, 192, 3)
    image = np.asarray(Image.open(records[0]["file_name"])).astype(int)
    assert np.array_equal(picture[:, :96], image)
    assert np.abs(picture[:, 96:] - image).max() > 30  # overlay edges and labels drawn


def test_pseudo_label_confidence_greys_uncertain_pixels():
    metadata = MetadataCatalog.get("hiervl_demo_val")
    image = np.full((40, 80, 3), 200, dtype=np.uint8)
    probs = torch.full((len(DEMO_CLASSES), 40, 80), 0.01)
    probs[3, :, :40] = 0.93  # confident left half (0.93 / (0.93 + 7 * 0.01) = 0.93)
    probs[3, :, 40:] = 0.30  # uncertain right half
    picture, kept = visualize_data.draw_pseudo_labels(
        image, probs / probs.sum(0), metadata, threshold=0.9, alpha=0.6
    )
    assert picture.shape == (40, 240, 3)
    assert kept == pytest.approx(0.5)
    every, kept_panel = picture[:, 80:160].astype(int), picture[:, 160:].astype(int)
    # Right half: not drawn and greyed in the kept panel; left half: same overlay in both.
    right_kept, right_every = kept_panel[5:-5, 50:75], every[5:-5, 50:75]
    assert (right_kept == round(0.25 * 200 + 0.75 * 128)).all()  # the plain image, greyed
    assert np.abs(right_every - 200).mean() > 20  # the overlay of every pixel's label
    assert np.array_equal(kept_panel[2:9, 5:30], every[2:9, 5:30])  # above the text labels


def test_unlabelled_split_uses_teacher_pseudo_labels(tmp_path, monkeypatch):
    name, records = _split(tmp_path, 2, (48, 64), labeled=False)
    cfg = tiny_config(SEMI__UNLABELED_DATASETS=(name,))
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "out"
    rc = visualize_data.main(
        ["--config-file", str(config), "--dataset", name, "--output", str(out)]
        + ["--opts", "SEMI.CONF_THRESHOLD", "1.01"]
    )
    assert rc == 0
    picture = np.asarray(Image.open(out / os.path.basename(records[1]["file_name"]))).astype(int)
    assert picture.shape == (48, 192, 3)
    image, kept = picture[:, :64], picture[:, 128:]
    # Threshold above 1: every pixel is dropped, the kept panel is the greyed image.
    assert np.abs(kept - 128).mean() < 0.5 * np.abs(image - 128).mean()


def test_relevance_probe_and_picture(tmp_path):
    name, records = _split(tmp_path, 1, (64, 64), labeled=True)
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    probe = visualize_relevance.LanguageProbe(model)
    image = np.asarray(Image.open(records[0]["file_name"]))
    result = probe(image)
    num_classes, levels = len(DEMO_CLASSES), cfg.MODEL.HIERVL.HSQG.NUM_LEVELS
    assert result["relevance"].shape == (num_classes,)
    assert result["attention"].shape == (num_classes * levels, 64, 64)
    # Each row's attention is a distribution over all feature levels: mean density ~ 1.
    mean_density = result["attention"].mean(dim=(1, 2))
    assert torch.allclose(mean_density, torch.ones_like(mean_density), atol=0.1)
    masks = result["class_masks"]
    assert masks.shape == (num_classes * levels, 64, 64) and 0 <= masks.min() <= masks.max() <= 1
    # The hooks are removed afterwards: plain inference still returns the contract's output.
    plain = model.inference([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy())}])[0]
    assert torch.allclose(plain["sem_seg"], result["sem_seg"])

    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "out"
    rc = visualize_relevance.main(
        ["--config-file", str(config), "--input", records[0]["file_name"], "--output", str(out)]
        + ["--dataset", name, "--top-k", "2"]
    )
    assert rc == 0
    (written,) = os.listdir(out)
    assert written.endswith("_relevance.png")
    assert Image.open(out / written).size[0] > 400
