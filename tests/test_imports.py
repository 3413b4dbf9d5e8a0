"""The package's import graphs have no cycle: read with ``ast`` from the source, nothing is imported.

Every import statement counts, in both graphs checked: those inside functions (a deferred import hides a
cycle from the interpreter but not from a reader, and it still drags its target in: config -> losses ->
torch) and those under ``if TYPE_CHECKING:`` (they never run, but a type-only import still ties one file to
another: a reader of either needs the other).

- modules: one node per file.
- packages (a first-level subpackage of ``mirage_ds``, e.g. ``mirage_ds.data``, or a top-level module such
  as ``mirage_ds.config``): the module edges between packages; a package's imports of itself are left out.

Edges to a module's own parent packages are left out of both (Python has started loading those before
the module). Run by hand: ``python tests/test_imports.py`` prints both results and exits 1 on a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mirage_ds"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in the module, at any depth (functions, ``if TYPE_CHECKING:`` blocks)."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules ``node`` loads: ``import a.b`` loads a and a.b; ``from a import b`` loads a and,
    when a.b is a module, a.b as well."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    loaded = set()
    for name in names:
        parts = name.split(".")
        loaded.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return loaded & modules


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            edges |= _targets(node, module, is_package, set(files))
        parts = module.split(".")
        graph[module] = edges - {".".join(parts[: i + 1]) for i in range(len(parts))}
    return graph


def package_of(module: str) -> str:
    """``mirage_ds.data.schema`` -> ``mirage_ds.data``; ``mirage_ds.config`` -> itself."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """package -> the other packages its modules import."""
    graph: dict[str, set[str]] = {}
    for module, edges in import_graph().items():
        package = package_of(module)
        graph.setdefault(package, set()).update(package_of(target) for target in edges)
    return {package: edges - {package} for package, edges in graph.items()}


def _cycle_within(graph: dict[str, set[str]], nodes: set[str]) -> list[str]:
    """One cycle [a, b, ..., a] through the strongly connected ``nodes`` (depth-first, from the first)."""
    start = min(nodes)
    path, seen = [start], {start}
    while True:
        options = sorted(graph[path[-1]] & nodes)
        if start in options:
            return path + [start]
        step = next((n for n in options if n not in seen), None)
        if step is None:  # dead end inside the set: back up (every node still reaches start)
            path.pop()
            continue
        seen.add(step)
        path.append(step)


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(one cycle, all members) for each strongly connected set of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    sets: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = set()
            while not members or member != node:
                member = stack.pop()
                members.add(member)
            if len(members) > 1:
                sets.append(members)

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return sorted((_cycle_within(graph, members), sorted(members)) for members in sets)


def describe(kind: str, cycles: list[tuple[list[str], list[str]]]) -> str:
    """``no KIND cycle``, or one line per strongly connected set: a cycle, then every member."""
    if not cycles:
        return f"no {kind} cycle"
    return "\n".join(f"{kind} cycle: {' -> '.join(cycle)} (strongly connected: {', '.join(members)})"
                     for cycle, members in cycles)


def test_graph_sees_the_package() -> None:
    graph = import_graph()
    assert "mirage_ds.engine.loop" in graph
    assert "mirage_ds.losses.functional" in graph["mirage_ds.losses.npo"]
    assert "mirage_ds.config" in graph["mirage_ds.engine.live_eval"]  # a type-only import counts
    packages = package_graph()
    assert {"mirage_ds.config", "mirage_ds.data", "mirage_ds.eval", "mirage_ds.cli"} <= set(packages)
    assert "mirage_ds.config" in packages["mirage_ds.engine"]
    assert "mirage_ds.engine" not in packages["mirage_ds.engine"]


def test_no_module_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, describe("module", cycles)


def test_no_package_cycle() -> None:
    cycles = find_cycles(package_graph())
    assert not cycles, describe("package", cycles)


if __name__ == "__main__":
    modules, packages = find_cycles(import_graph()), find_cycles(package_graph())
    print(describe("module", modules))
    print(describe("package", packages))
    sys.exit(1 if modules or packages else 0)
