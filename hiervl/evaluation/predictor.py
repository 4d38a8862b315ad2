"""Single-image inference in the evaluation loader's conditions (like ``DefaultPredictor``).

``HierVLPredictor`` builds the model from a config, loads ``MODEL.WEIGHTS`` through
:func:`hiervl.utils.checkpoint.load_inference_weights` (the EMA teacher when the checkpoint has
one and ``MODEL.HIERVL.TEST.USE_TEACHER``), resizes like detectron2's test mapper
(``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, skipped when
``MIN_SIZE_TEST`` is 0) and returns the model's output at the input's own size. Sliding window
(``MODEL.HIERVL.TEST``) and flip / multi-scale TTA (``TEST.AUG``) happen inside the model. Given
``class_names``, the model predicts over those names (``HierVL.set_inference_classes``).
"""

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from hiervl.data.dataset_mappers.augment import resize_for_test
from hiervl.utils.checkpoint import load_inference_weights

__all__ = ["HierVLPredictor"]


class HierVLPredictor:
    """Run a HierVL model on one RGB image.

    Attributes:
        model: the model in eval mode.
        loaded: which weights were loaded: ``"teacher"``, ``"student"`` or ``"none"``.
    """

    def __init__(
        self,
        cfg: CfgNode,
        *,
        class_names: Optional[Sequence[str]] = None,
        class_descriptions: Optional[Sequence[Sequence[str]]] = None,
    ):
        """
        Args:
            cfg: full config; reads ``MODEL.WEIGHTS``, ``MODEL.HIERVL.TEST.USE_TEACHER``,
                ``INPUT.FORMAT``, ``INPUT.MIN_SIZE_TEST`` and ``INPUT.MAX_SIZE_TEST``.
            class_names: predict over these names instead of the config's (None: the
                config's ``MODEL.HIERVL.TEST.CLASS_NAMES``, else the training classes).
            class_descriptions: optional description variants per name (see
                ``HierVL.set_inference_classes``).
        """
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        self.loaded = load_inference_weights(
            self.model, cfg.MODEL.WEIGHTS, use_teacher=cfg.MODEL.HIERVL.TEST.USE_TEACHER
        )
        if class_names is not None:
            if not hasattr(self.model, "set_inference_classes"):
                raise TypeError(
                    f"{type(self.model).__name__} cannot predict over other class names "
                    "(no set_inference_classes)"
                )
            self.model.set_inference_classes(class_names, class_descriptions)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format!r}")
        self.resize = resize_for_test(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Dict[str, torch.Tensor]:
        """
        Args:
            image: ``[H, W, 3]`` uint8, RGB.

        Returns:
            The model's output for the image: ``"sem_seg"`` ``[C, H, W]`` at the input's size
            and ``"relevance"`` ``[C]`` (on the model's device), ``C`` over the predicted
            classes (``class_names`` when given).
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Expected an [H, W, 3] image, got shape {image.shape}")
        height, width = image.shape[:2]
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": height, "width": width}
        return self.model([inputs])[0]
