"""The package's import graph has no cycle: read with ``ast`` from the source, nothing is imported.

Every import statement counts, including those inside functions: a deferred import hides a cycle from
the interpreter but not from a reader, and it still drags its target in (config -> losses -> torch).
Only ``if TYPE_CHECKING:`` blocks, which never run, are left out, and so are edges to a module's own
parent packages (Python has started loading those before the module).
Run by hand: ``python tests/test_imports.py`` prints the cycle or "no import cycle".
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
    """Every import statement in the module except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return found


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


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_graph_sees_the_package() -> None:
    graph = import_graph()
    assert "mirage_ds.engine.loop" in graph
    assert "mirage_ds.losses.functional" in graph["mirage_ds.losses.npo"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


if __name__ == "__main__":
    cycle = find_cycle(import_graph())
    print("import cycle: " + " -> ".join(cycle) if cycle else "no import cycle")
    sys.exit(1 if cycle else 0)
