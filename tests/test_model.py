"""The HierVL META_ARCH end to end on the tiny CLIP: training step, inference paths, ablations."""

import time
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import DatasetMapperTTA, build_model

import hiervl.hiervl_model  # noqa: F401  (registers the META_ARCH)
from hiervl import add_hiervl_config
from hiervl.hiervl_model import HierVL
from hiervl.modeling.clip import CLIPImageEncoder
from hiervl.modeling.heads import build_transformer_decoder
from hiervl.utils.testing import tiny_config

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = sorted((REPO / "configs" / "voc" / "ablations").glob("*.yaml"))


def _labels(height, width, seed, num_classes=8):
    """Blocky label map: 16x16 blocks of a few classes (every block covers whole ViT tokens)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, num_classes, ((height + 15) // 16, (width + 15) // 16), generator=g)
    return blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)[:height, :width].long()


def _inputs(height=64, width=64, count=2):
    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(100 + i)
        out.append(
            {
                "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g),
                "sem_seg": _labels(height, width, i),
            }
        )
    return out


def _images_and_labels(inputs):
    return [x["image"] for x in inputs], [x["sem_seg"] for x in inputs]


def _model(cfg=None, **overrides):
    torch.manual_seed(0)
    cfg = cfg if cfg is not None else tiny_config(**overrides)
    return build_model(cfg)


def _train_step(model, labeled=(), unlabeled=(), **unlabeled_kwargs):
    """One backward of the losses of a labelled batch (``forward``) and of a pseudo-labelled
    one (``losses(..., labeled=False, **unlabeled_kwargs)``, terms suffixed ``_unsup``)."""
    model.train()
    model.zero_grad(set_to_none=True)
    losses = dict(model(list(labeled))) if labeled else {}
    if unlabeled:
        unsup, _ = model.losses(*_images_and_labels(unlabeled), labeled=False, **unlabeled_kwargs)
        losses.update({f"{name}_unsup": value for name, value in unsup.items()})
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    return losses


def _missing_grads(model):
    return [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]


@pytest.fixture(scope="module")
def model():
    return _model()


def test_training_step_gives_every_trainable_parameter_a_gradient(model):
    assert isinstance(model, HierVL)
    losses, outputs = model.train().losses(*_images_and_labels(_inputs()), labeled=True)
    assert "aux_outputs" in outputs and outputs["pred_logits"].shape[0] == 2
    labeled, unlabeled = _inputs()[:1], _inputs()[1:]
    losses = _train_step(model, labeled, unlabeled)
    expected = {
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_align",
        "loss_relevance",
        "loss_topo",
        "loss_anchor",
        "loss_masked_consistency",
        "loss_pixel_text",
    }
    assert expected <= set(losses)
    assert {f"{name}_unsup" for name in expected - {"loss_topo", "loss_anchor"}} <= set(losses)
    assert {f"loss_ce_{i}" for i in range(2)} <= set(losses)  # input rows + 1 earlier layer
    assert losses["loss_masked_consistency"] > 0 and losses["loss_pixel_text"] > 0
    assert not _missing_grads(model)
    # the text tower and the frozen copy of the image encoder stay frozen; only prompts learn
    text_trainable = [n for n, p in model.text_encoder.named_parameters() if p.requires_grad]
    assert text_trainable == ["prompts"]
    assert all(p.grad is None for n, p in model.text_encoder.named_parameters() if n != "prompts")
    frozen = model.image_encoder.frozen_visual
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


def test_eval_on_odd_sizes_returns_input_size(model):
    model.eval()
    image = torch.randint(0, 256, (3, 200, 249), dtype=torch.uint8)
    out = model([{"image": image}, {"image": image[:, :70, :45], "height": 140, "width": 90}])
    assert out[0]["sem_seg"].shape == (8, 200, 249)
    assert out[1]["sem_seg"].shape == (8, 140, 90)
    assert out[0]["relevance"].shape == (8,)
    assert all(torch.isfinite(o["sem_seg"]).all() for o in out)


def test_sliding_window_whole_image_and_tta():
    cfg = tiny_config()
    model = _model(cfg).eval()
    image = torch.randint(0, 256, (3, 100, 130), dtype=torch.uint8)
    # 64-px windows with stride 48 cover a 100 x 130 image with 2 x 3 windows
    tta = model.semseg_inference
    assert tta.windows(100, 130) == [(0, 0), (0, 48), (0, 66), (36, 0), (36, 48), (36, 66)]
    sliding = model([{"image": image}])[0]["sem_seg"]
    tta.sliding_window = False
    whole = model([{"image": image}])[0]["sem_seg"]
    assert sliding.shape == whole.shape == (8, 100, 130)
    assert not torch.allclose(sliding, whole)
    # a window larger than the image runs it whole
    tta.sliding_window, tta.crop_size = True, (256, 256)
    torch.testing.assert_close(model([{"image": image}])[0]["sem_seg"], whole)
    # TTA: detectron2's views (shortest edge 75 and 100 px, and their flips), averaged at the
    # input size
    tta.tta = DatasetMapperTTA(min_sizes=[75, 100], max_size=1000, flip=True)
    augmented = model([{"image": image}])[0]["sem_seg"]
    assert augmented.shape == (8, 100, 130) and torch.isfinite(augmented).all()
    assert not torch.allclose(augmented, whole)
    # flip only (the input size and its mirror): the mean of the plain and mirrored maps
    tta.tta = DatasetMapperTTA(min_sizes=[100], max_size=1000, flip=True)
    flip_only = model([{"image": image}])[0]["sem_seg"]
    mirrored = model([{"image": image.flip(-1)}])[0]["sem_seg"]
    torch.testing.assert_close(flip_only, mirrored.flip(-1), rtol=1e-4, atol=1e-5)
    tta.tta = None
    plain = model([{"image": image}])[0]["sem_seg"]
    plain_of_mirror = model([{"image": image.flip(-1)}])[0]["sem_seg"]
    torch.testing.assert_close(flip_only, (plain + plain_of_mirror.flip(-1)) / 2)


def test_test_time_augmentation_reads_detectron2s_keys():
    """TEST.AUG.{ENABLED, MIN_SIZES, MAX_SIZE, FLIP}, as in detectron2 and Mask2Former (the
    views: detectron2's DatasetMapperTTA); off by default."""
    assert _model().semseg_inference.tta is None
    cfg = tiny_config(TEST__AUG__ENABLED=True, TEST__AUG__MIN_SIZES=[48, 96], TEST__AUG__FLIP=True)
    views = _model(cfg).semseg_inference._views(torch.zeros(3, 64, 80, dtype=torch.uint8))
    assert [(tuple(v.shape[-2:]), flipped) for v, flipped in views] == [
        ((48, 60), False),
        ((48, 60), True),
        ((96, 120), False),
        ((96, 120), True),
    ]


def test_semantic_probs_is_a_distribution(model):
    model.eval()
    images = torch.randn(2, 3, 48, 80)
    probs = model.semantic_probs(images)
    assert probs.shape == (2, 8, 48, 80) and not probs.requires_grad
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 48, 80), rtol=1e-4, atol=1e-4)


