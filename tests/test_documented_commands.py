"""Every command the documentation shows is run, so that none can rot.

The commands are extracted when the test runs, so new ones are covered without touching this file. Sources:
README.md and docs/*.md (lines of shell code blocks, and inline code), the comments of the Snakefile,
workflow/rules/*.smk, the Makefile, configs/*.yaml, profiles/*/config.yaml and envs/*.yaml (whole lines, inline
code, and a command after a colon or "e.g."), and the module docstrings of benchmarks/, src/ and
workflow/scripts/ (whole lines and ``literal`` spans). A command is whatever starts with ``snakemake``, ``make``,
``python``/``python3``, ``.venv/bin/python``/``.venv/bin/snakemake``, ``torchrun`` or ``csa-...``; a run of three
or more spaces ends it (the description column of a header), as does a ``#`` comment.

Each distinct command is checked as far as it can be without the hours of a real run, in a temporary copy of the
repository (nothing is written to the checkout):

- ``snakemake ...``: run as written plus ``-n`` (a dry run; offline, downloads included). ``--report FILE`` needs
  a finished run, so the dry run leaves it out. Before that, Snakemake's own argument parser must accept the
  command and every file it names (``--configfile``, ``--profile``, ``--workflow-profile``, ``--snakefile``) must
  exist: ``--configfile`` takes several values, so a target written after it would be taken for a config file;
- ``make TARGET``: ``make -n TARGET``, and each snakemake command that it would run is dry-run as above;
- ``python script.py ...``, ``python -m module ...``, ``torchrun ...``, ``csa-...``: ``--help`` must work and
  list every option the command uses (a real run takes minutes to hours); for ``csa-rerank SUBCOMMAND ...``, the
  subcommand's ``--help``;
- a command with placeholders (``<results>``, ``NET``, ``N``, ``…``, ``[--option]``) cannot run as written: only
  its options and the files it names are checked.

A YAML code block whose first line is ``# <name>.yaml`` is written into the copy (docs/data.md shows mirror.yaml,
then the command that uses it). The test fails with the list of broken commands, where each was shown, what ran,
and the end of its output. A second test checks that the README's rule graph names every rule of the workflow.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROGRAM = r"(?:snakemake|make|python3?|torchrun|csa-[\w-]+|\.venv/bin/(?:python3?|snakemake))"
COMMAND = re.compile(rf"{PROGRAM}(?=\s)")
# a command written after a colon or "e.g." in the middle of a comment line (not `make`: "to make Snakemake ...")
MID_LINE = re.compile(r"(?::|e\.g\.)\s+((?:snakemake|python3?|torchrun|csa-[\w-]+)\s.*)")
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "zsh"}
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>|…|\.\.\.|\[\s*-|\$\w+|(?<![\w$-])[A-Z]{1,5}(?![\w-])")
SNAKEMAKE_FILE_OPTIONS = {"--configfile", "--configfiles", "--profile", "--workflow-profile", "--snakefile", "-s"}
# left out of the copies: outputs, data, environments and caches of a working checkout
IGNORED_AT_ROOT = {".git", ".venv", "results", "data", ".snakemake", "build", ".pytest_cache", ".ruff_cache"}
PARALLEL = 2  # dry runs at once; each is a Snakemake process of a few seconds


@dataclass
class Documented:
    """A command as written, and every place where it is shown (``file:line``)."""

    text: str
    where: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# extraction
def _command_at(text: str) -> str | None:
    """The command at the start of ``text`` (cut at a description column or a comment), or None."""
    text = text.strip().removeprefix("$ ")
    if not COMMAND.match(text):
        return None
    text = re.split(r"\s{3,}|\s+#", text, maxsplit=1)[0].strip()
    return text if len(text.split()) >= 2 else None


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``(line number, text)`` with each line that ends in a backslash joined to the next (the first one's number)."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, text in lines:
        text = text.strip()
        if pending is not None:
            number, text = pending[0], pending[1] + " " + text
            pending = None
        if text.endswith("\\"):
            pending = (number, text[:-1].rstrip())
            continue
        joined.append((number, text))
    if pending is not None:
        joined.append(pending)
    return joined


def _inline_spans(text: str, first_line: int, quote: str = "`") -> list[tuple[int, str]]:
    """Inline code spans of ``text`` (may wrap onto the next line) with the line each starts on."""
    q = re.escape(quote)
    pattern = re.compile(rf"(?<!`){q}(?!`)([^`\n]+(?:\n[^`\n]+)?){q}(?!`)")
    return [
        (first_line + text.count("\n", 0, match.start()), " ".join(match.group(1).split()))
        for match in pattern.finditer(text)
    ]


def markdown_commands(path: Path) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """Commands of a Markdown file, and the YAML files its code blocks name in their first line."""
    lines = path.read_text().splitlines()
    commands: list[tuple[int, str]] = []
    files: dict[str, str] = {}
    prose = []
    index = 0
    while index < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w-]*)", lines[index])
        if not fence:
            prose.append(lines[index])
            index += 1
            continue
        indent, marker, language = len(fence.group(1)), fence.group(2), fence.group(3).lower()
        block = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(marker):
            block.append((index + 1, lines[index][indent:] if lines[index][:indent].isspace() else lines[index]))
            index += 1
        index += 1
        prose.extend([""] * (len(block) + 2))  # keeps the line numbers of the prose
        if language in SHELL_BLOCKS:
            for number, text in _join_continuations(block):
                if (command := _command_at(text)) is not None:
                    commands.append((number, command))
        elif language in {"yaml", "yml"} and block:
            name = re.fullmatch(r"#\s*([\w.-]+\.ya?ml)\s*", block[0][1].strip())
            if name:
                files[name.group(1)] = "\n".join(text for _, text in block[1:]) + "\n"
    for number, span in _inline_spans("\n".join(prose), 1):
        if (command := _command_at(span)) is not None:
            commands.append((number, command))
    return commands, files


def comment_commands(path: Path) -> list[tuple[int, str]]:
    """Commands in the ``#`` comments of a Snakefile, rule file, Makefile or YAML file."""
    commands: list[tuple[int, str]] = []
    blocks: list[list[tuple[int, str]]] = []
    previous = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        comment = re.match(r"^\s*#\s?(.*)$", line)
        if not comment:
            continue
        if previous != number - 1:
            blocks.append([])
        blocks[-1].append((number, comment.group(1)))
        previous = number
    for block in blocks:
        cut = [(number, re.split(r"\s{3,}", text.strip(), maxsplit=1)[0]) for number, text in block]
        for number, text in _join_continuations(cut):
            if (command := _command_at(text)) is not None:
                commands.append((number, command))
            elif (match := MID_LINE.search(text)) and (command := _command_at(match.group(1))):
                commands.append((number, command))
        text = "\n".join(text for _, text in block)
        for number, span in _inline_spans(text, block[0][0]):
            if (command := _command_at(span)) is not None:
                commands.append((number, command))
    return commands


