"""A job's log (csa_rerank.logs): everything the job prints goes there, and to the terminal when it cannot."""

from __future__ import annotations

import subprocess
import sys

JOB = "import sys\nfrom csa_rerank import logs\nlog = logs.setup(sys.argv[1])\nlog.info('started')\n" \
      "raise ValueError('the job failed for this reason')\n"  # fmt: skip


def run_job(log_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", JOB, str(log_path)], capture_output=True, text=True, timeout=60)


def test_the_error_goes_to_the_log(tmp_path):
    result = run_job(tmp_path / "job.log")
    assert result.returncode == 1 and result.stderr == ""
    log = (tmp_path / "job.log").read_text()
    assert "INFO started" in log and "ValueError: the job failed for this reason" in log


def test_the_error_reaches_the_terminal_when_the_log_cannot_be_written():
    result = run_job("/dev/full")  # every write fails as on a full disk
    assert result.returncode == 1
    assert "cannot write the job's log /dev/full ([Errno 28] No space left on device)" in result.stderr
    assert "INFO started" in result.stderr and "ValueError: the job failed for this reason" in result.stderr
