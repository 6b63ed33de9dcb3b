"""The code digest of a workflow script: which package modules it reaches, and what changes the digest."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from csa_rerank import code_version

REPO = Path(__file__).resolve().parents[1]


def _clear_caches():
    for cached in (code_version._tree, code_version.module_closure, code_version.module_digest):
        cached.cache_clear()


@pytest.fixture(autouse=True)
def fresh_caches():
    """Tests point the module at other package copies: no cached tree may outlive a test."""
    _clear_caches()
    yield
    _clear_caches()


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package ``csa_rerank`` in tmp_path: stages.a imports x inside the function, stages.b imports y."""
    root = tmp_path / "csa_rerank"
    files = {
        "__init__.py": '"""Toy."""\n',
        "stages.py": """
            from . import common

            def a():
                from .x import f
                return helper() + f()

            def helper():
                from .z import g
                return g()

            def b():
                from .y import h
                return h()
        """,
        "common.py": "VALUE = 1\n",
        "x.py": "def f():\n    return 1\n",
        "y.py": "def h():\n    return 2\n",
        "z.py": "from csa_rerank.sub import deep\n\ndef g():\n    return deep.k()\n",
        "sub/__init__.py": "",
        "sub/deep.py": "def k():\n    return 3\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    monkeypatch.setattr(code_version, "PACKAGE_ROOT", root)
    return root


def _script(tmp_path, body):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_script_reaches_the_imports_of_the_functions_it_calls_only(toy_package, tmp_path):
    script = _script(tmp_path, "from csa_rerank import stages\n\nstages.a()\n")
    modules = {m.removeprefix("csa_rerank.") for m in code_version.script_modules(script)}
    # a -> x; a calls helper -> z -> sub.deep (and its package); common at top level; never y (b's import)
    assert modules == {"csa_rerank", "stages", "common", "x", "z", "sub", "sub.deep"}


def test_the_digest_follows_code_not_comments_or_docstrings(toy_package, tmp_path):
    script = _script(tmp_path, "from csa_rerank import stages\n\nstages.a()\n")
    before = code_version.script_digest(script)

    def edit(name, text):
        (toy_package / name).write_text(text)
        _clear_caches()
        return code_version.script_digest(script)

    assert edit("x.py", '"""Now documented."""\n\n\ndef f():  # one\n    return 1\n') == before
    assert edit("y.py", "def h():\n    return 20\n") == before  # b's module: not run by the script
    assert edit("sub/deep.py", "def k():\n    return 4\n") != before  # reached through two imports


def test_extra_modules_join_the_digest(toy_package, tmp_path):
    script = _script(tmp_path, "from csa_rerank import stages\n\nstages.b()\n")
    plain = code_version.script_digest(script)
    with_x = code_version.script_digest(script, extra=("csa_rerank.x",))
    assert plain != with_x
    (toy_package / "x.py").write_text("def f():\n    return 5\n")
    _clear_caches()
    assert code_version.script_digest(script) == plain
    assert code_version.script_digest(script, extra=("csa_rerank.x",)) != with_x


def test_relative_imports_resolve_inside_subpackages(toy_package):
    (toy_package / "sub" / "other.py").write_text("from . import deep\nfrom .. import common\n")
    _clear_caches()
    closure = code_version.module_closure("csa_rerank.sub.other")
    assert {"csa_rerank.sub.deep", "csa_rerank.common", "csa_rerank.sub", "csa_rerank"} <= closure


def test_extraction_does_not_run_the_compared_methods_or_the_re_ranker():
    extraction = code_version.script_modules(REPO / "workflow" / "scripts" / "extract.py")
    assert "csa_rerank.extract" in extraction and "csa_rerank.networks" in extraction
    assert not any(module.startswith("csa_rerank.methods") for module in extraction), sorted(extraction)
    assert "csa_rerank.model" not in extraction


def test_editing_a_compared_method_changes_its_jobs_digest_only(tmp_path, monkeypatch):
    """The package copied, DFS's module edited: only the digest of DFS's re-ranking jobs changes."""
    import shutil

    from csa_rerank import registry

    package = tmp_path / "csa_rerank"
    shutil.copytree(code_version.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__"))
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))

    def digests():
        _clear_caches()
        jobs = {script.name: code_version.script_digest(script) for script in scripts}
        for method in registry.compared_methods():
            jobs[method.label] = code_version.script_digest(
                REPO / "workflow/scripts/rerank_method.py", (method.module,)
            )
        return jobs

    monkeypatch.setattr(code_version, "PACKAGE_ROOT", package)
    before = digests()
    with (package / "methods" / "diffusion.py").open("a") as module:
        module.write("\nEDITED = True\n")
    after = digests()
    assert {job for job in before if before[job] != after[job]} == {"DFS"}
