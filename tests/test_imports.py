"""The modules of ``src/csa_rerank`` import each other without a cycle, at module level or inside functions.

The graph is :func:`csa_rerank.code_version.import_graph`, read from the source with :mod:`ast` (nothing is
imported): an edge A -> B for every ``import B``, ``from B import x`` or relative import in A, at any depth, plus
A -> B.x when ``x`` is itself a module; not the imports under ``if TYPE_CHECKING:``, which never run, nor those of
a package that contains A (its own ``__init__``, already being imported).  Run::

    python -m pytest -q tests/test_imports.py      # the check
    python tests/test_imports.py                    # prints the graph's edges and any cycle
"""

from __future__ import annotations

import sys

from csa_rerank.code_version import import_graph


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
    assert "csa_rerank.plan.core" not in graph["csa_rerank.plan.tables"]  # under "if TYPE_CHECKING:" only


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_package_index_names_every_module():
    import csa_rerank
    from csa_rerank.code_version import package_modules

    top_level = [module for module in package_modules() if module.count(".") == 1]
    assert [m for m in top_level if f":mod:`{m}`" not in csa_rerank.__doc__] == []


if __name__ == "__main__":
    graph = import_graph()
    for module in sorted(graph):
        print(f"{module} -> {', '.join(sorted(graph[module])) or '(nothing)'}")
    cycle = find_cycle(graph)
    print("import cycle: " + " -> ".join(cycle) if cycle else "no import cycle")
    sys.exit(1 if cycle else 0)