def test_unlabelled_batch_leaves_prompt_losses_to_labelled_one(model):
    """Eq. 3-5 do not depend on the images: a separate unlabelled forward must not repeat them."""
    losses = _train_step(model, unlabeled=_inputs())
    assert "loss_topo_unsup" not in losses and "loss_anchor_unsup" not in losses
    assert "loss_ce_unsup" in losses
    losses = _train_step(model, labeled=_inputs())
    assert "loss_topo" in losses and "loss_anchor" in losses


def test_absent_classes_are_for_pseudo_labels_only(model):
    """Ground truth is complete (every class without a pixel is absent): ``absent`` goes with
    ``labeled=False`` only, one row of ``C`` per image."""
    images, labels = _images_and_labels(_inputs())
    absent = torch.zeros(2, model.num_classes, dtype=torch.bool)
    with pytest.raises(ValueError, match="pseudo-labels"):
        model.losses(images, labels, labeled=True, absent=absent)
    with pytest.raises(ValueError, match="absent must be"):
        model.losses(images, labels, labeled=False, absent=absent[0])


def _unlabelled_class_step(model, absent):
    """loss_ce of one unlabelled image whose pseudo-label holds classes 0 and 1 (every pixel):
    the last layer's logits (with their gradient), its row assignment, and the kept rows."""
    sem = torch.zeros(64, 64, dtype=torch.long)
    sem[:, 32:] = 1
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator())
    assigned = []
    assign = model.criterion.assign

    def spy(*args, **kwargs):
        out = assign(*args, **kwargs)
        assigned.append(out)
        return out

    model.criterion.assign = spy
    # keep every class row (the random tiny model's relevance would drop most of them)
    threshold, model.hsqg.relevance_threshold = model.hsqg.relevance_threshold, 0.0
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        losses, outputs = model.losses(
            [image], [sem], labeled=False, absent=None if absent is None else absent[None]
        )
    finally:
        model.criterion.assign = assign
        model.hsqg.relevance_threshold = threshold
    logits = outputs["pred_logits"]
    logits.retain_grad()
    losses["loss_ce"].backward()
    rows, cols = assigned[0][0]  # the first call is the last layer's
    return logits, {int(r): int(c) for r, c in zip(rows, cols)}, outputs["keep"][0]


