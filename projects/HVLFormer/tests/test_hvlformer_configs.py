"""HVLFormer's 20 Table-1 configs: each is its HierVL setting plus HVLFormer's keys, builds, and
gives the text encoder the dataset's class descriptions."""

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hvlformer import add_hvlformer_config  # noqa: E402

import hiervl.data  # noqa: E402,F401  (registers the dataset names)
from hiervl.config import add_hiervl_config  # noqa: E402
from hiervl.data.datasets.builtin import BUILTIN_DATASETS  # noqa: E402
from hiervl.data.datasets.class_descriptions import (  # noqa: E402
    DESCRIPTIONS_DIR,
    read_class_descriptions,
)

PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CORE_CONFIGS = Path(__file__).resolve().parents[3] / "configs"
ALL = [(key, n) for key, (spec, _) in BUILTIN_DATASETS.items() for n in spec.budgets]


def _budgets(folder: Path, prefix: str):
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob(f"{prefix}_*.yaml"))


def _cfg(path: Path, hvlformer: bool = True):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    if hvlformer:
        add_hvlformer_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def _tiny(path: Path, descriptions: bool):
    """The config at ``path`` with the tiny random-init CLIP (as tests/data's config tests)."""
    from hiervl.utils.testing import tiny_config

    cfg = tiny_config()
    add_hvlformer_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HIERVL.CLIP.MODEL_NAME = "HierVL-Tiny-ViT"
    cfg.MODEL.HIERVL.CLIP.PRETRAINED = ""
    cfg.MODEL.HIERVL.CLIP.IMAGE_SIZE = 64
    cfg.MODEL.HIERVL.CLIP.FEATURE_LAYERS = [0, 1, 2, 3]
    cfg.MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS = descriptions
    return cfg


def _build(cfg):
    from detectron2.modeling import build_model

    import hiervl.hiervl_model  # noqa: F401  (registers the META_ARCH)

    torch.manual_seed(0)
    return build_model(cfg)


def test_one_hvlformer_config_per_table_setting():
    for key, (spec, _) in BUILTIN_DATASETS.items():
        assert _budgets(PROJECT_CONFIGS / key, "hvlformer") == sorted(spec.budgets)
        assert _budgets(CORE_CONFIGS / key, "hiervl") == sorted(spec.budgets)


@pytest.mark.parametrize("key,n", ALL)
def test_config_is_its_hiervl_setting_plus_hvlformer(key, n):
    path = PROJECT_CONFIGS / key / f"hvlformer_{n}.yaml"
    core = CORE_CONFIGS / key / f"hiervl_{n}.yaml"
    # One _BASE_ chain to the core config of the same setting: no copied recipe blocks.
    raw = yaml.safe_load(path.read_text())
    assert (path.parent / raw["_BASE_"]).resolve() == core.resolve()
    assert set(raw) == {"_BASE_", "OUTPUT_DIR"}
    cfg, base = _cfg(path), _cfg(core)
    assert cfg.OUTPUT_DIR == f"output/{key}/hvlformer_{n}"
    base.OUTPUT_DIR = cfg.OUTPUT_DIR
    assert cfg == base
    # HVLFormer's choices: its three-view mapper and the dataset-aware prompts; HierVL's own
    # config keeps names only (the descriptions are HVLFormer's, METHOD.md §1).
    assert cfg.SEMI.DATASET_MAPPER_NAME == "hvlformer_unlabeled"
    assert cfg.MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS
    assert not _cfg(core, hvlformer=False).MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS
    # The datasets resolve, with the shipped descriptions file attached.
    names = list(cfg.DATASETS.TRAIN) + list(cfg.SEMI.UNLABELED_DATASETS) + list(cfg.DATASETS.TEST)
    for name in names:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        assert meta.class_descriptions_file == str(DESCRIPTIONS_DIR / f"{key}.txt")


@pytest.mark.parametrize("key,n", ALL)
def test_config_builds_with_tiny_clip_and_its_descriptions(key, n):
    cfg = _tiny(PROJECT_CONFIGS / key / f"hvlformer_{n}.yaml", descriptions=True)
    model = _build(cfg)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    expected = read_class_descriptions(DESCRIPTIONS_DIR / f"{key}.txt", meta.stuff_classes)
    assert model.class_names == list(meta.stuff_classes)
    assert model.class_descriptions == expected
    assert len(expected) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES and all(expected)


@pytest.mark.parametrize("on", [True, False])
def test_descriptions_reach_the_text_encoder_only_when_on(on):
    """With the key on, every class's text anchor averages its name and its description; off,
    it is the name alone (HierVL's configs)."""
    model = _build(_tiny(PROJECT_CONFIGS / "voc" / "hvlformer_92.yaml", descriptions=on))
    shipped = read_class_descriptions(DESCRIPTIONS_DIR / "voc.txt", model.class_names)
    with torch.no_grad():
        anchors = model.text_embeddings()
        names_only = model.text_encoder(model.class_names)
        with_shipped = model.text_encoder(model.class_names, shipped)
    assert anchors.shape == names_only.shape == (21, model.text_encoder.embed_dim)
    # The shipped descriptions move every class's anchor away from its name alone.
    assert ((with_shipped - names_only).abs().amax(dim=1) > 1e-4).all()
    if on:
        assert model.class_descriptions == shipped
        torch.testing.assert_close(anchors, with_shipped)
    else:
        assert model.class_descriptions is None
        torch.testing.assert_close(anchors, names_only)
