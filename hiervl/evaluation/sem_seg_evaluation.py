"""Semantic segmentation evaluation: detectron2's ``SemSegEvaluator`` with a per-class table.

``HierVLSemSegEvaluator`` keeps detectron2's metric definitions (mIoU, fwIoU, mACC, pACC,
per-class IoU / ACC, boundary IoU) and adds three things:

- ground truth is read with ``hiervl.data.image_io.load_semseg_mask``, which works under
  NumPy 1 and NumPy 2 (detectron2 0.7.2 reads masks with ``np.array(..., copy=False)``, an
  error under NumPy 2); masks it cannot read, masks holding ids outside ``0..C-1`` and the
  ignore label, and masks whose size is not the prediction's (the image's size as read) are
  rejected, naming the files;
- a per-class IoU / ACC table (tabulate) in the log;
- ``metrics.json`` in the output folder: the metrics, the per-class rows and the confusion
  matrix, one JSON object (NaN written as ``null``).
"""

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.comm import is_main_process
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from hiervl.data.image_io import load_semseg_mask

__all__ = [
    "HierVLSemSegEvaluator",
    "build_semseg_evaluator",
    "per_class_table",
    "METRICS_FILE_NAME",
]

logger = logging.getLogger(__name__)

METRICS_FILE_NAME = "metrics.json"


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def per_class_table(class_names: List[str], metrics: Dict[str, float]) -> str:
    """Render ``IoU-<name>`` / ``ACC-<name>`` entries of a result dict as a text table.

    Args:
        class_names: the dataset's ``stuff_classes``.
        metrics: detectron2's ``sem_seg`` result dict (values in percent).

    Returns:
        A ``tabulate`` pipe table with one row per class and a final ``mean`` row.
    """
    rows = []
    for name in class_names:
        rows.append([name, metrics.get(f"IoU-{name}", float("nan")), metrics.get(f"ACC-{name}")])
    rows.append(["mean", metrics.get("mIoU"), metrics.get("mACC")])
    return tabulate(
        rows, headers=["class", "IoU", "ACC"], tablefmt="pipe", floatfmt=".2f", missingval="nan"
    )


class HierVLSemSegEvaluator(SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` with a NumPy-2-safe ground-truth loader, a per-class IoU
    table in the log and ``metrics.json`` in ``output_dir``.

    Model outputs are detectron2's semantic format: ``{"sem_seg": [C, H, W]}`` per image at the
    ground truth's size (argmax over ``C`` is the prediction); other keys (``relevance``) are
    ignored.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        """
        Args:
            dataset_name: a registered labelled split (``evaluator_type="sem_seg"``, metadata
                ``stuff_classes`` and ``ignore_label``).
            distributed: gather the confusion matrices of all ranks before computing metrics.
            output_dir: folder for ``metrics.json``, ``sem_seg_evaluation.pth`` and
                ``sem_seg_predictions.json``; ``None`` writes nothing.
        """
        super().__init__(
            dataset_name,
            distributed=distributed,
            output_dir=output_dir,
            sem_seg_loading_fn=self._load_gt,
        )
        # (image file, prediction (H, W)) of the input being processed, for _load_gt.
        self._pending: Optional[Tuple[str, Tuple[int, int]]] = None

    def process(self, inputs, outputs):
        # detectron2 reads each ground truth inside ``process``; ``_load_gt`` compares it with
        # the prediction of the input being processed, so one pair at a time.
        for one_input, one_output in zip(inputs, outputs):
            self._pending = (one_input["file_name"], tuple(one_output["sem_seg"].shape[-2:]))
            try:
                super().process([one_input], [one_output])
            finally:
                self._pending = None

    def _load_gt(self, file_name: str, dtype=np.int64) -> np.ndarray:
        gt = load_semseg_mask(file_name, dtype=dtype)
        if self._pending is not None and gt.shape != self._pending[1]:
            image_file, (height, width) = self._pending
            raise ValueError(
                f"Ground-truth mask {file_name} is {gt.shape[1]}x{gt.shape[0]} (WxH) but the "
                f"prediction for its image {image_file} is {width}x{height} (the image's size as "
                f"read, EXIF orientation applied); a mask must have its image's size"
            )
        valid = (gt == self._ignore_label) | ((gt >= 0) & (gt < self._num_classes))
        if not valid.all():
            bad = np.unique(gt[~valid])[:10].tolist()
            raise ValueError(
                f"Ground-truth mask {file_name} holds ids {bad} outside 0..{self._num_classes - 1} "
                f"and the ignore label {self._ignore_label} of dataset {self._dataset_name!r}."
            )
        return gt

    def evaluate(self):
        results = super().evaluate()
        if results is None or not is_main_process():
            return results
        metrics = results["sem_seg"]
        table = per_class_table(self._class_names, metrics)
        logger.info(
            "Semantic segmentation on %s: mIoU %.2f  fwIoU %.2f  mACC %.2f  pACC %.2f\n%s",
            self._dataset_name,
            metrics["mIoU"],
            metrics["fwIoU"],
            metrics["mACC"],
            metrics["pACC"],
            table,
        )
        if self._output_dir:
            self._write_metrics_json(metrics)
        return OrderedDict(results)

    def _write_metrics_json(self, metrics: Dict[str, float]) -> None:
        per_class = [
            {
                "class": name,
                "IoU": _nan_to_none(float(metrics[f"IoU-{name}"])),
                "ACC": _nan_to_none(float(metrics[f"ACC-{name}"])),
            }
            for name in self._class_names
        ]
        payload = {
            "dataset": self._dataset_name,
            "num_classes": self._num_classes,
            "ignore_label": int(self._ignore_label),
            "mIoU": float(metrics["mIoU"]),
            "fwIoU": float(metrics["fwIoU"]),
            "mACC": float(metrics["mACC"]),
            "pACC": float(metrics["pACC"]),
            "per_class": per_class,
            # Rows: predicted class, columns: ground truth; the last row / column is "ignore".
            "confusion_matrix": self._conf_matrix.tolist(),
            "all": {key: _nan_to_none(float(value)) for key, value in metrics.items()},
        }
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, METRICS_FILE_NAME)
        with PathManager.open(path, "w") as f:
            json.dump(payload, f, indent=2)
        logger.info("Wrote %s", path)


def build_semseg_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> HierVLSemSegEvaluator:
    """Build the evaluator of a labelled semantic segmentation split.

    Args:
        cfg: the full config (reads ``OUTPUT_DIR`` only, for the default folder).
        dataset_name: a registered labelled split.
        output_folder: where ``metrics.json`` goes; ``None`` = ``OUTPUT_DIR/inference/<name>``.
            The training run's ``OUTPUT_DIR`` itself is refused in favour of that default,
            because detectron2's ``JSONWriter`` already appends training metrics to
            ``OUTPUT_DIR/metrics.json``.

    Returns:
        A ``HierVLSemSegEvaluator``.
    """
    default = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    if output_folder is None:
        output_folder = default
    elif os.path.abspath(output_folder) == os.path.abspath(cfg.OUTPUT_DIR):
        logger.warning(
            "Evaluation folder %s is OUTPUT_DIR, whose metrics.json holds the training log; "
            "writing evaluation results to %s instead.",
            output_folder,
            default,
        )
        output_folder = default
    return HierVLSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
