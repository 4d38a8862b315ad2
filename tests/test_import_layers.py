"""Imports point down (docs/DEVELOPING.md's map, STYLE rule 12), read from the source files.

The package never imports a project (``projects/``) nor edits ``sys.path``; nothing below the
engine imports it; the engine reads masks through ``hiervl.data`` and imports
``hiervl.evaluation`` only where the trainer builds its evaluator (as detectron2's
``DefaultTrainer`` imports ``detectron2.evaluation``).
"""

import ast
from pathlib import Path
from typing import Iterator, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "hiervl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Set[str]:
    """Absolute names of the modules (and imported names) ``path`` imports, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _package_files() -> Iterator[Tuple[Path, Set[str]]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, _imports(path)


def test_the_package_never_imports_a_project_nor_edits_sys_path():
    for path, imports in _package_files():
        assert not any(name.split(".")[0] in ("hvlformer", "projects") for name in imports), path
        assert "sys.path" not in path.read_text(), f"{path} edits sys.path"


def test_nothing_below_the_engine_imports_it():
    for path, imports in _package_files():
        if _module_name(path).startswith("hiervl.engine") or path == PACKAGE / "__init__.py":
            continue
        assert not any(name.startswith("hiervl.engine") for name in imports), path


def test_the_engine_reads_masks_through_data():
    for path in sorted((PACKAGE / "engine").glob("*.py")):
        evaluation = {n for n in _imports(path) if n.startswith("hiervl.evaluation")}
        if path.name == "trainer.py":
            # the evaluator of EvalHook / test_model
            assert evaluation <= {"hiervl.evaluation", "hiervl.evaluation.build_semseg_evaluator"}
        else:
            assert not evaluation, path
