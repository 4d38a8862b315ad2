"""The class descriptions shipped with VOC / COCO / ADE20K / Cityscapes and their loader."""

from types import SimpleNamespace

import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES

import hiervl.data  # noqa: F401  (registers the dataset names)
from hiervl.config import add_hiervl_config
from hiervl.data.datasets import class_descriptions
from hiervl.data.datasets.builtin import BUILTIN_DATASETS
from hiervl.data.datasets.cityscapes import CITYSCAPES_CLASSES
from hiervl.data.datasets.class_descriptions import (
    DESCRIPTIONS_DIR,
    dataset_class_descriptions,
    names_match,
    read_class_descriptions,
)
from hiervl.data.datasets.folder import parse_classes
from hiervl.data.datasets.voc import VOC_CLASSES
from hiervl.modeling.clip.factory import build_tokenizer

KEYS = sorted(BUILTIN_DATASETS)
# The files name each class as the text encoder should read it (one natural name), which may
# share no word with the published name; these are the published names plus such spellings.
_CLEANER = {"tv": "television", "falls": "waterfall"}


def _published(names):
    return tuple(f"{n}, {_CLEANER[n]}" if n in _CLEANER else n for n in names)


# Each dataset's classes in train-id order as published (detectron2's comma-joined synonym
# lists for ADE20K; COCO's background + 80 things by category id): the files must follow this
# order whatever spelling the registration gives a class.
CANONICAL = {
    "voc": VOC_CLASSES,
    "cityscapes": CITYSCAPES_CLASSES,
    "ade20k": _published(ADE20K_SEM_SEG_CATEGORIES),
    "coco": _published(
        ("background",)
        + tuple(c["name"] for c in sorted(COCO_CATEGORIES, key=lambda c: c["id"]) if c["isthing"])
    ),
}


def test_one_file_per_builtin_dataset_and_nothing_else():
    assert sorted(p.stem for p in DESCRIPTIONS_DIR.glob("*.txt")) == KEYS


@pytest.mark.parametrize("key", KEYS)
def test_file_has_one_clean_line_per_class(key):
    spec = BUILTIN_DATASETS[key][0]
    path = DESCRIPTIONS_DIR / f"{key}.txt"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.splitlines()
    assert len(lines) == len(spec.stuff_classes)
    for line_no, line in enumerate(lines, start=1):
        where = f"{path.name}:{line_no}"
        # Exactly "name<TAB>description": one tab, no leading / trailing / doubled spaces.
        assert line.count("\t") == 1, where
        name, desc = line.split("\t")
        for part in (name, desc):
            assert part and part == part.strip() and "  " not in part, where
        # Names are plain names, not comma lists of synonyms (what CLIP should read).
        assert "," not in name, where
    names, descriptions, problems = parse_classes(text, str(path))
    assert not problems
    flat = [d for descs in descriptions for d in descs]
    assert len(set(names)) == len(names) and len(set(flat)) == len(flat) == len(lines)
    # Every line names the class of its train id (loosely: "escalator" for "escalator, moving
    # staircase, moving stairway"), so that no description lands on a neighbouring class.
    canonical = CANONICAL[key]
    assert len(canonical) == len(spec.stuff_classes)
    wrong = [(i, a, b) for i, (a, b) in enumerate(zip(names, canonical)) if not names_match(a, b)]
    assert not wrong
    # The loader accepts it against the registered class list.
    assert read_class_descriptions(path, spec.stuff_classes) == descriptions


@pytest.mark.parametrize("key", KEYS)
def test_descriptions_fit_the_prompted_text_context(key):
    """A description longer than ViT-B/16's 77 tokens minus the 8 prompts would be cut off
    silently by the tokenizer."""
    cfg = get_cfg()
    add_hiervl_config(cfg)
    room = 77 - cfg.MODEL.HIERVL.CLIP.PROMPT_LENGTH
    _, descriptions, _ = parse_classes((DESCRIPTIONS_DIR / f"{key}.txt").read_text())
    tokens = build_tokenizer("ViT-B-16")([d[0] + "." for d in descriptions], context_length=77)
    assert int((tokens != 0).sum(dim=1).max()) <= room


