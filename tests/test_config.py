"""Every key that add_hiervl_config adds is read by some code of the project."""

import re
from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

from hiervl import add_hiervl_config

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ["hiervl", "projects", "tools", "demo"]


def _flatten(node: CfgNode, prefix: str = ""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            yield from _flatten(value, name + ".")
        else:
            yield name


def _items(node: CfgNode, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", _listify(value)


def _listify(value):
    """YAML turns tuples into lists; compare both as lists."""
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    return value


def _added_keys():
    base = set(_flatten(get_cfg()))
    cfg = get_cfg()
    add_hiervl_config(cfg)
    return sorted(set(_flatten(cfg)) - base)


def _code_text() -> str:
    files = [REPO / "train_net.py"]
    for d in CODE_DIRS:
        files += sorted((REPO / d).rglob("*.py"))
    config_py = REPO / "hiervl" / "config.py"
    return "\n".join(f.read_text() for f in files if f.exists() and f != config_py)


def test_config_adds_keys():
    keys = _added_keys()
    assert "MODEL.HIERVL.HSQG.NUM_LEVELS" in keys
    assert "SEMI.CONF_THRESHOLD" in keys


def test_every_added_key_is_read():
    code = _code_text()
    unread = []
    for key in _added_keys():
        parent, leaf = key.rsplit(".", 1)
        parent_leaf = parent.rsplit(".", 1)[-1]
        # A read looks like `cfg.SEMI.CONF_THRESHOLD` or `semi_cfg.CONF_THRESHOLD` with the parent
        # node in scope; require the parent's name and the leaf as an attribute access.
        if not re.search(rf"\.{re.escape(leaf)}\b", code) or parent_leaf not in code:
            unread.append(key)
    assert not unread, f"config keys that no code reads: {unread}"


def test_config_round_trip(tmp_path):
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.MODEL.HIERVL.HSQG.NUM_LEVELS = 2
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.dump())
    cfg2 = get_cfg()
    add_hiervl_config(cfg2)
    cfg2.merge_from_file(str(path))
    assert cfg2.MODEL.HIERVL.HSQG.NUM_LEVELS == 2
    assert dict(_items(cfg2)) == dict(_items(cfg))


def test_mask2former_keys_and_the_renamed_ones(tmp_path):
    """Where the concept is Mask2Former's, the key is too: MODEL.SEM_SEG_HEAD.NUM_CLASSES,
    TEST.AUG.*. An old key stops with a message naming the new one, from a file or the command
    line."""
    from hiervl import load_config

    cfg = load_config(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 8])
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 8 and "NUM_CLASSES" not in cfg.MODEL.HIERVL
    path = tmp_path / "old.yaml"
    path.write_text("MODEL:\n  HIERVL:\n    NUM_CLASSES: 8\n")
    for kwargs in ({"opts": ["MODEL.HIERVL.NUM_CLASSES", 8]}, {"config_file": str(path)}):
        with pytest.raises(KeyError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES"):
            load_config(**kwargs)
    with pytest.raises(KeyError, match="TEST.AUG.FLIP"):
        load_config(opts=["MODEL.HIERVL.TEST.FLIP", True])
    with pytest.raises(KeyError, match="TEST.AUG.MIN_SIZES.*shortest-edge"):
        load_config(opts=["MODEL.HIERVL.TEST.SCALES", [0.75, 1.0]])
