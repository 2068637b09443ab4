"""The layers of reactorapp import one way (docs/architecture.md, "Layers").

Walks the source with `ast`, imports inside functions included, and maps
every import of ``reactorapp.X`` made by a module of ``reactorapp.Y`` to an
edge Y -> X between top-level parts (a subpackage, or a module such as
``config``). The graph must have no cycle, and a few edges must never
appear at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reactorapp

ROOT = Path(reactorapp.__file__).resolve().parent

#: part -> parts it may never import.
FORBIDDEN = {
    "auth": {"web", "mqtt"},
    "store": {"webhooks", "mqtt", "web"},
    "mqtt": {"store", "web"},
    "config": {"auth", "hub", "mqtt", "store", "web", "webhooks", "protocols"},
}


def _part(path: Path) -> str:
    relative = path.relative_to(ROOT).parts
    return relative[0] if len(relative) > 1 else relative[0].removesuffix(".py")


def _module(path: Path) -> list[str]:
    parts = ["reactorapp", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(path: Path):
    """Every module name ``path`` imports, with the line, at any depth."""
    package = _module(path) if path.name == "__init__.py" else _module(path)[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:  # "from reactorapp import web"
                yield f"{module}.{alias.name}", node.lineno


def import_graph() -> dict[str, dict[str, list[str]]]:
    """part -> {imported part -> ["file:line", ...]}."""
    parts = {_part(path) for path in ROOT.rglob("*.py")}
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        source = _part(path)
        edges = graph.setdefault(source, {})
        for module, line in _imported(path):
            names = module.split(".")
            if names[0] != "reactorapp" or len(names) < 2:
                continue
            target = names[1]
            if target != source and target in parts:
                edges.setdefault(target, []).append(
                    f"{path.relative_to(ROOT.parent)}:{line}")
    return graph


def find_cycle(graph) -> list[str] | None:
    """One cycle of the graph as a list of parts, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node):
        colour[node] = GREY
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if colour.get(target, WHITE) == GREY:
                return stack[stack.index(target):] + [target]
            if colour.get(target, WHITE) == WHITE:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


GRAPH = import_graph()


def test_the_walk_sees_imports_at_any_depth():
    """The walk finds the imports it must judge, including those made inside
    functions (the service wires everything, some of it lazily)."""
    assert "hub" in GRAPH["mqtt"]
    assert {"hub", "mqtt", "store", "web", "webhooks"} <= set(GRAPH["service"])
    # tap.makeService imports the service inside the function (only a run
    # needs the hub): the walk must see it.
    assert "service" in GRAPH["tap"]


def test_no_cycle_between_parts():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(GRAPH[a][b])}" for a, b in zip(cycle, cycle[1:]))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}}) is None


def test_hub_imports_nothing_outside_hub():
    assert GRAPH["hub"] == {}, GRAPH["hub"]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_forbidden_imports(part):
    wrong = {target: where for target, where in GRAPH[part].items() if target in FORBIDDEN[part]}
    assert wrong == {}, f"{part} imports {wrong}"