@pytest.mark.parametrize("key", KEYS)
def test_registration_points_at_the_shipped_file(key):
    spec = BUILTIN_DATASETS[key][0]
    for name in spec.dataset_names():
        meta = MetadataCatalog.get(name)
        assert meta.class_descriptions_file == str(DESCRIPTIONS_DIR / f"{key}.txt")
        # Not read at registration: only MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS reads it.
        assert meta.get("class_descriptions", None) is None


def test_names_match_loosely_but_not_anything():
    # Cleaned spellings of detectron2's ADE20K names, and plain equality, are accepted ...
    assert names_match("window", "window ")
    assert names_match("escalator", "escalator, moving staircase, moving stairway")
    assert names_match("trash can", "trash can")
    assert names_match("tub", "bathtub") and names_match("tv", "tv monitor")
    assert names_match("Rock", "rock, stone")
    # ... a neighbouring class is not (a file shifted by one line is caught).
    assert not names_match("chair", "sofa")
    assert not names_match("wall", "building")


def test_loader_errors_name_the_file_and_line(tmp_path):
    classes = ["sky", "tree", "road"]
    path = tmp_path / "d.txt"
    path.write_text("sky\tthe blue sky\ntree\ta green tree\n")
    with pytest.raises(ValueError, match=r"d\.txt: 2 lines for 3 classes"):
        read_class_descriptions(path, classes)
    # A shifted file: most names do not match their classes.
    path.write_text("sky\tthe blue sky\nroad\ta grey road\ntree\ta green tree\n")
    with pytest.raises(ValueError, match=r"d\.txt:2: 'road' does not match class 1 'tree'"):
        read_class_descriptions(path, classes)
    path.write_text("sky\tthe blue sky\ntree\nroad\ta grey road\n")
    with pytest.raises(ValueError, match=r"d\.txt:2: no description"):
        read_class_descriptions(path, classes)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_class_descriptions(tmp_path / "missing.txt", classes)
    path.write_text("sky\tthe blue sky\ntree\ta green tree\tan oak\nroad\ta grey road\n")
    assert read_class_descriptions(path, classes)[1] == ["a green tree", "an oak"]


def test_a_renamed_class_only_warns(tmp_path, monkeypatch):
    """The dataset may spell a class differently from the file (e.g. a cleaner ADE20K name):
    the line order decides, the odd name is logged with its line."""
    warnings = []
    # The module's logger itself (caplog misses it once detectron2's setup_logger has set
    # propagate=False on "hiervl" in an earlier test).
    monkeypatch.setattr(class_descriptions.logger, "warning", warnings.append)
    path = tmp_path / "d.txt"
    path.write_text("sky\tthe blue sky\nfalls\twater dropping over rocks\nroad\ta grey road\n")
    out = read_class_descriptions(path, ["sky", "waterfall", "road"])
    assert out[1] == ["water dropping over rocks"]
    assert len(warnings) == 1
    assert "d.txt:2: 'falls' does not match class 1 'waterfall'" in warnings[0]


def _meta(**fields):
    meta = SimpleNamespace(name="toy", stuff_classes=["sky", "tree"], **fields)
    meta.get = lambda key, default=None: getattr(meta, key, default)
    return meta


def test_dataset_class_descriptions_on_off_and_own(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("sky\tthe blue sky\ntree\ta green tree\n")
    with_file = _meta(class_descriptions_file=str(path))
    assert dataset_class_descriptions(with_file, use_file=False) is None
    assert dataset_class_descriptions(with_file, use_file=True) == [
        ["the blue sky"],
        ["a green tree"],
    ]
    # A dataset's own descriptions (folder classes.txt, demo) are kept, on or off, and the
    # file's join them when on.
    both = _meta(class_descriptions=[["clear sky"], []], class_descriptions_file=str(path))
    assert dataset_class_descriptions(both, use_file=False) == [["clear sky"], []]
    assert dataset_class_descriptions(both, use_file=True) == [
        ["clear sky", "the blue sky"],
        ["a green tree"],
    ]
    own_only = _meta(class_descriptions=[["clear sky"], []])
    assert dataset_class_descriptions(own_only, use_file=True) == [["clear sky"], []]
    assert dataset_class_descriptions(_meta(), use_file=True) is None
