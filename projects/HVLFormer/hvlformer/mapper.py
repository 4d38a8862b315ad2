"""HVLFormer's unlabelled mapper: original, weak and strong views of one crop."""

from typing import Optional, Sequence

import numpy as np
from detectron2.config import configurable

from hiervl.data.dataset_mappers import (
    DATASET_MAPPER_REGISTRY,
    SemanticUnlabeledMapper,
    apply_photometric,
    random_photometric_params,
)

__all__ = ["HVLFormerUnlabeledMapper"]


class HVLFormerUnlabeledMapper(SemanticUnlabeledMapper):
    """:class:`SemanticUnlabeledMapper` plus a weak photometric view.

    Steps: those of the core mapper (``image`` = the original view: the geometric crop only, the
    teacher's input; ``image_strong``: colour jitter, grayscale, blur; ``ignore_mask``), then
    ``image_weak``: the original view with light colour jitter (``HVLFORMER.WEAK_JITTER_*``),
    padded pixels set back to 0.
    """

    @configurable
    def __init__(self, *, weak_jitter_prob: float, weak_jitter_strength: Sequence[float], **kwargs):
        """
        Args:
            weak_jitter_prob: probability of the weak view's colour jitter.
            weak_jitter_strength: its ``(brightness, contrast, saturation, hue)`` strengths.
            kwargs: :class:`SemanticUnlabeledMapper` arguments.
        """
        super().__init__(**kwargs)
        self.weak_photometric = {
            "jitter_prob": weak_jitter_prob,
            "jitter_strength": tuple(weak_jitter_strength),
            "grayscale_prob": 0.0,
            "blur_prob": 0.0,
        }

    @classmethod
    def from_config(cls, cfg):
        ret = SemanticUnlabeledMapper.from_config(cfg)
        ret["weak_jitter_prob"] = cfg.HVLFORMER.WEAK_JITTER_PROB
        ret["weak_jitter_strength"] = tuple(cfg.HVLFORMER.WEAK_JITTER_STRENGTH)
        return ret

    def __call__(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """Core outputs plus ``image_weak`` uint8 ``[3, H, W]``."""
        if rng is None:
            rng = np.random.default_rng(np.random.randint(2**31))
        out = super().__call__(dataset_dict, rng=rng)
        params = random_photometric_params(rng, **self.weak_photometric)
        weak = apply_photometric(out["image"], params)
        out["image_weak"] = weak.masked_fill(out["ignore_mask"][None], 0)
        return out


@DATASET_MAPPER_REGISTRY.register()
def hvlformer_unlabeled(cfg, is_train: bool = True) -> HVLFormerUnlabeledMapper:
    """HVLFormer's unlabelled views: original, weak, strong of the same crop."""
    return HVLFormerUnlabeledMapper(cfg)