def docstring_commands(path: Path) -> list[tuple[int, str]]:
    """Commands in a Python module's docstring: whole lines and ``literal`` spans."""
    module = ast.parse(path.read_text())
    docstring = ast.get_docstring(module, clean=False)
    if not docstring or not module.body:
        return []
    first = module.body[0].lineno  # the docstring's first line
    lines = [(first + offset, text) for offset, text in enumerate(docstring.splitlines())]
    commands = [
        (number, command) for number, text in _join_continuations(lines) if (command := _command_at(text)) is not None
    ]
    for number, span in _inline_spans(docstring, first, quote="``"):
        if (command := _command_at(span)) is not None:
            commands.append((number, command))
    return commands


def documented_commands() -> tuple[dict[str, Documented], dict[str, str]]:
    """Every documented command by its normalised form, and the YAML files the documentation defines."""
    found: list[tuple[Path, int, str]] = []
    files: dict[str, str] = {}
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        commands, defined = markdown_commands(path)
        found += [(path, number, command) for number, command in commands]
        files.update(defined)
    comment_files = [
        REPO / "Snakefile",
        REPO / "Makefile",
        *sorted((REPO / "workflow" / "rules").glob("*.smk")),
        *sorted((REPO / "configs").glob("*.yaml")),
        *sorted((REPO / "profiles").glob("*/config.yaml")),
        *sorted((REPO / "envs").glob("*.yaml")),
        REPO / "config.yaml",
    ]
    for path in comment_files:
        found += [(path, number, command) for number, command in comment_commands(path)]
    modules = [
        *sorted((REPO / "benchmarks").glob("*.py")),
        *sorted((REPO / "src").rglob("*.py")),
        *sorted((REPO / "workflow" / "scripts").glob("*.py")),
    ]
    for path in modules:
        found += [(path, number, command) for number, command in docstring_commands(path)]
    commands: dict[str, Documented] = {}
    for path, number, command in found:
        key = normalise(command)
        commands.setdefault(key, Documented(command)).where.append(f"{path.relative_to(REPO)}:{number}")
    return commands, files


