"""Class names as CLIP reads them: one clean name per class in every registered dataset."""

import re

import pytest
import torch
from detectron2.data import MetadataCatalog

from hiervl.data.datasets import BUILTIN_DATASETS
from hiervl.modeling.clip import PromptTextEncoder, build_open_clip, build_tokenizer
from hiervl.utils.testing import TINY_CLIP_NAME

DEMO_NAMES = ["hiervl_demo_train_labeled", "hiervl_demo_train_unlabeled", "hiervl_demo_val"]


def _registered_names():
    names = list(DEMO_NAMES)
    for spec, _ in BUILTIN_DATASETS.values():
        names += spec.dataset_names()
    return names


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return PromptTextEncoder(
        clip_model=build_open_clip(TINY_CLIP_NAME, "", 64),
        tokenizer=build_tokenizer(TINY_CLIP_NAME),
        prompt_length=4,
    )


def _bad(text: str) -> bool:
    """A comma list ("road, route") or stray whitespace ("window .", double or edge spaces)."""
    return "," in text or text != text.strip() or "  " in text or bool(re.search(r"\s[.]", text))


def test_no_prompt_has_a_comma_list_or_stray_whitespace(encoder):
    # detectron2's ADE20K names are synonym lists ("escalator, moving staircase, moving
    # stairway") and "window " has a trailing space: CLIP would read them as written.
    checked = 0
    for dataset in _registered_names():
        classes = MetadataCatalog.get(dataset).stuff_classes
        assert len(set(classes)) == len(classes), f"{dataset}: two classes share a name"
        for prompted in (True, False):
            for texts in encoder.prompt_texts(classes, prompted=prompted):
                bad = [t for t in texts if _bad(t)]
                assert not bad, f"{dataset}: {bad}"
                checked += 1
    assert checked > 2 * (150 + 81 + 21 + 19)


def test_clean_names_match_their_classes():
    from hiervl.data.datasets.ade20k import ADE20K_CLASSES, ADE20K_SYNONYMS
    from hiervl.data.datasets.coco import COCO_CLASSES

    assert len(ADE20K_CLASSES) == len(ADE20K_SYNONYMS) == 150
    assert ADE20K_CLASSES[96] == "escalator" and ADE20K_SYNONYMS[96].startswith("escalator,")
    assert ADE20K_CLASSES[8] == "window"
    assert MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes == list(ADE20K_CLASSES)
    assert len(COCO_CLASSES) == 81 and COCO_CLASSES[0] == "background"
    assert COCO_CLASSES[63] == "television" and COCO_CLASSES[33] == "ball"
    assert MetadataCatalog.get("coco_sem_seg_val").stuff_classes == list(COCO_CLASSES)
