"""Snakemake's locks protect while several runs share a working directory (csa_rerank.snakemake_locks): a second
run on the files of a running one is refused, even after a third run on other files has finished."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from csa_rerank import snakemake_locks

REPO = Path(__file__).resolve().parents[1]
# `slow` notes its start in `starts`, then runs until the test creates the file `release`; `fast` ends at once
SNAKEFILE = """
if config.get("workaround"):
    from csa_rerank import snakemake_locks
    snakemake_locks.keep_other_runs_locks()

rule slow:
    output: "slow.txt"
    shell: "echo started >> starts; while [ ! -e release ]; do sleep 0.1; done; touch {output}"

rule fast:
    output: "fast.txt"
    shell: "touch {output}"
"""


def snakemake(target: str, workaround: bool) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-c1", target, "--config", f"workaround={workaround}"]


def second_run_is_refused(tmp_path: Path, workaround: bool) -> bool:
    """Whether a second run of `slow` is refused while the first runs, after a run of `fast` has finished."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    first = subprocess.Popen(snakemake("slow.txt", workaround), cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / ".snakemake" / "locks").glob("*.output.lock")):
            assert time.monotonic() < deadline and first.poll() is None, "the first run did not start"
            time.sleep(0.1)
        third = subprocess.run(snakemake("fast.txt", workaround), cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
        assert third.returncode == 0, third.stderr
        second = subprocess.Popen(snakemake("slow.txt", workaround), cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)  # fmt: skip
        while second.poll() is None and _starts(tmp_path) < 2:  # refused, or running the job a second time
            assert time.monotonic() < deadline, "the second run neither ended nor started the job"
            time.sleep(0.1)
        refused = _starts(tmp_path) < 2
        if refused:
            assert second.returncode != 0 and "Directory cannot be locked" in second.stdout.read()
    finally:
        (tmp_path / "release").touch()
        assert first.wait(timeout=300) == 0
    second.wait(timeout=300)
    return refused


def _starts(tmp_path: Path) -> int:
    starts = tmp_path / "starts"
    return len(starts.read_text().splitlines()) if starts.exists() else 0


def test_second_run_on_a_running_target_is_refused_after_a_third_run_finished(tmp_path):
    assert second_run_is_refused(tmp_path, workaround=True)


@pytest.mark.skipif(not snakemake_locks.has_defect(), reason="the installed Snakemake has no lock-deletion defect")
def test_without_the_workaround_the_installed_snakemake_lets_the_second_run_in(tmp_path):
    """The defect the workaround is for (docs/snakemake-lock-defect.md), as the report describes it."""
    assert not second_run_is_refused(tmp_path, workaround=False)


def test_the_workflow_applies_the_workaround(tmp_path):
    """Loading the project's workflow patches Snakemake's persistence; --unlock still removes every lock."""
    script = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from pathlib import Path\nfrom planned_params import planned_params\n"
        f"planned_params(Path({str(REPO / 'Snakefile')!r}), Path({str(REPO / 'configs' / 'ci.yaml')!r}), "
        f"Path({str(tmp_path)!r}))\n"
        "from snakemake.persistence.file import FilePersistence as F\n"
        "print(F._delete_locks.__module__, F.cleanup_locks.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = "csa_rerank.snakemake_locks" if snakemake_locks.has_defect() else "snakemake.persistence"
    assert result.stdout.split()[-2].startswith(expected) and result.stdout.split()[-1].startswith(expected)
