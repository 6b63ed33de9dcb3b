"""No function of ``src/csa_rerank`` is longer than 80 lines unless its docstring says why ("Long because ...").

Lines are counted from the ``def`` to the last line of the body (docstring included, decorators not), with
:mod:`ast`; methods and nested functions count on their own.  Run::

    python -m pytest -q tests/test_function_length.py    # the check
    python tests/test_function_length.py                 # lists the longest functions
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "csa_rerank"
MAX_LINES = 80
REASON = "Long because"


def function_lengths(root: Path = SOURCE) -> list[tuple[int, str, str | None]]:
    """(lines, "file:line name", docstring) of every function and method, longest first."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                found.append((node.end_lineno - node.lineno + 1, where, ast.get_docstring(node)))
    return sorted(found, key=lambda item: -item[0])


def test_long_functions_say_why():
    unexplained = [
        f"{where} ({lines} lines)"
        for lines, where, doc in function_lengths()
        if lines > MAX_LINES and REASON not in (doc or "")
    ]
    assert not unexplained, f"over {MAX_LINES} lines without '{REASON}' in the docstring: {', '.join(unexplained)}"


def test_the_count_includes_methods_and_nested_functions():
    names = {where.split()[-1] for _, where, _ in function_lengths()}
    assert {"train_one_epoch", "forward", "score"} <= names  # a function, methods, a nested function


if __name__ == "__main__":
    for lines, where, doc in function_lengths()[: int(sys.argv[1]) if len(sys.argv) > 1 else 10]:
        print(f"{lines:4d}  {where}{'  (' + REASON + ')' if REASON in (doc or '') else ''}")
