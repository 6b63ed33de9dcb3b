"""The code behind a job, as a digest that the workflow passes to each rule as a parameter.

Snakemake reruns a job when one of its parameters changes, and knows the code of a rule's script but not of the
package that the script calls.  :func:`script_digest` names the package modules a workflow script can run and
digests their syntax trees, so a job reruns exactly when that code changes: editing a compared method's module
reruns that method's jobs and what reads their output, not the extraction; a comment, a docstring or a reformat
changes nothing.

Which modules a script can run is read statically (:mod:`ast`, nothing is imported): for each ``module.function``
the script calls, the module's top-level imports and the imports inside that function and the module functions
it calls; for every module reached that way, all of its imports, at any depth.  Methods named in
:mod:`csa_rerank.registry` are imported by name at run time, so a job that runs one adds it with ``extra``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "csa_rerank"
PACKAGE_ROOT = Path(__file__).resolve().parent


def module_file(module: str) -> Path | None:
    """The source file of a package module (``csa_rerank.x.y``), None for a name outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text(), filename=str(module_file(module)))


def _is_package(module: str) -> bool:
    return module_file(module).name == "__init__.py"


def _imported_modules(node: ast.AST, module: str) -> set[str]:
    """Package modules named by the import statements directly in ``node`` (not in nested functions' bodies when
    ``node`` is a module: those are read per function)."""
    found = set()
    for statement in ast.walk(node) if not isinstance(node, ast.Module) else _top_level(node):
        if isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            base = _absolute(statement, module)
            found.add(base)
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` where one exists
            found.update(f"{base}.{alias.name}" for alias in statement.names)
    return {name for name in found if module_file(name) is not None}


def _top_level(tree: ast.Module):
    """The statements a module runs when imported: outside any function or class body (``if`` and ``try`` blocks
    included), and not under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    pending = list(tree.body)
    while pending:
        statement = pending.pop()
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        yield statement
        type_checking = isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test)
        for field in ("orelse",) if type_checking else ("body", "orelse", "finalbody", "handlers"):
            pending.extend(getattr(statement, field, []))


def _absolute(statement: ast.ImportFrom, module: str) -> str:
    if not statement.level:
        return statement.module
    package = module.split(".") if _is_package(module) else module.split(".")[:-1]
    package = package[: len(package) - (statement.level - 1)]
    return ".".join(package + ([statement.module] if statement.module else []))


def _with_parents(modules: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too."""
    out = set(modules)
    for name in modules:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


@functools.cache
def module_closure(module: str) -> frozenset[str]:
    """Every package module that importing ``module`` and calling any of its functions can run."""
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_with_parents(_imported_modules(_tree(name), name) | _function_imports(name)) - seen)
    return frozenset(seen)


def _function_imports(module: str) -> set[str]:
    imports = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            imports |= _imported_modules(node, module)
    return imports


def package_modules() -> list[str]:
    """Every module of the package (packages by the name of their ``__init__``)."""
    names = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports at run time, at module level or in a function}, leaving out the
    packages that enclose it (already being imported when it is)."""
    graph = {}
    for module in package_modules():
        enclosing = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        graph[module] = (_imported_modules(_tree(module), module) | _function_imports(module)) - enclosing - {module}
    return graph


def function_closure(module: str, function: str) -> frozenset[str]:
    """The package modules that calling ``module.function`` can run: the module's top-level imports, the imports
    of the function and of the module's functions it calls by name, and everything those modules can run."""
    tree = _tree(module)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    if function not in functions:
        return module_closure(module)
    reached, pending, direct = set(), [function], _imported_modules(tree, module)
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        direct |= _imported_modules(functions[name], module)
        called = {node.id for node in ast.walk(functions[name]) if isinstance(node, ast.Name)}
        pending.extend(called & functions.keys())
    modules = {module}
    for name in _with_parents(direct):
        modules |= module_closure(name)
    return frozenset(modules)


def script_modules(script: str | Path) -> frozenset[str]:
    """The package modules a workflow script can run, from the ``module.function(...)`` calls it makes."""
    tree = ast.parse(Path(script).read_text(), filename=str(script))
    aliases = {}
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module == PACKAGE:
            aliases.update({alias.asname or alias.name: f"{PACKAGE}.{alias.name}" for alias in statement.names})
        elif isinstance(statement, ast.ImportFrom) and (statement.module or "").startswith(PACKAGE + "."):
            for alias in statement.names:
                aliases[alias.asname or alias.name] = (statement.module, alias.name)
    modules = {PACKAGE}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            target = aliases[node.value.id]
            if isinstance(target, str):
                modules |= function_closure(target, node.attr)
                used.add(node.value.id)
    for name, target in aliases.items():
        if isinstance(target, tuple):  # ``from csa_rerank.m import f``: f itself, or submodule m.f
            sub = f"{target[0]}.{target[1]}"
            modules |= module_closure(sub) if module_file(sub) else function_closure(*target)
        elif name not in used:
            modules |= module_closure(target)
    return frozenset(modules)


def _code_of(tree: ast.AST) -> str:
    """The syntax tree without docstrings: what runs, not how it is written or commented."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@functools.cache
def module_digest(module: str) -> str:
    return hashlib.sha256(_code_of(ast.parse(module_file(module).read_text())).encode()).hexdigest()


def script_digest(script: str | Path, extra: tuple[str, ...] = ()) -> str:
    """A digest of the package code a workflow script runs (16 hex digits), plus the modules in ``extra`` (e.g.
    the module of the compared method a job runs) and everything those can run."""
    modules = set(script_modules(script))
    for module in extra:
        modules |= module_closure(module)
    digest = hashlib.sha256()
    for module in sorted(modules):
        digest.update(f"{module}\0{module_digest(module)}\0".encode())
    return digest.hexdigest()[:16]
