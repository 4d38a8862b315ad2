"""demo/demo.py: one PNG per input of the input's size, --show-gt, unreadable inputs, teacher.

The demo runs on a stand-in META_ARCH (nearest class colour of the demo palette) honouring the
HierVL inference contract, so these tests take a second; the real tiny model's TTA path
through the predictor is tested at the end.
"""

import importlib.util
import logging
import os
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from PIL import Image
from torch import nn

from hiervl.data.datasets.demo import DEMO_CLASSES, DEMO_COLORS
from hiervl.utils.checkpoint import TEACHER_CHECKPOINT_KEY
from hiervl.utils.testing import recorded_texts, tiny_config, train_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@META_ARCH_REGISTRY.register()
class DemoTestColourSegmenter(nn.Module):
    """Scores each class by closeness of the pixel colour to the class colour (stand-in)."""

    def __init__(self, cfg):
        super().__init__()
        self.register_buffer("colours", torch.tensor(DEMO_COLORS, dtype=torch.float32))
        self.sharpness = nn.Parameter(torch.tensor(0.1))

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            image = x["image"].float()
            dist = (image[None] - self.colours[:, :, None, None]).pow(2).sum(1).sqrt()
            probs = torch.softmax(-self.sharpness * dist, dim=0)
            probs = F.interpolate(
                probs[None], size=(x["height"], x["width"]), mode="bilinear", align_corners=False
            )[0]
            outputs.append({"sem_seg": probs, "relevance": probs.mean(dim=(1, 2))})
        return outputs


