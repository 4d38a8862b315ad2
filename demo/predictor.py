"""``VisualizationDemo``: a HierVL prediction on one image, drawn as an overlay.

The model runs through :class:`hiervl.evaluation.predictor.HierVLPredictor` (weights of the EMA
teacher when the checkpoint has one, the evaluation loader's resize, sliding window / TTA
inside the model), over the training classes or the given class names; drawing uses
detectron2's ``Visualizer.draw_sem_seg`` (labels kept inside the picture).
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode

from hiervl.evaluation.predictor import HierVLPredictor
from hiervl.evaluation.visualization import (
    class_list_metadata,
    draw_semseg,
    labels_and_confidence,
    side_by_side,
)

# Captions of the two halves of a --show-gt picture.
PREDICTION_CAPTION = "prediction"
GT_CAPTION = "ground truth"
NO_GT_CAPTION = "image (no ground truth)"

__all__ = ["VisualizationDemo"]


class VisualizationDemo:
    """Predict and draw: ``run_on_image(image, gt)`` → (outputs, picture)."""

    def __init__(
        self,
        cfg: CfgNode,
        *,
        metadata,
        confidence_threshold: float = 0.0,
        alpha: float = 0.6,
        show_gt: bool = False,
        class_names: Optional[Sequence[str]] = None,
        class_descriptions: Optional[Sequence[Sequence[str]]] = None,
    ):
        """
        Args:
            cfg: full config of the model (see ``HierVLPredictor``).
            metadata: detectron2 ``Metadata`` with ``stuff_classes`` / ``stuff_colors`` of the
                dataset (the model's classes, and those of the ground truth), for drawing.
            confidence_threshold: pixels whose normalised top score is below it are not drawn.
            alpha: overlay opacity.
            show_gt: return ``[prediction | ground truth]`` pictures, twice the input's width,
                each half under a caption; without ground truth the right panel is the plain
                image.
            class_names: predict over these names (drawn with them; a name of ``metadata``'s
                classes keeps its colour); None: the model's classes.
            class_descriptions: optional description variants per name.
        """
        self.predictor = HierVLPredictor(
            cfg, class_names=class_names, class_descriptions=class_descriptions
        )
        self.gt_metadata = metadata
        self.metadata = (
            metadata if class_names is None else class_list_metadata(class_names, metadata)
        )
        self.confidence_threshold = confidence_threshold
        self.alpha = alpha
        self.show_gt = show_gt
        self.ignore_label = getattr(metadata, "ignore_label", 255)

    def run_on_image(
        self, image: np.ndarray, gt: Optional[np.ndarray] = None
    ) -> Tuple[Dict[str, torch.Tensor], np.ndarray]:
        """
        Args:
            image: ``[H, W, 3]`` uint8 RGB.
            gt: ``[H, W]`` ground-truth train ids (``ignore_label`` not drawn), or None.

        Returns:
            The model's outputs (``sem_seg`` ``[C, H, W]``, ``relevance`` ``[C]``) and the picture,
            ``[H, W, 3]`` uint8 RGB, or ``[H + h, 2W, 3]`` with ``show_gt`` (``h``: the caption
            strip, "prediction" over the left half, "ground truth" over the right).
        """
        outputs = self.predictor(image)
        labels, _ = labels_and_confidence(
            outputs["sem_seg"],
            ignore_label=self.ignore_label,
            threshold=self.confidence_threshold,
        )
        picture = draw_semseg(image, labels, self.metadata, alpha=self.alpha)
        if self.show_gt:
            if gt is not None:
                if gt.shape != image.shape[:2]:
                    raise ValueError(
                        f"Ground truth of shape {gt.shape} does not match the image {image.shape}"
                    )
                right = draw_semseg(image, gt, self.gt_metadata, alpha=self.alpha)
                right_caption = GT_CAPTION
            else:
                right, right_caption = image, NO_GT_CAPTION
            picture = side_by_side([picture, right], captions=[PREDICTION_CAPTION, right_caption])
        return outputs, picture
