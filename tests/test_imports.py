"""The modules of ``src/csa_rerank`` import each other without a cycle, at module level or inside functions.

The graph is read from the source with :mod:`ast` (nothing is imported): an edge A -> B for every ``import B``,
``from B import x`` or relative import in A, at any depth, plus A -> B.x when ``x`` is itself a module.  An
import of a package that contains A (its own ``__init__``, already being imported) is not an edge.  Run::

    python -m pytest -q tests/test_imports.py      # the check
    python tests/test_imports.py                    # prints the graph's edges and any cycle
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "csa_rerank"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_files(root: Path = SOURCE) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package (packages as their ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Dotted names of everything ``module`` imports anywhere in its file (candidate modules, not yet filtered)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, without imports of its own enclosing packages."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        graph[module] = {n for n in imported_names(module, path) if n in modules and n != module} - ancestors
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" when fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return path[path.index(successor) :] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_module_level_function_level_and_relative_imports():
    graph = import_graph()
    assert "csa_rerank.methods.csa" in graph["csa_rerank.stages"]  # "from .methods import csa" in a function
    assert "csa_rerank.rerank" in graph["csa_rerank.methods.csa"]  # "from csa_rerank.rerank import ..."
    assert "csa_rerank.methods" not in graph["csa_rerank.methods.crl"]  # its own package
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


if __name__ == "__main__":
    graph = import_graph()
    for module in sorted(graph):
        print(f"{module} -> {', '.join(sorted(graph[module])) or '(nothing)'}")
    cycle = find_cycle(graph)
    print("import cycle: " + " -> ".join(cycle) if cycle else "no import cycle")
    sys.exit(1 if cycle else 0)