def _load_demo_module():
    spec = importlib.util.spec_from_file_location(
        "hiervl_demo_script", os.path.join(REPO, "demo", "demo.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo_module()


def _scene(height, width, seed, noise=10):
    """A two-region image (sky above grass) and its label mask."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    mask = np.full((height, width), 3, dtype=np.uint8)
    mask[: height // 2] = 0
    image[: height // 2] = DEMO_COLORS[0]
    image[height // 2 :] = DEMO_COLORS[3]
    if noise:
        image = (image.astype(int) + rng.integers(-noise, noise, size=image.shape)).clip(0, 255)
    return image.astype(np.uint8), mask


def _config_file(tmp_path, weights="", **overrides):
    cfg = tiny_config(
        MODEL__META_ARCHITECTURE="DemoTestColourSegmenter",
        MODEL__WEIGHTS=weights,
        DATASETS__TEST=("hiervl_demo_val",),
        **overrides,
    )
    path = tmp_path / f"cfg_{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(cfg.dump())
    return str(path)


def _register_split(tmp_path, items):
    name = f"test_demo_{uuid.uuid4().hex[:8]}"
    records = [
        {"file_name": image, "sem_seg_file_name": mask, "image_id": i}
        for i, (image, mask) in enumerate(items)
    ]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=list(DEMO_CLASSES),
        stuff_colors=[tuple(c) for c in DEMO_COLORS],
        ignore_label=255,
        evaluator_type="sem_seg",
        labeled=True,
    )
    return name


def test_one_png_per_input_of_input_size(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    sizes = {"a.png": (40, 56), "b.jpg": (33, 47)}
    for name, (h, w) in sizes.items():
        Image.fromarray(_scene(h, w, 0)[0]).save(folder / name)
    extra = tmp_path / "c.png"
    Image.fromarray(_scene(21, 30, 1)[0]).save(extra)
    out = tmp_path / "out"
    rc = demo.main(
        ["--config-file", _config_file(tmp_path), "--input", str(folder), str(tmp_path / "c.*")]
        + ["--output", str(out), "--dataset", _register_split(tmp_path, [])]
    )
    assert rc == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png"]
    sizes["c.png"] = (21, 30)
    for name, (h, w) in sizes.items():
        picture = np.asarray(Image.open(out / (os.path.splitext(name)[0] + ".png")))
        assert picture.shape == (h, w, 3)


def test_show_gt_is_twice_as_wide_draws_both_and_captions_them(tmp_path):
    # Flat regions: Visualizer re-renders the image (nearest resampling), exact away from edges.
    image, mask = _scene(64, 160, 2, noise=0)
    image_path, mask_path = str(tmp_path / "img.png"), str(tmp_path / "img_mask.png")
    Image.fromarray(image).save(image_path)
    gt = mask.copy()
    gt[:, :80] = 255  # the ground truth's left half is ignored: drawn as the plain image
    Image.fromarray(gt).save(mask_path)
    dataset = _register_split(tmp_path, [(image_path, mask_path)])
    out = tmp_path / "out"
    with recorded_texts() as texts:
        rc = demo.main(
            ["--config-file", _config_file(tmp_path), "--input", image_path, "--output", str(out)]
            + ["--dataset", dataset, "--show-gt", "--alpha", "0.8"]
        )
    assert rc == 0
    picture = np.asarray(Image.open(out / "img.png")).astype(int)
    # A caption strip above the two halves says which is which.
    strip = picture.shape[0] - 64
    assert strip > 0 and picture.shape[1:] == (320, 3)
    captions = [t.get_text() for t in texts if t.get_text() in ("prediction", "ground truth")]
    assert captions == ["prediction", "ground truth"]
    assert np.median(picture[:strip]) < 60  # the dark strip
    picture = picture[strip:]
    pred, right = picture[:, :160], picture[:, 160:]
    # Prediction overlay covers the whole image; the gt panel leaves the ignored half as is.
    assert np.abs(pred[:, :20] - image[:, :20]).mean() > 5
    for rows in (slice(2, 29), slice(35, 62)):
        assert np.abs(right[rows, 2:70] - image[rows, 2:70]).max() == 0
    assert np.abs(right[:, 90:] - image[:, 90:]).mean() > 5


def test_unreadable_image_is_named_and_others_written(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.fromarray(_scene(20, 20, 3)[0]).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        rc = demo.main(
            ["--config-file", _config_file(tmp_path), "--output", str(out), "--input"]
            + [str(broken), str(good), str(missing)]
        )
    assert rc == 1
    assert os.listdir(out) == ["good.png"]
    assert "broken.png" in caplog.text and "missing.jpg" in caplog.text


def test_confidence_threshold_leaves_uncertain_pixels_undrawn(tmp_path):
    image, _ = _scene(24, 24, 4, noise=0)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    out = tmp_path / "out"
    # sharpness 0 → uniform scores: every pixel's confidence is 1/C, below 0.5.
    weights = tmp_path / "flat.pth"
    model = DemoTestColourSegmenter(None)
    with torch.no_grad():
        model.sharpness.zero_()
    torch.save({"model": model.state_dict()}, weights)
    rc = demo.main(
        ["--config-file", _config_file(tmp_path, str(weights)), "--input", str(path)]
        + ["--output", str(out), "--confidence", "0.5"]
    )
    assert rc == 0
    picture = np.asarray(Image.open(out / "x.png")).astype(int)
    assert np.abs(picture[2:10, 2:-2] - image[2:10, 2:-2]).max() == 0
    assert np.abs(picture[14:-2, 2:-2] - image[14:-2, 2:-2]).max() == 0


def test_teacher_weights_loaded_when_present(tmp_path):
    student, teacher = DemoTestColourSegmenter(None), DemoTestColourSegmenter(None)
    with torch.no_grad():
        student.sharpness.fill_(0.0)
        teacher.sharpness.fill_(0.3)
    weights = tmp_path / "ckpt.pth"
    torch.save(
        {"model": student.state_dict(), TEACHER_CHECKPOINT_KEY: teacher.state_dict()}, weights
    )
    from hiervl.evaluation.predictor import HierVLPredictor

    cfg = tiny_config(
        MODEL__META_ARCHITECTURE="DemoTestColourSegmenter", MODEL__WEIGHTS=str(weights)
    )
    predictor = HierVLPredictor(cfg)
    assert predictor.loaded == "teacher"
    assert predictor.model.sharpness.item() == pytest.approx(0.3)
    cfg.MODEL.HIERVL.TEST.USE_TEACHER = False
    assert HierVLPredictor(cfg).model.sharpness.item() == pytest.approx(0.0)


def test_real_model_tta_through_predictor():
    """The tiny random-init HierVL with flip + two scales and sliding windows, via the demo."""
    import hiervl.hiervl_model  # noqa: F401

    demo_module = importlib.import_module("predictor")  # demo/predictor.py, put on sys.path
    torch.manual_seed(0)
    cfg = tiny_config(
        TEST__AUG__ENABLED=True,
        TEST__AUG__MIN_SIZES=[48, 64],
        TEST__AUG__FLIP=True,
        MODEL__HIERVL__TEST__CROP_SIZE=[48, 48],
        MODEL__HIERVL__TEST__STRIDE=[32, 32],
    )
    vis = demo_module.VisualizationDemo(
        cfg, metadata=MetadataCatalog.get("hiervl_demo_val"), show_gt=True
    )
    model = vis.predictor.model
    tta = model.semseg_inference
    assert tta.tta.flip and tta.tta.min_sizes == [48, 64]
    image, _ = _scene(70, 90, 5)
    outputs, picture = vis.run_on_image(image)
    assert outputs["sem_seg"].shape == (len(DEMO_CLASSES), 70, 90)
    assert outputs["relevance"].shape == (len(DEMO_CLASSES),)
    assert torch.isfinite(outputs["sem_seg"]).all() and (outputs["sem_seg"] >= 0).all()
    assert picture.shape[0] > 70 and picture.shape[1:] == (180, 3)  # + the caption strip
    tta.tta = None
    plain = vis.predictor(image)["sem_seg"]
    assert plain.shape == outputs["sem_seg"].shape
    assert not torch.allclose(plain, outputs["sem_seg"])


def test_real_model_draws_images_of_any_size(tmp_path):
    """The tiny HierVL at the inputs' own sizes (INPUT.MIN_SIZE_TEST 0, as in the shipped
    configs): before, an image of at most 32x32 px stopped the whole batch (GroupNorm on a 1x1
    map) although the demo promises to skip bad inputs."""
    import hiervl.hiervl_model  # noqa: F401

    torch.manual_seed(0)
    sizes = {"a_1px.png": (1, 1), "b_small.png": (20, 13), "c_32.png": (32, 32), "d.png": (40, 50)}
    for name, (h, w) in sizes.items():
        Image.fromarray(_scene(h, w, 6)[0]).save(tmp_path / name)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config(INPUT__MIN_SIZE_TEST=0).dump())
    out = tmp_path / "out"
    rc = demo.main(
        ["--config-file", str(config), "--output", str(out), "--input"]
        + [str(tmp_path / name) for name in sizes]
    )
    assert rc == 0
    for name, (h, w) in sizes.items():
        assert np.asarray(Image.open(out / name)).shape == (h, w, 3)


def test_show_gt_with_a_mask_of_another_size_skips_that_input(tmp_path, caplog):
    image, mask = _scene(24, 30, 7)
    good, bad = str(tmp_path / "good.png"), str(tmp_path / "bad.png")
    Image.fromarray(image).save(good)
    Image.fromarray(image).save(bad)
    Image.fromarray(mask).save(tmp_path / "good_mask.png")
    Image.fromarray(mask[:20]).save(tmp_path / "bad_mask.png")
    dataset = _register_split(
        tmp_path, [(good, str(tmp_path / "good_mask.png")), (bad, str(tmp_path / "bad_mask.png"))]
    )
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        rc = demo.main(
            ["--config-file", _config_file(tmp_path), "--input", bad, good, "--output", str(out)]
            + ["--dataset", dataset, "--show-gt"]
        )
    assert rc == 1
    assert os.listdir(out) == ["good.png"]
    assert "bad_mask.png is 30x20 (WxH), the image 30x24" in caplog.text


def _trained_weights(tmp_path):
    """The tiny HierVL trained on the demo's 8 classes, saved as a checkpoint."""
    path = tmp_path / "trained.pth"
    torch.save({"model": train_tiny_model().state_dict()}, path)
    return str(path)


def _real_config_file(tmp_path, weights):
    path = tmp_path / f"real_{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(tiny_config(MODEL__WEIGHTS=weights).dump())
    return str(path)


def test_classes_option_predicts_and_draws_the_given_names(tmp_path):
    import hiervl.hiervl_model  # noqa: F401

    image, _ = _scene(64, 96, 6)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    names = ["sky", "road", "car", "person"]
    cfg_file = _real_config_file(tmp_path, _trained_weights(tmp_path))
    out = tmp_path / "out"
    with recorded_texts() as texts:
        rc = demo.main(
            ["--config-file", cfg_file, "--input", str(path), "--output", str(out)]
            + ["--classes", ", ".join(names)]
        )
    assert rc == 0
    assert np.asarray(Image.open(out / "scene.png")).shape == (64, 96, 3)
    drawn = {t.get_text() for t in texts}
    assert drawn and drawn <= set(names)

    # The predictor behind it: ids over the given list (4 classes), as many relevances.
    vis = importlib.import_module("predictor").VisualizationDemo(
        tiny_config(MODEL__WEIGHTS=str(tmp_path / "trained.pth")),
        metadata=MetadataCatalog.get("hiervl_demo_val"),
        class_names=names,
    )
    outputs, _ = vis.run_on_image(image)
    assert outputs["sem_seg"].shape == (4, 64, 96) and outputs["relevance"].shape == (4,)
    assert vis.metadata.stuff_classes == names
    assert vis.metadata.stuff_colors[0] == tuple(DEMO_COLORS[0])  # "sky" keeps its colour


def test_classes_file_reads_a_class_list_with_descriptions(tmp_path):
    import hiervl.hiervl_model  # noqa: F401

    classes = tmp_path / "classes.txt"
    classes.write_text("water\tthe sea\nboat\ta sailing boat\tship\n")
    args = demo.get_parser().parse_args(
        ["--config-file", "x", "--output", "y", "--classes-file", str(classes)]
    )
    assert demo.class_names_of(args) == (
        ["water", "boat"],
        [["the sea"], ["a sailing boat", "ship"]],
    )
    image, _ = _scene(40, 40, 7)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    cfg_file = _real_config_file(tmp_path, _trained_weights(tmp_path))
    rc = demo.main(
        ["--config-file", cfg_file, "--input", str(path), "--output", str(tmp_path / "out")]
        + ["--classes-file", str(classes)]
    )
    assert rc == 0
    with pytest.raises(SystemExit):  # one of the two options only
        demo.get_parser().parse_args(
            ["--config-file", "x", "--output", "y", "--classes", "a", "--classes-file", "f"]
        )


def test_classes_option_needs_a_model_that_takes_class_names(tmp_path):
    image, _ = _scene(20, 20, 8)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    with pytest.raises(TypeError, match="class names"):
        demo.main(
            ["--config-file", _config_file(tmp_path), "--input", str(path)]
            + ["--output", str(tmp_path / "out"), "--classes", "sky,road"]
        )
