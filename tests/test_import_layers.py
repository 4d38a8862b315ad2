"""Imports point down (docs/DEVELOPING.md's map, STYLE rule 12), read from the source files.

The package never imports a project (``projects/``) nor edits ``sys.path``; nothing below the
engine imports it; the engine reads masks through ``hiervl.data`` and imports
``hiervl.evaluation`` only where the trainer builds its evaluator (as detectron2's
``DefaultTrainer`` imports ``detectron2.evaluation``); the model (``hiervl.modeling``,
``hiervl.ops``, ``hiervl.hiervl_model``) imports neither the engine nor the evaluation; and no
two modules import each other, directly or around a circle, not even over one constant.
Imports inside functions count: a lazy import is still a dependency.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "hiervl"
MODEL_LAYER = ("hiervl.modeling", "hiervl.ops", "hiervl.hiervl_model")


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


def _module_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (an imported name counts as its module)."""
    imports = {_module_name(path): names for path, names in _package_files()}
    graph = {}
    for module, names in imports.items():
        targets = {n if n in imports else n.rpartition(".")[0] for n in names}
        graph[module] = {t for t in targets if t in imports and t != module}
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_package_has_no_import_circle():
    assert _cycles(_module_graph()) == []


def test_the_model_imports_neither_engine_nor_evaluation():
    wrong = [
        f"{name} -> {target}"
        for name, targets in sorted(_module_graph().items())
        if name.startswith(MODEL_LAYER)
        for target in sorted(targets)
        if target.startswith(("hiervl.engine", "hiervl.evaluation"))
    ]
    assert not wrong, wrong


def test_the_data_imports_neither_model_engine_nor_evaluation():
    # docs/DEVELOPING.md's map: hiervl.data sits above hiervl.utils only (the engine reads masks
    # through it, so an import back would be a circle waiting to happen).
    wrong = [
        f"{name} -> {target}"
        for name, targets in sorted(_module_graph().items())
        if name.startswith("hiervl.data")
        for target in sorted(targets)
        if target.startswith(MODEL_LAYER + ("hiervl.engine", "hiervl.evaluation", "hiervl.config"))
    ]
    assert not wrong, wrong
