"""``VisualizationDemo``: a HierVL prediction on one image, drawn as an overlay.

The model runs through :class:`hiervl.evaluation.predictor.HierVLPredictor` (weights of the EMA
teacher when the checkpoint has one, the evaluation loader's resize, sliding window / TTA
inside the model); drawing uses detectron2's ``Visualizer.draw_sem_seg``.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode

from hiervl.evaluation.predictor import HierVLPredictor
from hiervl.evaluation.visualization import draw_semseg, labels_and_confidence, side_by_side

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
    ):
        """
        Args:
            cfg: full config of the model (see ``HierVLPredictor``).
            metadata: detectron2 ``Metadata`` with ``stuff_classes`` / ``stuff_colors`` of the
                model's classes, used for drawing.
            confidence_threshold: pixels whose normalised top score is below it are not drawn.
            alpha: overlay opacity.
            show_gt: return ``[prediction | ground truth]`` pictures, twice the input's width;
                without ground truth the right panel is the plain image.
        """
        self.predictor = HierVLPredictor(cfg)
        self.metadata = metadata
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
            ``[H, W, 3]`` uint8 RGB, or ``[H, 2W, 3]`` with ``show_gt``.
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
                right = draw_semseg(image, gt, self.metadata, alpha=self.alpha)
            else:
                right = image
            picture = side_by_side([picture, right])
        return outputs, picture
