"""How HierVL predicts an image (METHOD.md §5): the semantic map of decoder outputs, the classes
predicted over, one window, sliding windows and test-time augmentation.

Nothing here holds weights. The model's own pass (encoder -> HSQG -> pixel decoder -> decoder,
``HierVL.encode_decode``) and its input padding (``HierVL._pad``) come in as arguments, so the same
functions serve ``HierVL.inference``, the teacher's pseudo-labels (``HierVL.semantic_probs``)
and the exported window (``hiervl.export``):

- :func:`semantic_map`: ``S(c, x)`` from the decoder rows.
- :class:`InferenceClasses` / :func:`row_class_probs`: the classes predicted over (the training
  classes, or other names: ``HierVL.set_inference_classes``).
- :func:`predict_window`: ``S`` and the relevance of normalised images of any size.
- :class:`SemSegInference`: sliding windows over an image and test-time augmentation.
"""

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA
from detectron2.modeling.postprocessing import sem_seg_postprocess

__all__ = [
    "InferenceClasses",
    "SemSegInference",
    "predict_window",
    "row_class_probs",
    "semantic_map",
    "window_corners",
]

logger = logging.getLogger(__name__)

# (padded normalised images [B, 3, H, W], text [C, Dt]) -> (decoder outputs, HSQG outputs or
# None, class of each decoder row): the model's pass, ``HierVL.encode_decode``.
EncodeDecodeFn = Callable[[torch.Tensor, torch.Tensor], Tuple[Dict, Optional[Dict], torch.Tensor]]
# normalised images [B, 3, H, W] -> (S [B, C, H, W], relevance [B, C]): one window's prediction.
WindowFn = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def semantic_map(
    outputs: Dict, keep: Optional[torch.Tensor] = None, probs: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``S(c, x) = sum_k softmax(l_k)(c) * sigmoid(m_k(x))`` over the kept rows.

    Args:
        outputs: ``{"pred_logits": [B, K, C+1], "pred_masks": [B, K, h, w]}``.
        keep: ``[B, K]`` bool; rows with False are left out (default: all rows).
        probs: ``[B, K, C']`` per-row class probabilities to use in place of
            ``softmax(l_k)[:C]`` (class names other than the training ones, see
            :func:`row_class_probs`).

    Returns:
        ``[B, C, h, w]`` (``[B, C', h, w]`` with ``probs``; not normalised over classes).
    """
    if probs is None:
        probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]
    if keep is not None:
        probs = probs * keep[..., None].to(probs.dtype)
    return torch.einsum("bkc,bkhw->bchw", probs, outputs["pred_masks"].float().sigmoid())


@dataclass(frozen=True)
class InferenceClasses:
    """The ``C'`` classes a model predicts over at inference.

    Attributes:
        names: the class names.
        source: ``[C']`` long, the training class of each name (-1 for other names); None
            when ``names`` is the training list as it is (the unchanged path of
            :func:`semantic_map`).
        descriptions: per name, the description variants its text embedding averages, or None.
    """

    names: List[str]
    source: Optional[torch.Tensor]
    descriptions: Optional[List[List[str]]]

    @classmethod
    def resolve(
        cls,
        class_names: Optional[Sequence[str]],
        class_descriptions: Optional[Sequence[Sequence[str]]] = None,
        *,
        training_names: Sequence[str],
        training_descriptions: Optional[Sequence[Sequence[str]]] = None,
        can_score_new_names: bool,
    ) -> "InferenceClasses":
        """Check a list of names and map it onto the training classes.

        A training class's name (matched by name, in any order) keeps the classifier's output
        for that class; any other name is scored by :func:`row_class_probs`.

        Args:
            class_names: ``C'`` names, or None for the training classes.
            class_descriptions: ``C'`` lists of description variants of the names; None: a
                training class's own descriptions, none for other names.
            training_names / training_descriptions: the model's training classes.
            can_score_new_names: whether the decoder has the text-space projection ``phi``
                that scores names other than the training ones.

        Raises:
            ValueError: an empty list or name, a repeated name, a description list per name
                that does not fit, or a name that is not a training class when
                ``can_score_new_names`` is False (a model trained with
                ``MODEL.HIERVL.LOSS.ALIGN_WEIGHT`` 0).
        """
        training_names = [str(n) for n in training_names]
        if class_names is None:
            names = list(training_names)
        else:
            names = [str(n).strip() for n in class_names]
        if not names or not all(names):
            raise ValueError(f"class names must be a non-empty list of non-empty names: {names}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"class names repeat: {repeated}")
        index = {n: i for i, n in enumerate(training_names)}
        source = [index.get(n, -1) for n in names]
        new = [n for n, i in zip(names, source) if i < 0]
        if new and not can_score_new_names:
            raise ValueError(
                f"{new} are not training classes of this model ({training_names}); scoring "
                "them needs the decoder's text-space projection, which a model trained with "
                "MODEL.HIERVL.LOSS.ALIGN_WEIGHT 0 does not have"
            )
        if class_descriptions is not None:
            if len(class_descriptions) != len(names):
                raise ValueError(
                    f"{len(class_descriptions)} description lists for {len(names)} class names"
                )
            descriptions = [[str(d) for d in ds] for ds in class_descriptions]
        elif training_descriptions is not None:
            descriptions = [list(training_descriptions[i]) if i >= 0 else [] for i in source]
        else:
            descriptions = None
        if new:
            logger.info(
                "HierVL predicts over %d classes; not training classes: %s", len(names), new
            )
        return cls(
            names=names,
            source=None if names == training_names else torch.tensor(source),
            descriptions=descriptions,
        )


def row_class_probs(
    outputs: Dict, text: torch.Tensor, source: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """Per-row probabilities ``[B, K, C']`` of the inference classes (``InferenceClasses``).

    - a training class's name: ``softmax(l_k)`` of that class, exactly as for the training list;
    - any other name: the row's object probability ``1 - softmax(l_k)(no object)``, shared over
      the requested names by ``softmax_c(cos(phi(z_k), t̂_c) / T)``, where ``phi`` is the
      decoder's projection into CLIP's text space (trained by Eq. 2 to land on the row's class
      embedding) and ``T`` is ``temperature``.

    Args:
        outputs: decoder outputs (``pred_logits [B, K, C+1]``, ``pred_embeds [B, K, Dt]``).
        text: ``[C', Dt]`` normalised embeddings of the inference classes.
        source: ``[C']`` training class of each inference class, -1 for other names.
        temperature: ``T`` (MODEL.HIERVL.TEST.NEW_CLASS_TEMPERATURE).
    """
    probs = outputs["pred_logits"].float().softmax(-1)
    source = source.to(probs.device)
    known = source >= 0
    out = probs[..., source.clamp(min=0)]
    # Without phi every name is a training class (InferenceClasses.resolve checks it). With
    # phi, the torch.where below returns `out` itself when every name is known: no test of
    # the values of `source` here, so that torch.export can trace this (tools/export_model).
    if "pred_embeds" not in outputs:
        return out
    objectness = 1.0 - probs[..., -1:]
    similarity = F.normalize(outputs["pred_embeds"].float(), dim=-1) @ text.float().t()
    share = (similarity / temperature).softmax(-1)
    return torch.where(known, out, objectness * share)


def predict_window(
    encode_decode: EncodeDecodeFn,
    pad: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    text: torch.Tensor,
    source: Optional[torch.Tensor] = None,
    *,
    temperature: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Semantic map and relevance of normalised images ``[B, 3, H, W]`` (any size).

    Args:
        encode_decode: the model's pass on padded images (``HierVL.encode_decode``).
        pad: the model's padding of ``[B, 3, H, W]`` to a size ``encode_decode`` takes
            (``HierVL._pad``).
        images: ``[B, 3, H, W]``.
        text: ``[C, Dt]`` embeddings of the classes to predict.
        source: None when ``text`` is the training classes', else ``[C]`` training class of
            each class (-1 for other names, :class:`InferenceClasses`).
        temperature: see :func:`row_class_probs` (used with ``source`` only).

    Returns:
        ``S [B, C, H, W]`` at the input size and ``relevance [B, C]`` (ones without HSQG).
    """
    height, width = images.shape[-2:]
    padded = pad(images)
    outputs, hsqg_out, _ = encode_decode(padded, text)
    probs = None
    if source is not None:
        probs = row_class_probs(outputs, text, source, temperature=temperature)
    sem = semantic_map(outputs, outputs["keep"], probs)
    sem = F.interpolate(sem, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    if hsqg_out is not None:
        relevance = hsqg_out["relevance"].float()
    else:
        relevance = sem.new_ones(images.shape[0], text.shape[0])
    return sem[..., :height, :width], relevance


def window_corners(
    height: int, width: int, crop_size: Sequence[int], stride: Sequence[int]
) -> List[Tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the sliding windows covering a ``height x width`` image:
    a step of ``stride``, the last window of a row / column flush with the border."""
    (crop_h, crop_w), (step_h, step_w) = crop_size, stride
    rows = max(math.ceil((height - crop_h) / step_h), 0) + 1
    cols = max(math.ceil((width - crop_w) / step_w), 0) + 1
    return [
        (max(min(r * step_h, height - crop_h), 0), max(min(c * step_w, width - crop_w), 0))
        for r in range(rows)
        for c in range(cols)
    ]


class SemSegInference:
    """Sliding-window inference and test-time augmentation of one image.

    An image larger than ``crop_size`` is cut into overlapping windows (``window_corners``);
    the window maps are averaged where they overlap and the relevance is the maximum over
    windows. With test-time augmentation (detectron2's ``TEST.AUG``), detectron2's
    ``DatasetMapperTTA`` makes the views of the input image (its shortest edge resized to each
    of ``TEST.AUG.MIN_SIZES``, at most ``TEST.AUG.MAX_SIZE`` long, and their horizontal flips);
    each view runs through the sliding windows, its map is flipped back and resized to the
    input size, and maps and relevances are averaged over the views. Without it the input
    image is the one view.

    The views are made here, inside the model's ``inference``, and not by a wrapper around the
    model as Mask2Former's ``SemanticSegmentorWithTTA`` does: every caller of the model (the
    evaluation during and after training, ``HierVLPredictor``, the demo and the tools) gets
    the same test-time augmentation, the relevance is averaged with the maps, and the teacher's
    pseudo-labels (``probabilities``) stay without it.
    """

    @configurable
    def __init__(
        self,
        *,
        crop_size: Tuple[int, int],
        stride: Tuple[int, int],
        sliding_window: bool = True,
        tta: Optional[DatasetMapperTTA] = None,
        new_class_temperature: float = 0.07,
    ):
        """
        Args:
            crop_size / stride: ``(h, w)`` of the inference windows and their step.
            sliding_window: sliding windows over images larger than ``crop_size`` (False: the
                whole image at once).
            tta: the views of test-time augmentation, None for none.
            new_class_temperature: temperature of the text-similarity softmax that scores
                names which are not training classes (:func:`row_class_probs`).
        """
        self.crop_size = tuple(int(s) for s in crop_size)
        self.stride = tuple(int(s) for s in stride)
        if min(self.crop_size) <= 0 or min(self.stride) <= 0:
            raise ValueError(f"crop size {crop_size} and stride {stride} must be positive")
        self.sliding_window = sliding_window
        self.tta = tta
        if new_class_temperature <= 0:
            raise ValueError(f"new_class_temperature must be positive, got {new_class_temperature}")
        self.new_class_temperature = float(new_class_temperature)

    @classmethod
    def from_config(cls, cfg) -> dict:
        test = cfg.MODEL.HIERVL.TEST
        return {
            "crop_size": tuple(test.CROP_SIZE),
            "stride": tuple(test.STRIDE),
            "sliding_window": test.SLIDING_WINDOW,
            # detectron2's TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP}, read by DatasetMapperTTA
            "tta": DatasetMapperTTA(cfg) if cfg.TEST.AUG.ENABLED else None,
            "new_class_temperature": test.NEW_CLASS_TEMPERATURE,
        }

    def windows(self, height: int, width: int) -> List[Tuple[int, int]]:
        """Top-left corners of the windows covering an ``height x width`` image."""
        return window_corners(height, width, self.crop_size, self.stride)

    def _whole(self, height: int, width: int) -> bool:
        crop_h, crop_w = self.crop_size
        return not self.sliding_window or (height <= crop_h and width <= crop_w)

    def sliding(self, predict: WindowFn, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``S [C, H, W]`` and relevance ``[C]`` (max over windows) of one normalised image
        ``[3, H, W]``; the whole image when sliding is off or it fits in one window.

        Args:
            predict: one window's prediction (:func:`predict_window` with the model's parts).
            image: ``[3, H, W]`` normalised.
        """
        height, width = image.shape[-2:]
        if self._whole(height, width):
            sem, relevance = predict(image[None])
            return sem[0], relevance[0]
        crop_h, crop_w = self.crop_size
        corners = self.windows(height, width)
        crops = torch.stack([image[:, y : y + crop_h, x : x + crop_w] for y, x in corners])
        sems, relevances = predict(crops)
        total = sems.new_zeros(sems.shape[1], height, width)
        count = sems.new_zeros(1, height, width)
        for (y, x), sem in zip(corners, sems):
            h, w = sem.shape[-2:]
            total[:, y : y + h, x : x + w] += sem
            count[:, y : y + h, x : x + w] += 1
        return total / count.clamp(min=1), relevances.max(0).values

    def _views(self, image: torch.Tensor) -> List[Tuple[torch.Tensor, bool]]:
        """The test-time views of a uint8 ``[3, H, W]`` image: ``(image, flipped)`` pairs."""
        if self.tta is None:
            return [(image, False)]
        height, width = image.shape[-2:]
        views = self.tta({"image": image.cpu(), "height": height, "width": width})
        return [
            (
                view["image"],
                any(isinstance(t, HFlipTransform) for t in view["transforms"].transforms),
            )
            for view in views
        ]

    def __call__(
        self,
        predict: WindowFn,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        batched_input: Dict,
    ) -> Dict[str, torch.Tensor]:
        """The prediction of one model input.

        Args:
            predict: one window's prediction (:func:`predict_window` with the model's parts).
            normalize: the model's uint8 ``[3, H, W]`` -> normalised float image on its device.
            batched_input: ``image`` uint8 ``[3, H, W]``, optional ``height`` / ``width`` of
                the output (default ``H`` / ``W``).

        Returns:
            ``{"sem_seg": [C, height, width], "relevance": [C]}``.
        """
        image = batched_input["image"]
        height, width = image.shape[-2:]
        total, relevance, views = None, None, 0
        for view, flipped in self._views(image):
            sem, rel = self.sliding(predict, normalize(view))
            if flipped:
                sem = sem.flip(-1)
            if sem.shape[-2:] != (height, width):
                sem = F.interpolate(
                    sem[None], size=(height, width), mode="bilinear", align_corners=False
                )[0]
            total = sem if total is None else total + sem
            relevance = rel if relevance is None else relevance + rel
            views += 1
        out_h = batched_input.get("height", height)
        out_w = batched_input.get("width", width)
        sem = sem_seg_postprocess(total / views, (height, width), out_h, out_w)
        return {"sem_seg": sem, "relevance": relevance / views}

    def probabilities(self, predict: WindowFn, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class distribution ``[B, C, H, W]`` of normalised images ``[B, 3, H, W]``:
        sliding windows, no test-time augmentation (the teacher's pseudo-labels)."""
        height, width = images.shape[-2:]
        if self._whole(height, width):
            sem, _ = predict(images)
        else:
            sem = torch.stack([self.sliding(predict, image)[0] for image in images])
        return sem / sem.sum(1, keepdim=True).clamp(min=1e-6)
