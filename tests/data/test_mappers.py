"""Labelled and unlabelled dataset mappers on a tiny image written to disk."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image

from hiervl.config import add_hiervl_config
from hiervl.data.dataset_mappers import (
    SemanticLabeledMapper,
    SemanticUnlabeledMapper,
    build_dataset_mapper,
    resize_pad_crop,
)
from hiervl.data.dataset_mappers.augment import resize_for_test


@pytest.fixture()
def sample(tmp_path):
    image = np.zeros((12, 20, 3), np.uint8)
    image[:, 10:] = (200, 50, 50)  # RGB: right half red
    mask = np.zeros((12, 20), np.uint8)
    mask[:, 10:] = 1
    cv2.imwrite(str(tmp_path / "img.png"), image[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    return {
        "file_name": str(tmp_path / "img.png"),
        "sem_seg_file_name": str(tmp_path / "mask.png"),
        "image_id": 0,
    }


def _cfg(crop=(16, 16)):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.INPUT.CROP.SIZE = crop
    cfg.INPUT.RESIZE_RATIO_RANGE = [1.0, 1.0]
    return cfg


def test_labeled_mapper_pads_crops_and_keeps_alignment(sample):
    mapper = build_dataset_mapper(_cfg(), "semantic_labeled", is_train=True)
    assert isinstance(mapper, SemanticLabeledMapper)
    before = dict(sample)
    out = mapper(sample, rng=np.random.default_rng(0))
    assert sample == before  # input untouched
    image, sem = out["image"], out["sem_seg"]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert sem.dtype == torch.long and sem.shape == (16, 16)
    # 12 rows padded to 16: the last 4 rows are ignore and black
    assert (sem[12:] == 255).all() and (image[:, 12:] == 0).all()
    red = image[0, :12] > 150
    assert torch.equal(red, sem[:12] == 1)  # pixels and labels stay aligned (flip or not)
    again = mapper(sample, rng=np.random.default_rng(0))
    assert torch.equal(again["image"], image)  # reproducible from the generator


def test_labeled_mapper_test_mode(sample):
    out = build_dataset_mapper(_cfg(), is_train=False)(sample)
    assert out["image"].shape == (3, 12, 20) and "sem_seg" not in out
    assert (out["height"], out["width"]) == (12, 20)


def test_test_mapper_resizes_as_the_predictor(sample):
    """INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST: the evaluation loader's images are resized as
    HierVLPredictor resizes its input (the mapper used to keep them at their size while the
    predictor resized, so evaluation and prediction saw different images)."""
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 24, 36
    out = build_dataset_mapper(cfg, is_train=False)(sample)
    assert out["image"].shape == (3, 22, 36)  # shortest edge 24, then the longest capped at 36
    assert (out["height"], out["width"]) == (12, 20)  # the output keeps the original size
    image = np.asarray(Image.open(sample["file_name"]).convert("RGB"))
    resized = resize_for_test(24, 36).get_transform(image).apply_image(image)
    assert torch.equal(out["image"], torch.from_numpy(resized.transpose(2, 0, 1).copy()))


def test_unlabeled_mapper_views(sample):
    cfg = _cfg()
    cfg.SEMI.COLOR_JITTER_PROB = 1.0
    cfg.SEMI.GRAYSCALE_PROB = 1.0
    mapper = build_dataset_mapper(cfg, cfg.SEMI.DATASET_MAPPER_NAME)
    assert isinstance(mapper, SemanticUnlabeledMapper)
    out = mapper(sample, rng=np.random.default_rng(1))
    weak, strong, ignore = out["image"], out["image_strong"], out["ignore_mask"]
    assert weak.shape == strong.shape == (3, 16, 16) and strong.dtype == torch.uint8
    assert ignore.dtype == torch.bool and ignore[12:].all() and not ignore[:12].any()
    assert "sem_seg" not in out and "sem_seg_file_name" not in out
    # grayscale strong view: equal channels; same crop as the weak view (red half stays bright)
    assert torch.equal(strong[0], strong[1]) and torch.equal(strong[1], strong[2])
    assert (strong[:, ignore] == 0).all()
    assert not torch.equal(weak, strong)


def test_resize_pad_crop_scales():
    image = np.zeros((10, 10, 3), np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    img, m, pad = resize_pad_crop(image, mask, scale=2.0, crop_size=(8, 8), y0=3, x0=4, flip=True)
    assert img.shape == (8, 8, 3) and m.shape == (8, 8) and not pad.any()


# ---- bad pairs are errors that name the files (issue 17, items 2, 3, 8) ----------------------


def _pair(tmp_path, image_hw, mask_hw, *, orientation=1, mask_value=1, ext=".png"):
    """An image (optionally with an EXIF orientation) and an id mask, written with PIL."""
    image = Image.fromarray(np.full((*image_hw, 3), 90, np.uint8))
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(tmp_path / f"img{ext}", exif=exif.tobytes())
    Image.fromarray(np.full(mask_hw, mask_value, np.uint8)).save(tmp_path / "mask.png")
    return {
        "file_name": str(tmp_path / f"img{ext}"),
        "sem_seg_file_name": str(tmp_path / "mask.png"),
        "image_id": 0,
    }


def test_mask_of_another_size_is_an_error_naming_the_pair(tmp_path):
    # Before: the 100x90 mask was stretched onto the 128x128 image without a word.
    record = _pair(tmp_path, (128, 128), (90, 100))
    mapper = build_dataset_mapper(_cfg(), "semantic_labeled", is_train=True)
    with pytest.raises(ValueError) as err:
        mapper(record, rng=np.random.default_rng(0))
    msg = str(err.value)
    assert "mask.png is 100x90 (WxH)" in msg and "img.png is 128x128" in msg


def test_mask_in_the_stored_orientation_of_an_exif_rotated_image(tmp_path):
    # The JPEG is stored 120x80 (WxH) with EXIF orientation 6: it is read as 80x120, and a mask
    # drawn on the stored pixels (120x80) does not fit it.
    record = _pair(tmp_path, (80, 120), (80, 120), orientation=6, ext=".jpg")
    mapper = build_dataset_mapper(_cfg(), "semantic_labeled", is_train=True)
    with pytest.raises(ValueError, match=r"(?s)img\.jpg is 80x120.*EXIF orientation 6"):
        mapper(record, rng=np.random.default_rng(0))
    # The same mask drawn on the image as read (80x120) is fine.
    Image.fromarray(np.ones((120, 80), np.uint8)).save(tmp_path / "mask.png")
    out = mapper(record, rng=np.random.default_rng(0))
    assert out["sem_seg"].shape == (16, 16)


def test_mask_ids_outside_the_classes_are_an_error_naming_the_file(tmp_path):
    # Before: with MODEL.HIERVL.PIXEL_TEXT_WEIGHT 0 these pixels were dropped silently, with the
    # default weight the pixel-text loss crashed without naming a file.
    record = _pair(tmp_path, (12, 20), (12, 20))
    mask = np.zeros((12, 20), np.uint8)
    mask[0, 0], mask[5, 5], mask[6, 6] = 255, 5, 7
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cfg = _cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    mapper = build_dataset_mapper(cfg, "semantic_labeled", is_train=True)
    with pytest.raises(
        ValueError, match=r"ids \[5, 7\] outside 0\.\.4 and ignore 255 \(.*mask\.png"
    ):
        mapper(record, rng=np.random.default_rng(0))
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 8
    assert build_dataset_mapper(cfg, "semantic_labeled")(record)["sem_seg"].max() == 255


def test_sixteen_bit_mask_ids_are_checked_before_the_uint8_cast(tmp_path):
    # 300 would wrap to 44, a valid-looking id, in a uint8 cast.
    record = _pair(tmp_path, (12, 20), (12, 20))
    Image.fromarray(np.full((12, 20), 300, np.uint16)).save(tmp_path / "mask.png")
    mapper = build_dataset_mapper(_cfg(), "semantic_labeled", is_train=True)
    with pytest.raises(ValueError, match=r"ids \[300\]"):
        mapper(record)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_files_name_themselves(tmp_path):
    # Before: "OSError: image file is truncated" with no file name.
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "img.jpg")
    Image.fromarray(rng.integers(0, 3, (64, 64), dtype=np.uint8)).save(tmp_path / "mask.png")
    record = {
        "file_name": str(tmp_path / "img.jpg"),
        "sem_seg_file_name": str(tmp_path / "mask.png"),
        "image_id": 0,
    }
    _truncate(tmp_path / "img.jpg")
    cfg = _cfg()
    for mapper in (
        build_dataset_mapper(cfg, "semantic_labeled", is_train=True),
        build_dataset_mapper(cfg, "semantic_labeled", is_train=False),
        build_dataset_mapper(cfg, cfg.SEMI.DATASET_MAPPER_NAME),
    ):
        with pytest.raises(OSError, match=r"img\.jpg: cannot read image .*truncated"):
            mapper(record, rng=np.random.default_rng(0))
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "img.jpg")
    _truncate(tmp_path / "mask.png")
    with pytest.raises(OSError, match=r"mask\.png: cannot read mask"):
        build_dataset_mapper(cfg, "semantic_labeled", is_train=True)(record)