def test_unlabelled_image_trains_matched_rows_and_known_absent_classes(model):
    """METHOD §8: an unlabelled image is trained like a labelled one on its pseudo-label. The
    instance rows matched to its segments learn their classes (they used to get no class
    gradient), and the rows of classes the pseudo-label rules out learn "no object"; rows of
    classes it cannot speak for learn nothing (a "no object" target would teach the student
    that a class hidden under the unsure pixels is missing)."""
    num_classes = model.num_classes
    absent = torch.ones(num_classes, dtype=torch.bool)
    absent[:2] = False  # present (they have pixels): never absent
    absent[5] = False  # class 5: unknown (e.g. likely somewhere under the ignored pixels)
    torch.manual_seed(0)
    logits, assigned, keep = _unlabelled_class_step(model, absent)
    assert keep.all()
    grad = logits.grad[0]
    row_classes = model.hsqg.row_class(num_classes)
    class_rows = row_classes.numel()
    matched = [r for r in assigned if r >= class_rows]
    assert len(matched) == 2  # one instance row per pseudo-labelled segment
    for row in matched:
        assert grad[row].abs().sum() > 0, row
    for row, c in enumerate(row_classes.tolist()):
        if c in (0, 1):
            assert grad[row].abs().sum() > 0  # tied to its segment
        elif c == 5:
            assert grad[row].abs().sum() == 0  # unknown: no target
        else:
            # known absent: pushed toward "no object" (descent raises its logit)
            assert grad[row, -1] < 0, (row, c)
    # unmatched instance rows: "no object", unless they claim the unknown class
    claims = logits[0].detach().argmax(-1)
    for row in range(class_rows, logits.shape[1]):
        if row in assigned:
            continue
        if int(claims[row]) == 5:
            assert grad[row].abs().sum() == 0
        else:
            assert grad[row, -1] < 0

    # without a word on absence, no class row but the present ones has a target
    logits, _, _ = _unlabelled_class_step(model, None)
    grad = logits.grad[0]
    for row, c in enumerate(row_classes.tolist()):
        assert (grad[row].abs().sum() > 0) == (c in (0, 1)), (row, c)