def _tokens(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unbalanced quote: still compare and check what can be
        return command.split()


def normalise(command: str) -> str:
    """One spelling per command: ``.venv/bin/python`` and ``python3`` are ``python``, likewise for snakemake."""
    tokens = _tokens(command)
    program = tokens[0].rsplit("/", 1)[-1]
    tokens[0] = {"python3": "python", "snakemake": "snakemake"}.get(program, program)
    return shlex.join(tokens)


# ---------------------------------------------------------------------------------------------------------------
# checks
class Copies:
    """Temporary copies of the repository (without outputs, data and caches), with the documented YAML files:
    a new one for each run that may write (Snakemake's .snakemake/), one shared by the checks that only read."""

    def __init__(self, root: Path, files: dict[str, str]):
        self.root, self.files, self.count = root, files, 0
        self.lock = threading.Lock()
        self._shared: Path | None = None

    def shared(self) -> Path:
        with self.lock:
            if self._shared is None:
                self._shared = self._copy("shared")
            return self._shared

    def new(self) -> Path:
        with self.lock:
            self.count += 1
            name = f"copy{self.count}"
        return self._copy(name)

    def _copy(self, name: str) -> Path:
        copy = self.root / name

        def ignore(folder: str, names: list[str]) -> set[str]:
            skipped = {name for name in names if name == "__pycache__" or name.endswith(".egg-info")}
            return skipped | (IGNORED_AT_ROOT & set(names) if Path(folder) == REPO else set())

        shutil.copytree(REPO, copy, ignore=ignore, symlinks=True)
        for name, text in self.files.items():
            (copy / name).write_text(text)
        return copy


_RUNS: dict[tuple[str, ...], tuple[int, str]] = {}  # the same dry run or --help, asked for by several commands
_RUNS_LOCK = threading.Lock()


def _run(args: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    """Exit status and output of ``args`` run in ``cwd`` (a copy of the repository), once per ``args``."""
    key = tuple(args)
    with _RUNS_LOCK:
        if key in _RUNS:
            return _RUNS[key]
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    with _RUNS_LOCK:
        _RUNS[key] = result.returncode, result.stdout + result.stderr
    return _RUNS[key]


def _tail(output: str, lines: int = 15) -> str:
    return "\n".join("      " + line for line in output.strip().splitlines()[-lines:])


_PARSE_LOCK = threading.Lock()  # argparse reports to the process's stderr


def _snakemake_parse_error(args: list[str]) -> str | None:
    from snakemake.cli import get_argument_parser

    errors = io.StringIO()
    with _PARSE_LOCK, contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            get_argument_parser().parse_args(args)
        except SystemExit as exit_:
            if exit_.code:  # the message is the last line, after the whole usage
                return (errors.getvalue().strip().splitlines() or [f"exit status {exit_.code}"])[-1]
    return None


def _named_files(args: list[str], copy: Path) -> list[str]:
    """The files named by the file-valued options of a snakemake command that do not exist in ``copy``."""
    missing, option = [], None
    for token in args:
        name = token.split("=", 1)[0]
        if name.startswith("-"):
            option = name if name in SNAKEMAKE_FILE_OPTIONS else None
            if option and "=" in token:
                token = token.split("=", 1)[1]
            else:
                continue
        if option and token != "none" and not PLACEHOLDER.search(token) and not (copy / token).exists():
            missing.append(f"{option} {token}")
        if option not in {"--configfile", "--configfiles"}:  # the others take one value
            option = None
    return missing


def check_snakemake(tokens: list[str], copies: Copies) -> str | None:
    args = tokens[1:]
    if (error := _snakemake_parse_error(args)) is not None:
        return f"Snakemake's argument parser refuses it: {error}"
    if missing := _named_files(args, copies.shared()):
        return f"it names files that do not exist: {', '.join(missing)} (a target after --configfile?)"
    if any(PLACEHOLDER.search(token) for token in args):
        return None  # a template: options and files checked
    # the dry run: without --report (it needs a finished run) and without the number of cores (which changes
    # nothing in a dry run, so that commands differing only in it share one)
    dry, rest = [], list(args)
    while rest:
        token = rest.pop(0)
        if token in {"--report", "--cores", "-c", "--jobs", "-j"}:
            if rest and not rest[0].startswith("-"):
                rest.pop(0)  # its value
            continue
        if token.split("=", 1)[0] in {"--report", "--cores", "--jobs"} or token == "--report-after-run":
            continue
        dry.append(token)
    if not {"-n", "--dry-run", "--dryrun"} & set(dry):
        dry.append("-n")
    command = [sys.executable, "-m", "snakemake", *dry]
    status, output = _run(command, copies.new())
    if status != 0:
        return f"`snakemake {shlex.join(dry)}` in a copy of the repository exited with {status}:\n{_tail(output)}"
    return None


def check_make(tokens: list[str], copies: Copies) -> str | None:
    copy = copies.new()
    status, output = _run(["make", "-n", *tokens[1:]], copy, timeout=60)
    if status != 0:
        return f"`make -n {shlex.join(tokens[1:])}` exited with {status}:\n{_tail(output)}"
    failures = []
    for line in output.replace("\\\n", " ").splitlines():
        recipe = _tokens(line)
        if recipe and recipe[0].rsplit("/", 1)[-1] == "snakemake":
            if (failure := check_snakemake(["snakemake", *recipe[1:]], copies)) is not None:
                failures.append(f"its recipe `{line.strip()}`: {failure}")
    return "\n    ".join(failures) or None


def _options(tokens: list[str]) -> list[str]:
    names = []
    for token in tokens:
        token = token.strip("[]")
        if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", token):
            names.append(token.split("=", 1)[0])
    return names


def _check_help(help_command: list[str], options: list[str], cwd: Path) -> str | None:
    status, output = _run(help_command, cwd, timeout=300)
    if status != 0:
        return f"`{shlex.join(help_command[1:])}` exited with {status}:\n{_tail(output)}"
    unknown = [name for name in options if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", output)]
    if unknown:
        return f"its --help does not know {', '.join(unknown)}"
    return None


def check_python(tokens: list[str], copies: Copies) -> str | None:
    copy = copies.shared()
    if len(tokens) >= 3 and tokens[1] == "-m":
        return _check_help([sys.executable, "-m", tokens[2], "--help"], _options(tokens[3:]), copy)
    if len(tokens) >= 2 and tokens[1].endswith(".py"):
        if not (copy / tokens[1]).is_file():
            return f"{tokens[1]} does not exist"
        return _check_help([sys.executable, tokens[1], "--help"], _options(tokens[2:]), copy)
    return "not a script or -m module: extend tests/test_documented_commands.py to check it"


def check_torchrun(tokens: list[str], copies: Copies) -> str | None:
    args = tokens[1:]
    if "-m" in args and args.index("-m") + 1 < len(args):
        module = args[args.index("-m") + 1]
        if importlib.util.find_spec(module) is None:
            return f"module {module} cannot be imported"
        args = args[: args.index("-m") + 1]  # what follows the module is the module's own
    return _check_help([sys.executable, "-m", "torch.distributed.run", "--help"], _options(args), copies.shared())


def check_console_script(tokens: list[str], copies: Copies) -> str | None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("scripts", {})
    if tokens[0] not in scripts:
        return f"{tokens[0]} is not a console script of pyproject.toml ([project.scripts])"
    module, function = scripts[tokens[0]].split(":")
    # a subcommand (csa-rerank rerank ...) has a --help of its own, which lists its options
    words = tokens[:2] if len(tokens) > 1 and not tokens[1].startswith("-") else tokens[:1]
    code = f"import sys; from {module} import {function} as main; sys.argv = [*{words!r}, '--help']; main()"
    return _check_help([sys.executable, "-c", code], _options(tokens[len(words) :]), copies.shared())


def check(command: Documented, copies: Copies) -> str | None:
    """None when ``command`` works (as far as it can be checked), else what is wrong."""
    tokens = _tokens(command.text)
    program = tokens[0].rsplit("/", 1)[-1]
    if program == "snakemake":
        return check_snakemake(tokens, copies)
    if program == "make":
        return check_make(tokens, copies)
    if program in {"python", "python3"}:
        return check_python(tokens, copies)
    if program == "torchrun":
        return check_torchrun(tokens, copies)
    if program.startswith("csa-"):
        return check_console_script(tokens, copies)
    return f"no check for {program}: extend tests/test_documented_commands.py"


# ---------------------------------------------------------------------------------------------------------------
# the tests
def test_extraction_finds_commands_of_every_kind_of_source():
    commands, files = documented_commands()
    sources = {where.split(":")[0] for command in commands.values() for where in command.where}
    assert {"README.md", "Snakefile", "Makefile", "profiles/slurm/config.yaml", "docs/data.md"} <= sources, sources
    assert {"benchmarks/knn_benchmark.py", "docs/benchmarks.md", "workflow/rules/export.smk"} <= sources, sources
    assert "make demo" in commands and "make test" in commands
    assert "mirror.yaml" in files


def test_extraction_of_each_form(tmp_path):
    markdown = tmp_path / "doc.md"
    markdown.write_text(
        "Run `snakemake --cores all\n results/table5.csv` or `make`; not `--config x`.\n"
        "```bash\nsnakemake -n   # a comment\n.venv/bin/python benchmarks/a.py --x 1 \\\n    --y 2\necho hi\n```\n"
        "  ```yaml\n  # extra.yaml\n  a: 1\n  ```\n"
    )
    commands, files = markdown_commands(markdown)
    assert commands == [
        (4, "snakemake -n"),
        (5, ".venv/bin/python benchmarks/a.py --x 1 --y 2"),
        (1, "snakemake --cores all results/table5.csv"),
    ]
    assert files == {"extra.yaml": "a: 1\n"}
    rules = tmp_path / "x.smk"
    rules.write_text(
        "# Header: `make demo` builds it.\n#\n#   snakemake --cores all results/x.csv          the paper\n"
        "#   snakemake --profile p \\\n#             --configfile c.yaml       the demo\n"
        "rule x:\n    # fetch it, e.g.  snakemake --cores 1 <results>/y\n"
    )
    assert comment_commands(rules) == [
        (3, "snakemake --cores all results/x.csv"),
        (4, "snakemake --profile p --configfile c.yaml"),
        (1, "make demo"),
        (7, "snakemake --cores 1 <results>/y"),
    ]


def test_every_documented_command_works(tmp_path):
    commands, files = documented_commands()
    copies = Copies(tmp_path, files)
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(lambda command: (command, check(command, copies)), commands.values()))
    broken = [f"- `{command.text}` ({', '.join(command.where)}): {failure}" for command, failure in results if failure]
    assert not broken, f"{len(broken)} of {len(results)} documented commands are broken:\n" + "\n".join(broken)


def _mermaid_rules(text: str) -> set[str]:
    graph = re.search(r"```mermaid\n(.*?)```", text, flags=re.S)
    assert graph, "README.md has no mermaid rule graph"
    lines = [line.split("%%")[0] for line in graph.group(1).splitlines()[1:]]  # after the `flowchart` line
    names = set(
        re.findall(r"\b[a-z][a-z0-9_]*\b", " ".join(re.sub(r"\|[^|]*\||\"[^\"]*\"", " ", line) for line in lines))
    )
    return names - {"subgraph", "end", "direction"}


@pytest.mark.parametrize(
    "config", [["--configfile", "config.yaml"], ["--configfile", "configs/demo.yaml", "--replace-workflow-config"]],
    ids=["paper", "demo"],
)  # fmt: skip
def test_readme_rule_graph_names_every_rule(tmp_path, config):
    """The README's mermaid graph shows each rule of Snakemake's rule graph (both configurations), and names no
    rule the workflow does not have."""
    copy = Copies(tmp_path, {}).new()
    status, output = _run([sys.executable, "-m", "snakemake", *config, "--rulegraph", "mermaid-js"], copy)
    assert status == 0, output
    graph_rules = set(re.findall(r"^\s*id\d+\[(\w+)\]", output, flags=re.M))
    status, listed = _run([sys.executable, "-m", "snakemake", *config, "--list-rules"], copy)
    assert status == 0, listed
    readme = _mermaid_rules((REPO / "README.md").read_text())
    assert graph_rules <= readme, f"rules missing from the README's graph: {sorted(graph_rules - readme)}"
    all_rules = set(re.findall(r"^(\w+)$", listed, flags=re.M))
    demo_rules = {"generate_demo_testset", "generate_demo_trainset", "generate_demo_distractors"}
    download_rules = {"download_file", "download_archive", "unpack_archive", "assemble_image_folder", "download_all"}
    assert readme <= all_rules | demo_rules | download_rules, (
        f"not rules: {sorted(readme - all_rules - demo_rules - download_rules)}"
    )
