"""HierVLSemSegEvaluator against a confusion matrix computed here, on hand-made masks."""

import json
import logging
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hiervl.data.image_io import load_semseg_mask
from hiervl.evaluation import build_semseg_evaluator
from hiervl.utils.testing import tiny_config

CLASSES = ["sky", "tree", "road"]
IGNORE = 255


def _register(tmp_path, gts, classes=CLASSES):
    """Write ``gts`` as PNG masks and register them as a split; returns (name, file names)."""
    name = f"test_eval_{uuid.uuid4().hex[:8]}"
    records = []
    for i, gt in enumerate(gts):
        mask_path = os.path.join(tmp_path, f"mask_{i}.png")
        Image.fromarray(gt.astype(np.uint8)).save(mask_path)
        records.append(
            {
                "file_name": os.path.join(tmp_path, f"image_{i}.jpg"),
                "sem_seg_file_name": mask_path,
                "image_id": i,
                "height": gt.shape[0],
                "width": gt.shape[1],
            }
        )
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=list(classes), ignore_label=IGNORE, evaluator_type="sem_seg"
    )
    return name, records


def _reference_metrics(gts, preds, num_classes):
    """Confusion matrix over labelled pixels and the standard metrics, in percent."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)  # [gt, pred]
    for gt, pred in zip(gts, preds):
        keep = gt != IGNORE
        for g, p in zip(gt[keep].tolist(), pred[keep].tolist()):
            conf[g, p] += 1
    tp = np.diag(conf).astype(float)
    gt_count = conf.sum(axis=1).astype(float)
    pred_count = conf.sum(axis=0).astype(float)
    present = gt_count > 0
    iou = np.full(num_classes, np.nan)
    acc = np.full(num_classes, np.nan)
    iou[present] = tp[present] / (gt_count + pred_count - tp)[present]
    acc[present] = tp[present] / gt_count[present]
    freq = gt_count / gt_count.sum()
    return {
        "mIoU": 100 * np.nanmean(iou),
        "fwIoU": 100 * np.sum(freq[present] * iou[present]),
        "mACC": 100 * np.nanmean(acc),
        "pACC": 100 * tp.sum() / gt_count.sum(),
        "iou": 100 * iou,
        "acc": 100 * acc,
    }


def _one_hot_scores(pred, num_classes):
    """[H, W] labels -> [C, H, W] scores whose argmax is ``pred``."""
    scores = torch.rand(num_classes, *pred.shape) * 0.5
    scores.scatter_(0, torch.from_numpy(pred).long()[None], 1.0)
    return scores


def test_metrics_match_confusion_matrix(tmp_path, caplog):
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for shape in [(7, 9), (5, 6)]:
        gt = rng.integers(0, 3, size=shape)
        gt[rng.random(shape) < 0.2] = IGNORE
        pred = gt.copy()
        flip = rng.random(shape) < 0.35
        pred[flip] = rng.integers(0, 3, size=int(flip.sum()))
        # The model predicts a class on ignored pixels too; they must not count.
        pred[pred == IGNORE] = rng.integers(0, 3, size=int((pred == IGNORE).sum()))
        gts.append(gt)
        preds.append(pred)
    name, records = _register(str(tmp_path), gts)
    out_dir = str(tmp_path / "eval")
    cfg = tiny_config(OUTPUT_DIR=str(tmp_path))
    evaluator = build_semseg_evaluator(cfg, name, out_dir)
    evaluator.reset()
    for record, pred in zip(records, preds):
        outputs = [{"sem_seg": _one_hot_scores(pred, 3), "relevance": torch.rand(3)}]
        evaluator.process([record], outputs)
    with caplog.at_level(logging.INFO, logger="hiervl.evaluation.sem_seg_evaluation"):
        res = evaluator.evaluate()["sem_seg"]

    ref = _reference_metrics(gts, preds, 3)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert res[key] == pytest.approx(ref[key], abs=1e-9), key
    for i, cls in enumerate(CLASSES):
        assert res[f"IoU-{cls}"] == pytest.approx(ref["iou"][i], abs=1e-9)
        assert res[f"ACC-{cls}"] == pytest.approx(ref["acc"][i], abs=1e-9)
    assert ref["mIoU"] < 100  # the test predictions are imperfect

    with open(os.path.join(out_dir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["dataset"] == name
    assert saved["mIoU"] == pytest.approx(ref["mIoU"])
    assert [row["class"] for row in saved["per_class"]] == CLASSES
    assert saved["per_class"][1]["IoU"] == pytest.approx(ref["iou"][1])
    log = caplog.text
    assert "| class" in log and "tree" in log and "mean" in log


def test_absent_class_is_nan_and_null_in_json(tmp_path):
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, 2:] = 1
    name, records = _register(str(tmp_path), [gt])
    out_dir = str(tmp_path / "eval")
    evaluator = build_semseg_evaluator(tiny_config(), name, out_dir)
    evaluator.reset()
    evaluator.process(records, [{"sem_seg": _one_hot_scores(gt, 3)}])
    res = evaluator.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0)
    assert np.isnan(res["IoU-road"])
    with open(os.path.join(out_dir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["per_class"][2]["IoU"] is None


def test_out_of_range_gt_names_the_file(tmp_path):
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0, 0] = 7
    name, records = _register(str(tmp_path), [gt])
    evaluator = build_semseg_evaluator(tiny_config(), name, str(tmp_path / "eval"))
    evaluator.reset()
    with pytest.raises(ValueError, match="mask_0.png.*7"):
        evaluator.process(records, [{"sem_seg": _one_hot_scores(np.zeros((4, 4), int), 3)}])


def test_output_dir_is_not_training_metrics_file(tmp_path):
    gt = np.zeros((2, 2), dtype=np.int64)
    name, _ = _register(str(tmp_path), [gt])
    cfg = tiny_config(OUTPUT_DIR=str(tmp_path))
    evaluator = build_semseg_evaluator(cfg, name, str(tmp_path))
    assert evaluator._output_dir == os.path.join(str(tmp_path), "inference", name)


def test_mask_loader_returns_writable_copy(tmp_path):
    path = str(tmp_path / "m.png")
    Image.fromarray(np.array([[0, 255], [1, 2]], dtype=np.uint8)).save(path)
    gt = load_semseg_mask(path)
    assert gt.dtype == np.int64 and gt.flags.writeable
    gt[gt == 255] = 3
    assert gt.tolist() == [[0, 3], [1, 2]]
    rgb = str(tmp_path / "rgb.png")
    Image.new("RGB", (2, 2)).save(rgb)
    with pytest.raises(ValueError, match="rgb.png"):
        load_semseg_mask(rgb)


# ---- issue 17 -------------------------------------------------------------------------------


def test_gt_of_another_size_names_mask_and_image(tmp_path):
    # Before: a numpy broadcast error naming no file, at the end of training.
    name, records = _register(str(tmp_path), [np.zeros((90, 100), np.int64)])
    evaluator = build_semseg_evaluator(tiny_config(), name, str(tmp_path / "eval"))
    evaluator.reset()
    scores = _one_hot_scores(np.zeros((128, 128), int), 3)
    with pytest.raises(ValueError) as err:
        evaluator.process(records, [{"sem_seg": scores}])
    msg = str(err.value)
    assert "mask_0.png is 100x90 (WxH)" in msg and "image_0.jpg is 128x128" in msg


def test_unreadable_gt_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    name, records = _register(str(tmp_path), [rng.integers(0, 3, (64, 64))])
    path = records[0]["sem_seg_file_name"]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"mask_0\.png: cannot read ground-truth mask"):
        load_semseg_mask(path)


def test_eval_only_on_images_of_one_pixel_to_32_px(tmp_path):
    """``--eval-only``'s path (test loader, the tiny HierVL, the evaluator) on images of 1x1,
    7x5, 32x32 and 33x20 px: before, GroupNorm failed on the 1x1 map of images <= 32 px."""
    import hiervl.hiervl_model  # noqa: F401
    from hiervl.engine import HierVLTrainer

    rng = np.random.default_rng(0)
    sizes = [(1, 1), (7, 5), (32, 32), (33, 20)]
    gts = [rng.integers(0, 3, size=hw) for hw in sizes]
    name, records = _register(str(tmp_path), gts)
    for record, (h, w) in zip(records, sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(record["file_name"])
    cfg = tiny_config(
        OUTPUT_DIR=str(tmp_path / "out"), DATASETS__TRAIN=(name,), DATASETS__TEST=(name,)
    )
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    torch.manual_seed(0)
    model = HierVLTrainer.build_model(cfg)
    results = HierVLTrainer.test_model(cfg, model, "tiny")
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
