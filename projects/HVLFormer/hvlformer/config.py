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
    hvlformer_cfg = cfg.HVLFORMER = CN()
    # Weak view: light colour jitter (probability, (brightness, contrast, saturation, hue)).
    hvlformer_cfg.WEAK_JITTER_PROB = 0.8
    hvlformer_cfg.WEAK_JITTER_STRENGTH = [0.2, 0.2, 0.2, 0.05]
    # CMCR weights: mask BCE, class Jensen-Shannon, attention-map cosine distance.
    hvlformer_cfg.CMCR_MASK_WEIGHT = 1.0
    hvlformer_cfg.CMCR_CLASS_WEIGHT = 1.0
    hvlformer_cfg.CMCR_ATTN_WEIGHT = 1.0
    # Pixels whose teacher confidence is below this take no part in CMCR.
    hvlformer_cfg.CMCR_CONF_THRESHOLD = 0.95
