"""Floors that only look down: each package imports only the floors below it, and no module of the
project imports itself back through others (imports inside functions count: a deferred import hides
a cycle from Python, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {  # top-level package -> the folder that holds it
    "model": ROOT,
    "training": ROOT,
    "server": ROOT,
    "testkit": ROOT,
    "benchmarks": ROOT,
    "metanet_client": ROOT / "clients/python/src",
}
# which of the project's packages each package may import (itself always)
MAY_IMPORT = {
    "model": set(),
    "training": {"model"},
    "server": {"model"},
    "metanet_client": set(),
    "testkit": {"model", "training", "server", "metanet_client"},
    "benchmarks": {"model", "training", "server", "metanet_client", "testkit"},
}


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its ``__init__``)."""
    modules = {}
    for package, folder in SOURCES.items():
        for path in sorted((folder / package).rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _runs(node: ast.If) -> bool:
    """False for ``if TYPE_CHECKING:`` blocks (annotations only: nothing is imported at run time)."""
    test = node.test
    return not (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") and not (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not (isinstance(node, ast.If) and not _runs(node)):
            yield from _import_nodes(node)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package that holds this module
                package = name.split(".") if is_package else name.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from package import module`` imports the module; ``from module import name`` the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a non-module: its package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        floor = module.split(".")[0]
        for target in sorted(targets):
            above = target.split(".")[0]
            if above != floor and above not in MAY_IMPORT[floor]:
                bad.append(f"{module} imports {target}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_floor():
    assert set(MAY_IMPORT) == set(SOURCES)
    assert {name.split(".")[0] for name in project_modules()} == set(SOURCES)


def test_floors_only_look_down():
    assert floor_violations(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "violations", "circles"),
    [
        ({"model.a": {"training.b"}, "training.b": set()}, ["model.a imports training.b"], []),
        (
            {"training.a": {"server.b"}, "server.b": {"model.c"}, "model.c": set()},
            ["training.a imports server.b"],
            [],
        ),
        (
            {"training.a": {"training.b"}, "training.b": {"training.c"}, "training.c": {"training.a"}},
            [],
            [["training.a", "training.b", "training.c"]],
        ),
        ({"server.a": {"model.b"}, "model.b": set()}, [], []),
    ],
)
def test_the_checks_catch_what_they_name(graph, violations, circles):
    assert floor_violations(graph) == violations
    assert cycles(graph) == circles


def test_deferred_and_relative_imports_are_read(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from .high import g\n    return g\n")
    (package / "high.py").write_text("import pkg.low\n")
    modules = {"pkg": package / "__init__.py", "pkg.low": package / "low.py", "pkg.high": package / "high.py"}
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg": set(), "pkg.low": {"pkg.high"}, "pkg.high": {"pkg.low"}}
    assert cycles(graph) == [["pkg.high", "pkg.low"]]
