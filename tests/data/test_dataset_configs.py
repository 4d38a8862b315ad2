"""The 20 Table-1 configs load, refer to registered datasets, and follow the recipe."""

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import hiervl.data  # noqa: F401  (registers the dataset names)
from hiervl.config import add_hiervl_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# dataset dir: (budgets, N_TRAIN, epochs, crop, base lr, backbone multiplier, classes)
RECIPES = {
    "voc": ((92, 183, 366, 732, 1464), 10582, 80, 512, 1e-4, 0.01, 21),
    "coco": ((232, 463, 925, 1849, 3697), 118287, 10, 512, 4e-4, 0.001, 81),
    "ade20k": ((158, 316, 632, 1263, 2526), 20210, 40, 512, 4e-4, 0.001, 150),
    "cityscapes": ((100, 186, 372, 744, 1488), 2975, 240, 801, 5e-5, 0.1, 19),
}
ALL = [(d, n) for d, r in RECIPES.items() for n in r[0]]


def _load(dataset: str, n: int):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.merge_from_file(str(CONFIGS / dataset / f"hiervl_{n}.yaml"))
    return cfg


def test_exactly_the_table_configs_exist():
    for dataset, recipe in RECIPES.items():
        found = sorted(int(p.stem.split("_")[1]) for p in (CONFIGS / dataset).glob("hiervl_*.yaml"))
        assert found == sorted(recipe[0])


@pytest.mark.parametrize("dataset,n", ALL)
def test_config_recipe_and_datasets(dataset, n):
    _, n_train, epochs, crop, lr, mult, classes = RECIPES[dataset]
    cfg = _load(dataset, n)
    names = list(cfg.DATASETS.TRAIN) + list(cfg.SEMI.UNLABELED_DATASETS) + list(cfg.DATASETS.TEST)
    assert names == [
        f"{dataset}_sem_seg_train_{n}_labeled",
        f"{dataset}_sem_seg_train_{n}_unlabeled",
        f"{dataset}_sem_seg_val",
    ]
    registered = DatasetCatalog.list()
    for name in names:
        assert name in registered
        assert len(MetadataCatalog.get(name).stuff_classes) == classes
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes
    assert tuple(cfg.INPUT.CROP.SIZE) == (crop, crop)
    assert list(cfg.MODEL.HIERVL.TEST.CROP_SIZE) == [crop, crop]
    assert list(cfg.MODEL.HIERVL.TEST.STRIDE) == [crop // 2, crop // 2]
    assert cfg.SOLVER.BASE_LR == pytest.approx(lr)
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(mult)
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SEMI.IMS_PER_BATCH_UNLABELED == 8
    assert cfg.SOLVER.MAX_ITER == epochs * math.ceil((n_train - n) / 8)
    mode = "weight" if dataset == "cityscapes" else "threshold"
    assert cfg.SEMI.PSEUDO_LABEL_MODE == mode
    assert cfg.MODEL.HIERVL.CLIP.MODEL_NAME == "ViT-B-16"


@pytest.mark.parametrize("dataset,n", ALL)
def test_config_builds_with_tiny_clip(dataset, n):
    """Every config builds its model with the tiny CLIP (random init, 64 px) on the CPU."""
    from detectron2.modeling import build_model

    import hiervl.hiervl_model  # noqa: F401  (registers the META_ARCH)
    from hiervl.utils.testing import tiny_config

    cfg = tiny_config()
    cfg.merge_from_file(str(CONFIGS / dataset / f"hiervl_{n}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HIERVL.CLIP.MODEL_NAME = "HierVL-Tiny-ViT"
    cfg.MODEL.HIERVL.CLIP.PRETRAINED = ""
    cfg.MODEL.HIERVL.CLIP.IMAGE_SIZE = 64
    cfg.MODEL.HIERVL.CLIP.FEATURE_LAYERS = [0, 1, 2, 3]
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.training
    assert sum(p.numel() for p in model.parameters()) > 0
