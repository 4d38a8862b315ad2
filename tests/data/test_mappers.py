"""Labelled and unlabelled dataset mappers on a tiny image written to disk."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from hiervl.config import add_hiervl_config
from hiervl.data.dataset_mappers import (
    SemanticLabeledMapper,
    SemanticUnlabeledMapper,
    build_dataset_mapper,
    resize_pad_crop,
)


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
