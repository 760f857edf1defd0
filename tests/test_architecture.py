"""The layers show in the folders, and imports only go down.

    core  <  retrieval  <  {lightning_modules, datamodules, callbacks}  <  pipeline  <  train.py

Every import of every module counts, lazy ones inside functions too; only ``if TYPE_CHECKING:`` blocks
are ignored (they never run). ``benchmarks/`` and ``tests/`` may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"core": 0, "retrieval": 1, "lightning_modules": 2, "datamodules": 2, "callbacks": 2, "pipeline": 3,
          "train": 4}


def _modules() -> dict[str, Path]:
    modules = {"train": ROOT / "train.py"}
    for package in LAYERS:
        for path in sorted((ROOT / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``path`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                 ast.unparse(node.test) for sub in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_no_relative_imports() -> None:
    """Absolute imports only, so the walk above sees every edge."""
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree)), name


def test_imports_only_go_down() -> None:
    upward = sorted(f"{module} imports {target}" for module, targets in _graph().items() for target in targets
                    if _layer(target) > _layer(module))
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    graph = _graph()
    circles = []
    for start in graph:  # a module that can reach itself is on a circle
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node == start:
                circles.append(start)
                break
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
    assert not circles, f"modules on an import circle: {circles}"


def test_the_checks_see_what_they_check(tmp_path: Path) -> None:
    """A lazy import inside a function counts, a TYPE_CHECKING one does not."""
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pipeline.runner\n"
                      "def f():\n    from pipeline import layout\n")
    assert _imports(source, _modules()) == {"pipeline", "pipeline.layout"}
