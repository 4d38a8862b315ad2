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

from hiervl.evaluation import build_semseg_evaluator, load_semseg_mask
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
