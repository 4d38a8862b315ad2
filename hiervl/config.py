"""HierVL configuration keys.

``add_hiervl_config(cfg)`` adds every knob of the method (METHOD.md) to a detectron2 config.
Each key is read by exactly one ``from_config`` (or the trainer / data code); the test
``tests/test_config.py`` fails when a key is never read.
"""

import logging
from typing import Callable, Iterable, Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

logger = logging.getLogger(__name__)

# Keys we had before taking detectron2's / Mask2Former's: a config or command line that sets the
# old one stops with an error naming the new one (yacs' renamed keys).
_RENAMED_KEYS = {
    "MODEL.HIERVL.NUM_CLASSES": "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    "MODEL.HIERVL.TEST.FLIP": (
        "TEST.AUG.FLIP",
        "test-time augmentation is on with TEST.AUG.ENABLED",
    ),
    "MODEL.HIERVL.TEST.SCALES": (
        "TEST.AUG.MIN_SIZES",
        "detectron2's shortest-edge sizes in pixels (at most TEST.AUG.MAX_SIZE long), not scale "
        "factors; test-time augmentation is on with TEST.AUG.ENABLED",
    ),
}

# detectron2 keys that HierVL's loaders, mappers and model never read, with what does the job
# here. A config or command line that moves one off detectron2's default gets a warning naming the
# replacement (load_config): a Mask2Former user's setting must not vanish in silence.
_UNREAD_DETECTRON2_KEYS = {
    "INPUT.MIN_SIZE_TRAIN": "INPUT.RESIZE_RATIO_RANGE (random resize) and INPUT.CROP.SIZE",
    "INPUT.MAX_SIZE_TRAIN": "INPUT.RESIZE_RATIO_RANGE (random resize) and INPUT.CROP.SIZE",
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "INPUT.RESIZE_RATIO_RANGE (a uniform resize factor)",
    "INPUT.CROP.TYPE": "INPUT.CROP.SIZE (an absolute square crop in pixels)",
    "DATALOADER.SAMPLER_TRAIN": "the training loaders' own infinite shuffled streams (a fixed "
    "order per SEED and position, resumable); there is no repeat-factor sampler",
    "DATALOADER.REPEAT_THRESHOLD": "nothing: there is no repeat-factor sampler",
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": "nothing: every image is kept (a mask of only "
    "ignore pixels still trains the unlabelled-style losses)",
    "MODEL.BACKBONE.NAME": "MODEL.HIERVL.CLIP.MODEL_NAME (the CLIP image encoder is the backbone)",
}
# Values of those keys that describe what HierVL does anyway (Mask2Former's configs set them).
_MATCHING_VALUES = {"INPUT.CROP.TYPE": ("absolute",)}


def warn_unread_detectron2_keys(cfg: CN) -> list:
    """Warn about each key of ``_UNREAD_DETECTRON2_KEYS`` that ``cfg`` sets to something other than
    detectron2's default; returns those keys."""
    default = get_cfg()
    changed = []
    for key, instead in _UNREAD_DETECTRON2_KEYS.items():
        value, default_value = cfg, default
        for part in key.split("."):
            value, default_value = value[part], default_value[part]
        if _as_list(value) != _as_list(default_value) and value not in _MATCHING_VALUES.get(
            key, ()
        ):
            changed.append(key)
            logger.warning(
                "%s is set to %r but HierVL does not read it (it stays detectron2's key); what "
                "does this here: %s",
                key,
                value,
                instead,
            )
    return changed


def _as_list(value):
    """YAML and the command line turn tuples into lists: compare both as lists."""
    if isinstance(value, (list, tuple)):
        return [_as_list(v) for v in value]
    return value


def add_hiervl_config(cfg: CN) -> None:
    """Add HierVL's keys (model, semi-supervised training, data, test) to ``cfg`` in place."""
    cfg.MODEL.META_ARCHITECTURE = "HierVL"
    # CLIP's own normalisation (open_clip OPENAI_DATASET_MEAN / STD), in 0-255 RGB.
    cfg.MODEL.PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]
    cfg.INPUT.FORMAT = "RGB"
    # Test images at their own size (sliding windows cover large ones); > 0: detectron2's
    # test-time resize of the shortest edge to this (the longest at most MAX_SIZE_TEST), the
    # same in the test mapper and in HierVLPredictor.
    cfg.INPUT.MIN_SIZE_TEST = 0
    # Training only: start from the entries of MODEL.WEIGHTS whose names and shapes fit the
    # model and keep the initial values of the rest (a warning lists them), e.g. weights of a
    # part of the model. False: a missing or mismatched entry is an error. Evaluation, the
    # demo, the tools and --resume always need a checkpoint that fits whole.
    cfg.MODEL.WEIGHTS_ALLOW_PARTIAL = False

    # Number of semantic classes of the training data (VOC 21, COCO 81, ADE 150, Cityscapes 19);
    # a folder dataset sets it from its classes.txt. detectron2's key, as in Mask2Former.
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 21
    for old, new in _RENAMED_KEYS.items():
        if not cfg.key_is_renamed(old):
            new, message = new if isinstance(new, tuple) else (new, None)
            cfg.register_renamed_key(old, new, message)

    hiervl_cfg = cfg.MODEL.HIERVL = CN()
    # Size divisibility of padded input batches (the ViT patch size is a divisor).
    hiervl_cfg.SIZE_DIVISIBILITY = 32

    # ---- §1 Encoders ---------------------------------------------------------------------
    clip = hiervl_cfg.CLIP = CN()
    # open_clip model name: "ViT-B-16" for the paper, "HierVL-Tiny-ViT" for tests and the demo.
    clip.MODEL_NAME = "ViT-B-16"
    # open_clip pretrained tag ("openai"), a local checkpoint path, or "" for random init.
    clip.PRETRAINED = "openai"
    # Activation of CLIP's transformer blocks, a string: "auto" = what the weights were trained
    # with (a tag: open_clip's pretrained config, e.g. QuickGELU for "openai"; a local file:
    # QuickGELU for OpenAI's TorchScript archive, else the model config's default), "true" =
    # QuickGELU, "false" = GELU. Quote it in YAML (QUICK_GELU: "true").
    clip.QUICK_GELU = "auto"
    # Image size the ViT's position embedding is built for (open_clip force_image_size).
    clip.IMAGE_SIZE = 512
    # ViT blocks (0-based) whose outputs become the stride 4 / 8 / 16 / 32 pixel features.
    clip.FEATURE_LAYERS = [3, 5, 7, 11]
    # Number of learnable prompt tokens p_1..p_M put in front of every class name (CoOp style).
    clip.PROMPT_LENGTH = 8
    # Std of the normal init of the prompt tokens.
    clip.PROMPT_INIT_STD = 0.02
    # Fixed template t0_c used by the prompt regularisers (Eq. 3-4); "{}" is the class name.
    clip.TEMPLATE = "a photo of a {}."
    # Optional text file of your own per-class descriptions, any dataset: lines
    # "class name<TAB>description"; the embeddings of a class's variants are averaged.
    clip.DESCRIPTIONS_FILE = ""
    # Add the class descriptions shipped with the training dataset (metadata
    # class_descriptions_file: hiervl/data/datasets/descriptions/<voc|coco|ade20k|cityscapes>.txt)
    # as variants of each class; HVLFormer turns this on. A dataset's own descriptions (a
    # folder's classes.txt, the demo's) are used whatever this says.
    clip.DATASET_DESCRIPTIONS = False

    # ---- §3.3 Pixel decoder with CMSAM -----------------------------------------------------
    pixel_decoder = hiervl_cfg.PIXEL_DECODER = CN()
    # Registry name in PIXEL_DECODER_REGISTRY.
    pixel_decoder.NAME = "HierVLPixelDecoder"
    # Pixel features fed to the deformable encoder (strides 8 / 16 / 32).
    pixel_decoder.IN_FEATURES = ["res3", "res4", "res5"]
    # Channels of the pixel decoder.
    pixel_decoder.CONV_DIM = 256
    # Channels of the stride-4 per-pixel embedding P(x) used by the dynamic masks.
    pixel_decoder.MASK_DIM = 256
    # Number of deformable-attention encoder layers (a CMSAM block follows each).
    pixel_decoder.NUM_LAYERS = 6
    # Attention heads / sampling points per head and level of MSDeformAttn.
    pixel_decoder.NUM_HEADS = 8
    pixel_decoder.NUM_POINTS = 4
    # Hidden size of the encoder FFN.
    pixel_decoder.FFN_DIM = 1024
    # Dropout inside the encoder layers.
    pixel_decoder.DROPOUT = 0.0
    # MSDeformAttn implementation: "auto" (fused kernel on CUDA when available), "reference"
    # (pure PyTorch), or "fused" (error if the kernel is unavailable).
    pixel_decoder.MSDA_IMPL = "auto"
    # CMSAM: bidirectional pixel<->text attention after each deformable layer (Tab. 3 row).
    pixel_decoder.CMSAM_ENABLED = True
    # Heads of the CMSAM cross-attentions.
    pixel_decoder.CMSAM_NUM_HEADS = 8

    # ---- §3.2 HSQG ----------------------------------------------------------------------
    hsqg = hiervl_cfg.HSQG = CN()
    # Hierarchical class queries; when off, one linear projection of t_c per class (E = 1).
    hsqg.ENABLED = True
    # Number of hierarchy levels E.
    hsqg.NUM_LEVELS = 3
    # Semantic relevance estimator r_c = sigmoid(alpha * cos(g, t_c) + beta).
    hsqg.RELEVANCE_ENABLED = True
    # Rows with r_c below this threshold are masked out of attention (tau_rel).
    hsqg.RELEVANCE_THRESHOLD = 0.5
    # Initial alpha and beta of the relevance estimator.
    hsqg.RELEVANCE_INIT_ALPHA = 10.0
    hsqg.RELEVANCE_INIT_BETA = -2.0

    # ---- §3.4 DQTD ----------------------------------------------------------------------
    decoder = hiervl_cfg.DECODER = CN()
    # Registry name in TRANSFORMER_DECODER_REGISTRY.
    decoder.NAME = "DualQueryTransformerDecoder"
    # Number of masked-attention decoder layers L.
    decoder.NUM_LAYERS = 9
    # Learnable instance queries N; 0 keeps only the class rows.
    decoder.NUM_INSTANCE_QUERIES = 100
    # Use the class rows from HSQG/CMSAM as decoder queries (DQTD); off = instance rows only.
    decoder.CLASS_QUERIES_ENABLED = True
    # Hidden size D of queries (also the HSQG query dim) and attention heads.
    decoder.HIDDEN_DIM = 256
    decoder.NUM_HEADS = 8
    # Hidden size of the decoder FFN.
    decoder.FFN_DIM = 2048
    # Dropout in the decoder layers.
    decoder.DROPOUT = 0.0
    # Pre-norm transformer layers.
    decoder.PRE_NORM = False
    # Predict after every layer and supervise each prediction (deep supervision).
    decoder.DEEP_SUPERVISION = True

    # ---- §3.5-3.6 Losses ----------------------------------------------------------------
    loss = hiervl_cfg.LOSS = CN()
    # Mask2Former-style set losses.
    loss.CLASS_WEIGHT = 2.0
    loss.MASK_WEIGHT = 5.0
    loss.DICE_WEIGHT = 5.0
    # Weight of the "no object" class in the classification CE.
    loss.NO_OBJECT_WEIGHT = 0.1
    # Point sampling of mask losses (keeps memory flat): number of points, oversample ratio,
    # fraction of points picked by uncertainty.
    loss.TRAIN_NUM_POINTS = 12544
    loss.OVERSAMPLE_RATIO = 3.0
    loss.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Eq. 2 alignment of decoder rows to their class text embedding.
    loss.ALIGN_WEIGHT = 1.0
    # BCE of the relevance estimator against ground-truth class presence (labelled images).
    loss.RELEVANCE_WEIGHT = 1.0
    # Eq. 3 topology and Eq. 4 anchor-adversarial prompt regularisers; lambda of Eq. 4.
    loss.TOPO_WEIGHT = 1.0
    loss.ANCHOR_WEIGHT = 1.0
    loss.ANCHOR_LAMBDA = 1.0
    # Eq. 6 masked consistency and Eq. 7 pixel-text contrastive (lambda_pt), temperature tau.
    loss.MASKED_CONSISTENCY_WEIGHT = 1.0
    loss.PIXEL_TEXT_WEIGHT = 0.5
    loss.PIXEL_TEXT_TEMPERATURE = 0.07

    # ---- Inference ----------------------------------------------------------------------
    test = hiervl_cfg.TEST = CN()
    # Sliding-window inference; images that fit in one crop run whole.
    test.SLIDING_WINDOW = True
    # Window size and stride (50 % overlap by default).
    test.CROP_SIZE = [512, 512]
    test.STRIDE = [256, 256]
    # Test-time augmentation: detectron2's TEST.AUG.ENABLED, MIN_SIZES (shortest edge of each
    # view), MAX_SIZE and FLIP, read by hiervl/modeling/inference.py (off by default).
    # Evaluate the EMA teacher when the checkpoint has one.
    test.USE_TEACHER = True
    # Also evaluate the student when evaluating the teacher during training.
    test.EVAL_STUDENT = True
    # Class names to predict over at inference ([] = the training classes), e.g. to evaluate on
    # a dataset with another class list (every DATASETS.TEST split must have this list, in this
    # order). Names of training classes keep the trained classifier; other names are scored by
    # the text similarity of each decoder row's CLIP-space embedding to the name (README, "New
    # class names at inference").
    test.CLASS_NAMES = []
    # Temperature of the softmax over those text similarities (names that are not training
    # classes only).
    test.NEW_CLASS_TEMPERATURE = 0.07

    # ---- §8 Semi-supervised training ----------------------------------------------------
    semi = cfg.SEMI = CN()
    # Train with unlabelled data; off = supervised on DATASETS.TRAIN only.
    semi.ENABLED = True
    # Registered unlabelled splits.
    semi.UNLABELED_DATASETS = ()
    # Global unlabelled batch (labelled batch is SOLVER.IMS_PER_BATCH; both are scaled with
    # SOLVER.REFERENCE_WORLD_SIZE, as the unlabelled losses' start and ramp-up iterations).
    semi.IMS_PER_BATCH_UNLABELED = 8
    # EMA teacher momentum cap m in min(1 - 1/(t+1), m).
    semi.EMA_MOMENTUM = 0.996
    # Pseudo-labels: "threshold" (keep confidence >= CONF_THRESHOLD) or "weight" (weight every
    # pixel by its confidence; Cityscapes).
    semi.PSEUDO_LABEL_MODE = "threshold"
    semi.CONF_THRESHOLD = 0.95
    # Class-balanced thresholds (CBST): each class predicted in the batch keeps at least this
    # fraction of its most confident pixels (0 = the global threshold only).
    semi.CLASS_BALANCED_RATIO = 0.0
    # Rule classes out of an unlabelled crop: a class the teacher gives less than
    # 1 - CONF_THRESHOLD at every pixel is known absent and its rows learn "no object" there
    # (METHOD §8). False: no class is ruled out; rows without a pseudo-labelled segment take no
    # part in the class loss (a weak teacher's rulings are often wrong, docs/PERFORMANCE.md).
    semi.RULE_OUT_ABSENT_CLASSES = True
    # Rule classes out pixel by pixel ("threshold" mode): where the teacher gives a class less
    # than 1 - CONF_THRESHOLD, that class's mask learns "not here" (target 0) on the pixels
    # without a pseudo-label. False: those pixels carry no target, so a mask may grow over them
    # at no cost (docs/PERFORMANCE.md, CamVid).
    semi.RULE_OUT_CLASSES_PER_PIXEL = False
    # Distribution alignment (ours; ReMixMatch / DARS style): before thresholding, the
    # teacher's class probabilities are multiplied by (class pixel frequency of the labelled
    # split) / (mean predicted probability over the unlabelled batch) and renormalised, which
    # counters the drift of pseudo-labels toward the large classes.
    semi.DISTRIBUTION_ALIGNMENT = False
    # Teacher's pseudo-labels from the mean of its predictions on the weak view and on its
    # horizontal mirror (flipped back): steadier labels and confidences, one more no-grad pass.
    semi.TEACHER_FLIP = False
    # UniMatch-style feature perturbation: channel dropout with this probability on the
    # student's image-encoder feature maps (not the global embedding) of the strong views.
    semi.FEATURE_DROPOUT = 0.0
    # Weight of the unlabelled (strong view) loss.
    semi.UNSUP_WEIGHT = 1.0
    # Entropy minimisation on the student's predictions of the strong views: weight of the mean
    # per-pixel entropy of their class distribution (an unlabelled loss term, times UNSUP_WEIGHT).
    semi.ENTROPY_WEIGHT = 0.01
    # Diagnosis of the unlabelled signal on data whose unlabelled images have masks (e.g.
    # tools/benchmark_semi.py, where they are the rest of a labelled pool): "none"; "measure":
    # the masks travel with the unlabelled crops and each step logs how many kept pseudo-label
    # pixels are right (semi/pseudo_precision, per class semi/pseudo_precision/<id>), how much
    # of the crop they cover (semi/pseudo_coverage) and how many absent-class rulings are wrong
    # (semi/absent_wrong); "oracle": the masks replace the teacher's
    # pseudo-labels (everything else as it is), which tells the unlabelled pipeline apart from
    # the pseudo-labels' quality; "oracle_kept": the pixels the pseudo-label keeps take their
    # mask's label (the pseudo-labels' coverage and class mix without their wrong pixels).
    # Each stops at an unlabelled image without a mask.
    semi.UNLABELED_GROUND_TRUTH = "none"
    # CutMix between unlabelled images.
    semi.CUTMIX_PROB = 0.5
    # Strong view: colour jitter (probability and strength), grayscale, Gaussian blur.
    semi.COLOR_JITTER_PROB = 0.8
    semi.COLOR_JITTER_STRENGTH = [0.5, 0.5, 0.5, 0.25]
    semi.GRAYSCALE_PROB = 0.2
    semi.BLUR_PROB = 0.5
    # Iterations of supervised-only warm-up before unlabelled losses switch on.
    semi.UNSUP_START_ITER = 0
    # Iterations over which the unlabelled losses' weight ramps up from 0 to UNSUP_WEIGHT after
    # UNSUP_START_ITER (exp(-5 (1 - x)^2)); 0 = full weight at once.
    semi.UNSUP_RAMPUP_ITERS = 0
    # Dataset mapper of the unlabelled loader (registry name; weak + strong views).
    semi.DATASET_MAPPER_NAME = "semantic_unlabeled"

    # ---- Data ---------------------------------------------------------------------------
    # Dataset mapper of the labelled loader (registry name).
    cfg.INPUT.DATASET_MAPPER_NAME = "semantic_labeled"
    # Square training crop (VOC/COCO/ADE 512, Cityscapes 801) and the random resize range.
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.SIZE = (512, 512)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.RESIZE_RATIO_RANGE = [0.5, 2.0]

    # A folder dataset registered from config (issue: your own data).
    custom = cfg.DATASETS.CUSTOM = CN()
    # Folder with images/, masks/, classes.txt (see README "Your own data"); "" = none.
    custom.ROOT = ""
    # Name prefix of the registered splits: NAME_train_labeled / _train_unlabeled / _val.
    custom.NAME = "custom"
    # Palette file for colour masks ("" = masks are single-channel class ids).
    custom.PALETTE = ""
    # Fraction of labelled images held out for validation when no split files exist.
    custom.VAL_FRACTION = 0.1

    # ---- Solver -------------------------------------------------------------------------
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier over BASE_LR of the pretrained CLIP visual tower (not of the
    # layers added to it), as Mask2Former's key (VOC 0.01, COCO/ADE 0.001, CS 0.1).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.01
    # Learning-rate multiplier over BASE_LR of every trainable parameter that is not pretrained
    # (decoders, the image encoder's feature pyramid, prompts, projections); the pretrained CLIP
    # tower gets SOLVER.BACKBONE_MULTIPLIER instead.
    cfg.SOLVER.HEAD_MULTIPLIER = 10.0
    # No weight decay on embeddings (prompt tokens, queries, position embeddings).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Learning-rate schedule: "WarmupPolyLR" (poly decay after linear warm-up) or detectron2's.
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    # Poly schedule power.
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # bf16 or fp16 autocast when SOLVER.AMP.ENABLED.
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    # Train a new run into an OUTPUT_DIR that holds another run's checkpoints: its
    # last_checkpoint and metrics.json start afresh and its model_*.pth files are replaced as
    # this run saves. False: such a run is refused (resume it with --resume, or pick another
    # OUTPUT_DIR).
    cfg.SOLVER.OVERWRITE_OUTPUT_DIR = False


def load_config(
    config_file: str = "",
    opts: Sequence = (),
    *,
    hooks: Iterable[Callable[[CN], None]] = (add_hiervl_config,),
    freeze: bool = True,
) -> CN:
    """The one way scripts build a config: detectron2's defaults, ``hooks`` (HierVL's keys and
    those of a project such as HVLFormer), ``config_file``, then command-line ``opts``.

    A folder dataset named by ``DATASETS.CUSTOM.ROOT`` is registered here (it also sets
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` from its ``classes.txt``), so train_net.py, demo/demo.py and the
    tools see the same datasets. ``MODEL.DEVICE`` "cuda" on a machine without a usable CUDA GPU
    becomes "cpu", with a warning. A detectron2 key that HierVL does not read
    (``INPUT.MIN_SIZE_TRAIN``, ``DATALOADER.SAMPLER_TRAIN``, ...) set off its default gets a
    warning naming what does its job here.
    """
    from hiervl.data.datasets.folder import register_folder_from_cfg

    cfg = get_cfg()
    for hook in hooks:
        hook(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    warn_unread_detectron2_keys(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE is %r but no CUDA GPU is available: running on the CPU",
            cfg.MODEL.DEVICE,
        )
        cfg.MODEL.DEVICE = "cpu"
    register_folder_from_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg
