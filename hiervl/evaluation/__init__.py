"""Evaluation: the semantic segmentation evaluator, single-image predictor, drawing helpers."""

from .predictor import HierVLPredictor
from .sem_seg_evaluation import (
    METRICS_FILE_NAME,
    HierVLSemSegEvaluator,
    build_semseg_evaluator,
    per_class_table,
)

__all__ = [
    "HierVLPredictor",
    "METRICS_FILE_NAME",
    "HierVLSemSegEvaluator",
    "build_semseg_evaluator",
    "per_class_table",
]
