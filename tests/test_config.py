"""Every key that add_hiervl_config adds is read by some code of the project."""

import ast
import logging
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


def _code_files():
    files = [REPO / "train_net.py"]
    for d in CODE_DIRS:
        files += sorted((REPO / d).rglob("*.py"))
    config_py = REPO / "hiervl" / "config.py"
    return [f for f in files if f.exists() and f != config_py]


def _attribute_chain(node):
    """``cfg.MODEL.HIERVL`` -> ["cfg", "MODEL", "HIERVL"]; None if it does not end in a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def _key_path(chain, aliases):
    """The full config path a chain reads, e.g. ``hsqg_cfg.ENABLED`` with ``hsqg_cfg =
    cfg.MODEL.HIERVL.HSQG`` -> ["MODEL", "HIERVL", "HSQG", "ENABLED"]; None if the chain does not
    start at the config (``cfg`` / ``self.cfg``) or at a name bound to one of its nodes."""
    if chain[:2] == ["self", "cfg"]:
        chain = chain[1:]
    if chain[0] == "cfg":
        path = []
    elif chain[0] in aliases:
        path = list(aliases[chain[0]])
    else:
        return None
    for part in chain[1:]:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", part):
            break
        path.append(part)
    return path


def config_reads(source: str):
    """Full key paths that ``source`` reads: attribute chains from ``cfg`` or from a local name
    bound to a config node (``hiervl_cfg = cfg.MODEL.HIERVL``; aliases are resolved per
    top-level function or class, so ``test = ...`` in one function does not leak into another)."""
    reads = set()
    tree = ast.parse(source)
    scopes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    module_level = [n for n in tree.body if n not in scopes]
    for scope_nodes in [module_level] + [[s] for s in scopes]:
        nodes = [n for top in scope_nodes for n in ast.walk(top)]
        aliases = {}
        for _ in range(3):  # an alias of an alias: resolve until nothing changes
            for node in nodes:
                if (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                ):
                    chain = _attribute_chain(node.value)
                    path = _key_path(chain, aliases) if chain else None
                    if path is not None:
                        aliases[node.targets[0].id] = path
        for node in nodes:
            chain = _attribute_chain(node) if isinstance(node, ast.Attribute) else None
            path = _key_path(chain, aliases) if chain else None
            if path:
                reads.add(".".join(path))
    return reads


def test_config_adds_keys():
    keys = _added_keys()
    assert "MODEL.HIERVL.HSQG.NUM_LEVELS" in keys
    assert "SEMI.CONF_THRESHOLD" in keys


def test_every_added_key_is_read():
    reads = set()
    for path in _code_files():
        reads |= config_reads(path.read_text())
    unread = [key for key in _added_keys() if key not in reads]
    assert not unread, f"config keys that no code reads (by full key path): {unread}"


def test_config_reads_match_full_key_paths():
    """The dead-key check must see which node a leaf belongs to: another node's ``.ENABLED``
    (TEST.AUG.ENABLED) does not count as a read of MODEL.HIERVL.HSQG.ENABLED (the old text search
    passed when the only reader of HSQG.ENABLED was replaced by ``True``)."""
    source = (
        "def from_config(cls, cfg):\n"
        "    hsqg_cfg = cfg.MODEL.HIERVL.HSQG\n"
        "    levels = hsqg_cfg.NUM_LEVELS\n"
        "    aug = cfg.TEST.AUG\n"
        "    return aug.ENABLED, self.cfg.SEMI.CONF_THRESHOLD\n"
        "def other(test):\n"
        "    return test.ENABLED\n"
    )
    reads = config_reads(source)
    assert {"MODEL.HIERVL.HSQG.NUM_LEVELS", "TEST.AUG.ENABLED", "SEMI.CONF_THRESHOLD"} <= reads
    assert "MODEL.HIERVL.HSQG.ENABLED" not in reads
    assert not any(key.endswith(".ENABLED") and key != "TEST.AUG.ENABLED" for key in reads)


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


def test_unread_detectron2_keys_warn_with_the_replacement(caplog):
    """detectron2 keys HierVL never reads (multi-scale training sizes, the train sampler, the
    backbone name) used to be dropped in silence; moved off detectron2's default they warn and
    name what does their job here. Defaults, and Mask2Former's INPUT.CROP.TYPE "absolute" (what
    our crop is), stay quiet."""
    from hiervl import load_config
    from hiervl.config import _UNREAD_DETECTRON2_KEYS

    logger = "hiervl.config"
    with caplog.at_level(logging.WARNING, logger=logger):
        load_config(opts=["INPUT.CROP.TYPE", "absolute"])
    assert not [r for r in caplog.records if "does not read" in r.getMessage()]
    caplog.clear()
    opts = [
        "INPUT.MIN_SIZE_TRAIN",
        (640, 800),
        "DATALOADER.SAMPLER_TRAIN",
        "RepeatFactorTrainingSampler",
        "MODEL.BACKBONE.NAME",
        "D2SwinTransformer",
        "INPUT.CROP.TYPE",
        "relative",
    ]
    with caplog.at_level(logging.WARNING, logger=logger):
        load_config(opts=opts)
    messages = [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()]
    assert len(messages) == 4
    for key in opts[::2]:
        (message,) = [m for m in messages if m.startswith(key)]
        assert _UNREAD_DETECTRON2_KEYS[key] in message


@pytest.mark.parametrize(
    "config_file",
    sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")),
)
def test_shipped_configs_set_no_unread_detectron2_key(config_file):
    from detectron2.config import CfgNode as CN

    from hiervl.config import warn_unread_detectron2_keys

    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.set_new_allowed(True)  # project keys (HVLFORMER) are not what this test is about
    cfg.merge_from_file(str(REPO / config_file))
    assert isinstance(cfg, CN) and warn_unread_detectron2_keys(cfg) == []
