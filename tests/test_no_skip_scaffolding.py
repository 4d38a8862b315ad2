"""A broken import of our own code fails the suite; it never turns into a skip.

Early scaffolding skipped tests while a module did not exist yet (``importorskip("hiervl...")``,
``pytest.skip("... not written yet")``). Today such a skip hides a broken import: the suite goes
green with the tests of a whole module gone. Skips stay allowed for what a machine may lack
(CUDA, triton, the optional export extra), never for our own modules.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ("hiervl", "projects", "hvlformer", "tools", "train_net")


def _test_files():
    for root in (REPO / "tests", REPO / "projects"):
        yield from sorted(root.rglob("test_*.py"))


def skip_scaffolding(source: str):
    """(line, text) of each ``importorskip`` of our own modules and each skip that waits for code
    to be written."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        args = [a.value for a in node.args if isinstance(a, ast.Constant)]
        text = " ".join(str(a) for a in args)
        if node.func.attr == "importorskip" and text.startswith(OUR_PACKAGES):
            found.append((node.lineno, f"importorskip({text!r})"))
        elif node.func.attr == "skip" and "not written" in text:
            found.append((node.lineno, f"skip({text!r})"))
    return found


def test_the_detector_finds_both_forms():
    source = (
        'import pytest\nmod = pytest.importorskip("hiervl.hiervl_model")\n'
        'pytest.importorskip("onnx")\n'
        'def test_x():\n    pytest.skip("hiervl/x.py not written yet")\n'
    )
    assert [line for line, _ in skip_scaffolding(source)] == [2, 5]


def test_no_test_skips_over_our_own_modules():
    found = [
        f"{path.relative_to(REPO)}:{line}: {text}"
        for path in _test_files()
        for line, text in skip_scaffolding(path.read_text())
    ]
    assert not found, "skips that hide a broken import of our code:\n" + "\n".join(found)