def test_criterion_leaves_out_rows_the_pseudo_label_cannot_speak_for():
    """The class-loss targets with ``absent`` given, on hand-made rows: classes 0 (present),
    1 (known absent), 2 (unknown); class rows 0, 1, 2 (one level), then instance rows."""
    from hiervl.modeling.criterion import HierVLCriterion, semantic_targets
    from hiervl.modeling.matcher import HungarianMatcher

    crit = HierVLCriterion(
        num_classes=3,
        matcher=HungarianMatcher(num_points=64),
        class_weight=1.0,
        mask_weight=0.0,
        dice_weight=0.0,
        align_weight=0.0,
        no_object_weight=1.0,
        num_points=64,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    sem = torch.full((8, 8), 255, dtype=torch.long)
    sem[:, :4] = 0
    targets = [semantic_targets(sem, 3)]
    row_classes = torch.tensor([0, 1, 2, -1, -1, -1, -1, -1])
    logits = torch.full((1, 8, 4), -5.0)
    # instance rows claim: class 0 (matched), class 0 (duplicate), 1, 2, no object
    for row, claim in zip(range(3, 8), (0, 0, 1, 2, 3)):
        logits[0, row, claim] = 5.0
    masks = torch.full((1, 8, 8, 8), -5.0)
    masks[0, 3, :, :4] = 5.0  # row 3 predicts the segment of class 0: the matched row
    logits.requires_grad_(True)
    outputs = {"pred_logits": logits, "pred_masks": masks}
    keep = torch.ones(1, 8, dtype=torch.bool)
    absent = torch.tensor([[False, True, False]])
    crit(outputs, targets, row_classes=row_classes, row_keep=keep, absent=absent)[
        "loss_ce"
    ].backward()
    trained = (logits.grad[0].abs().sum(-1) > 0).tolist()
    # class rows: 0 tied, 1 "no object", 2 unknown; instance rows: matched, duplicate of a
    # present class, known-absent claim, unknown claim (left out), "no object" claim
    assert trained == [True, True, False, True, True, True, False, True]
    assert logits.grad[0, 1, -1] < 0 and logits.grad[0, 4, -1] < 0
    # complete targets (ground truth): every row has a target
    logits.grad = None
    crit(outputs, targets, row_classes=row_classes, row_keep=keep)["loss_ce"].backward()
    assert (logits.grad[0].abs().sum(-1) > 0).all()
    # a present class whose row the relevance gate dropped: not tied, and not known absent
    logits.grad = None
    keep[0, 0] = False
    crit(outputs, targets, row_classes=row_classes, row_keep=keep, absent=absent)[
        "loss_ce"
    ].backward()
    assert logits.grad[0, 0].abs().sum() == 0


def test_feature_dropout_perturbs_the_pixel_features_not_the_global_embedding(model):
    """UniMatch-style feature perturbation of strong views (``feature_dropout``)."""
    model.eval()  # no other dropout: the only difference is the perturbation
    images = model._normalize(_inputs(count=1)[0]["image"])[None]
    text = model.text_embeddings()
    with torch.no_grad():
        clean, hsqg_clean, _ = model.encode_decode(images, text)
        again, _, _ = model.encode_decode(images, text)
        perturbed, hsqg_perturbed, _ = model.encode_decode(images, text, feature_dropout=0.5)
    torch.testing.assert_close(clean["pred_masks"], again["pred_masks"])
    assert not torch.allclose(clean["pred_masks"], perturbed["pred_masks"])
    torch.testing.assert_close(hsqg_clean["relevance_logits"], hsqg_perturbed["relevance_logits"])
    # through the training losses
    losses = _train_step(model, unlabeled=_inputs(), feature_dropout=0.5)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_inputs_give_finite_losses(model):
    inputs = _inputs()
    inputs[0]["sem_seg"] = torch.full((64, 64), 255, dtype=torch.long)  # no labelled pixel
    inputs[1]["sem_seg"] = torch.zeros(64, 64, dtype=torch.long)  # one class, 7 absent
    _train_step(model, inputs)
    inputs = _inputs()
    for x in inputs:
        x["sem_seg"] = torch.full((64, 64), 255, dtype=torch.long)  # all-ignore pseudo-labels
    losses = _train_step(model, unlabeled=inputs)
    assert losses["loss_masked_consistency_unsup"] == 0
    # confidence weights all zero, and random ones
    weights = [torch.zeros(48, 80), torch.rand(48, 80)]
    _train_step(model, unlabeled=_inputs(height=48, width=80), weights=weights)


def test_loss_weights_shape_the_model_only_through_the_meta_arch():
    """A loss weight decides whether a part exists (the frozen ViT copy of Eq. 6, the
    text-space projection of Eq. 2): ``HierVL.from_config`` decides it and passes it down; the
    encoder's and decoder's own ``from_config`` read no loss weight (they used to, so a loss
    weight changed a module's structure and checkpoint keys behind the caller's back)."""
    cfg = tiny_config(
        MODEL__HIERVL__LOSS__ALIGN_WEIGHT=0.0, MODEL__HIERVL__LOSS__MASKED_CONSISTENCY_WEIGHT=0.0
    )
    model = _model(cfg)
    assert model.image_encoder.frozen_visual is None and model.decoder.text_proj is None
    assert not any(
        k.startswith(("image_encoder.frozen_visual", "decoder.text_proj"))
        for k in model.state_dict()
    )
    # the same config, the parts asked for by the caller
    decoder = build_transformer_decoder(
        cfg, num_classes=8, text_dim=64, num_class_rows=0, num_levels=1, predict_embeds=True
    )
    assert decoder.text_proj is not None
    encoder = CLIPImageEncoder(cfg, frozen_copy=True)
    assert encoder.frozen_visual is not None
    full = _model(tiny_config())
    assert full.image_encoder.frozen_visual is not None and full.decoder.text_proj is not None


def _ablation_cfg(path):
    """Tiny config with the keys an ablation yaml sets (its _BASE_ is the full VOC config)."""
    data = yaml.safe_load(path.read_text())
    data.pop("_BASE_")
    data.pop("OUTPUT_DIR", None)
    if "DECODER" in data["MODEL"]["HIERVL"] and data["MODEL"]["HIERVL"]["DECODER"].get(
        "NUM_INSTANCE_QUERIES"
    ):
        data["MODEL"]["HIERVL"]["DECODER"]["NUM_INSTANCE_QUERIES"] = 4
    cfg = tiny_config()
    cfg.merge_from_other_cfg(CfgNode(data))
    return cfg


@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_rows_build_and_train(path):
    assert path.read_text().startswith("# HierVL Tab. 3")
    assert yaml.safe_load(path.read_text())["_BASE_"] == "../hiervl_92.yaml"
    cfg = _ablation_cfg(path)
    model = _model(cfg)
    losses = _train_step(model, _inputs()[:1], _inputs()[1:])
    assert not _missing_grads(model), path.stem
    hv = cfg.MODEL.HIERVL
    assert (model.hsqg is None) == (
        not hv.DECODER.CLASS_QUERIES_ENABLED and not hv.PIXEL_DECODER.CMSAM_ENABLED
    )
    assert ("loss_align" in losses) == (hv.LOSS.ALIGN_WEIGHT > 0)
    assert ("loss_topo" in losses) == (hv.LOSS.TOPO_WEIGHT > 0)
    assert ("loss_relevance" in losses) == (
        hv.LOSS.RELEVANCE_WEIGHT > 0 and hv.HSQG.RELEVANCE_ENABLED
    )
    model.eval()
    assert model([{"image": torch.zeros(3, 40, 50, dtype=torch.uint8)}])[0]["sem_seg"].shape == (
        8,
        40,
        50,
    )


def test_full_size_vit_b16_forward_512():
    """The paper's configuration (ViT-B/16 at 512 px, decoder defaults), random init, CPU."""
    cfg = tiny_config(
        MODEL__HIERVL__CLIP__MODEL_NAME="ViT-B-16",
        MODEL__HIERVL__CLIP__IMAGE_SIZE=512,
        MODEL__HIERVL__CLIP__FEATURE_LAYERS=[3, 5, 7, 11],
        MODEL__HIERVL__CLIP__PROMPT_LENGTH=8,
    )
    defaults = get_cfg()
    add_hiervl_config(defaults)
    cfg.MODEL.HIERVL.PIXEL_DECODER = defaults.MODEL.HIERVL.PIXEL_DECODER.clone()
    cfg.MODEL.HIERVL.PIXEL_DECODER.MSDA_IMPL = "reference"
    cfg.MODEL.HIERVL.DECODER = defaults.MODEL.HIERVL.DECODER.clone()
    cfg.MODEL.HIERVL.HSQG = defaults.MODEL.HIERVL.HSQG.clone()
    cfg.MODEL.HIERVL.TEST.CROP_SIZE = [512, 512]
    cfg.MODEL.HIERVL.LOSS.MASKED_CONSISTENCY_WEIGHT = 0.0  # no frozen copy for a forward
    start = time.perf_counter()
    model = _model(cfg).eval()
    assert model.decoder.num_rows == 8 * 3 + 100 and len(model.decoder.layers) == 9
    built = time.perf_counter()
    out = model([{"image": torch.randint(0, 256, (3, 512, 512), dtype=torch.uint8)}])
    elapsed = time.perf_counter() - built
    assert out[0]["sem_seg"].shape == (8, 512, 512) and torch.isfinite(out[0]["sem_seg"]).all()
    print(f"ViT-B-16 512x512: build {built - start:.1f} s, forward {elapsed:.1f} s")
