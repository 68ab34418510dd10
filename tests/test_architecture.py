"""The shape of `src/tidelog`, checked: no import cycles, no god modules.

DESIGN.md draws the layers and says "no import cycles: a route module or a
command module is a leaf". A cycle is how a tree quietly stops having layers
(a module that only works when its importer happened to be imported first), so
the import graph is built here from the source with `ast`, not from what
happens to be in `sys.modules`, and every cycle fails with its path printed.

Edges are every `import` and `from ... import` anywhere in a module (at module
level and inside functions: a deferred import is still a dependency, and
deferring is the usual way a cycle is hidden), relative imports resolved, and
`from package import name` pointing at the submodule when `name` is one.
Imports under `if TYPE_CHECKING:` never run and are left out; imports by a
name computed at run time (`importlib.import_module`, as the lazy
`tidelog.server` package does) cannot be seen from the source.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tidelog"

MAX_LINES = 800
"""A module longer than this does more than one thing (the issue's bar)."""

LONG_MODULES_ALLOWED = frozenset({"tidelog.testing.conformance"})
"""Exempt for good: the conformance suite is one long list of contract tests."""


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its `__init__`)."""
    found: dict[str, Path] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a (possibly relative) `from ... import` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest module of the package that `name` is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in _import_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve(name, is_package, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in modules else source)
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative; only components with a cycle (two or more modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


def a_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """One closed path through `component`, for the failure message (`a -> b -> a`)."""
    start = min(component)
    # breadth-first from start's successors back to start, inside the component
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _describe(graph: dict[str, set[str]], component: frozenset[str]) -> str:
    return f"{' -> '.join(a_cycle(graph, component))}  (all of: {', '.join(sorted(component))})"


GRAPH = import_graph()
CYCLES = strongly_connected(GRAPH)


def test_the_graph_sees_the_package() -> None:
    """The walker finds the modules and their edges (a graph of nothing has no cycles)."""
    assert "tidelog.engines.contract" in GRAPH
    assert "tidelog.model" in GRAPH["tidelog.engines.contract"]
    assert len(GRAPH) > 50


def test_cycle_finder_finds_and_prints_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e", "d"}}
    components = strongly_connected(graph)
    assert components == [frozenset({"a", "b", "c"})]
    assert a_cycle(graph, components[0]) == ["a", "b", "c", "a"]


def test_relative_and_deferred_imports_are_edges() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..model import Event\n"
        "if TYPE_CHECKING:\n"
        "    from .typing_only import T\n"
        "def later():\n"
        "    import tidelog.wire\n"
    )
    nodes = list(_import_nodes(ast.parse(source)))
    from_nodes = [n for n in nodes if isinstance(n, ast.ImportFrom)]
    assert [_resolve("tidelog.engines.memory", False, n) for n in from_nodes] == [
        "typing",
        "tidelog.engines",
        "tidelog.model",
    ]
    assert [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names] == ["tidelog.wire"]


def test_no_import_cycles() -> None:
    assert not CYCLES, "import cycles:\n" + "\n".join(_describe(GRAPH, c) for c in CYCLES)


def _too_long() -> dict[str, int]:
    """Modules over `MAX_LINES` (the permanent exemptions left out), with their lengths."""
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    return {
        name: n for name, n in lengths.items() if n > MAX_LINES and name not in LONG_MODULES_ALLOWED
    }


def test_no_module_is_over_800_lines() -> None:
    too_long = _too_long()
    assert not too_long, f"modules over {MAX_LINES} lines, split them by concern: {too_long}"
