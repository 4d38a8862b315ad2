"""tools/eval_class_names.py: a split predicted over the training classes and a given list."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from hiervl.data.datasets.demo import DEMO_CLASSES
from hiervl.utils.testing import tiny_config, train_tiny_model

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "eval_class_names", REPO / "tools" / "eval_class_names.py"
)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    weights = folder / "trained.pth"
    torch.save({"model": train_tiny_model().state_dict()}, weights)
    path = folder / "config.yaml"
    path.write_text(tiny_config(MODEL__WEIGHTS=str(weights)).dump())
    return str(path)


def _run(capsys, config_file, *args):
    assert tool.main(["--config-file", config_file, "--limit", "3", *args]) == 0
    return capsys.readouterr().out


def _figures(out):
    lines = out.splitlines()
    base = float(lines[1].split("mIoU ")[1])
    given = float(lines[2].split("mIoU ")[1].split(";")[0])
    agreement = float(lines[2].split("prediction on ")[1].split(" %")[0])
    return base, given, agreement


def test_reordered_names_agree_everywhere(capsys, config_file):
    out = _run(capsys, config_file, "--classes", ",".join(DEMO_CLASSES[::-1]))
    base, given, agreement = _figures(out)
    assert agreement == 100.0 and given == base
    assert "pixels of new names: none" in out


def test_extended_list_reports_the_new_names(capsys, config_file):
    out = _run(capsys, config_file, "--classes", ",".join(DEMO_CLASSES + ["road", "car"]))
    assert "10 names, 8 standing for training classes by name" in out
    assert "road " in out.split("pixels of new names: ")[1]
    _, _, agreement = _figures(out)
    assert 0 <= agreement <= 100


def test_miou_counts_pixels_of_new_names_as_misses():
    confusion = np.array([[5, 0], [0, 3], [0, 2]])  # row 2: pixels given to a new name
    assert tool.miou(confusion) == pytest.approx(100 * (1.0 + 3 / 5) / 2)
