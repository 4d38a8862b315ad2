"""HVLFormer's configuration keys (on top of ``hiervl.config.add_hiervl_config``)."""

from detectron2.config import CfgNode as CN


def add_hvlformer_config(cfg: CN) -> None:
    """Add the ``HVLFORMER`` keys (CMCR, METHOD §7), select HVLFormer's three-view mapper and
    turn the datasets' class descriptions on."""
    # Unlabelled mapper with the original, weak and strong views.
    cfg.SEMI.DATASET_MAPPER_NAME = "hvlformer_unlabeled"
    # Dataset-aware prompts (METHOD.md §1): the descriptions shipped with VOC / COCO / ADE20K /
    # Cityscapes join each class name as averaged variants.
    cfg.MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS = True
    hv = cfg.HVLFORMER = CN()
    # Weak view: light colour jitter (probability, (brightness, contrast, saturation, hue)).
    hv.WEAK_JITTER_PROB = 0.8
    hv.WEAK_JITTER_STRENGTH = [0.2, 0.2, 0.2, 0.05]
    # CMCR weights: mask BCE, class Jensen-Shannon, attention-map cosine distance.
    hv.CMCR_MASK_WEIGHT = 1.0
    hv.CMCR_CLASS_WEIGHT = 1.0
    hv.CMCR_ATTN_WEIGHT = 1.0
    # Pixels whose teacher confidence is below this take no part in CMCR.
    hv.CMCR_CONF_THRESHOLD = 0.95
