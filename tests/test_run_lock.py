"""One training per run folder (csa_rerank.run_lock): a second one is refused at once, naming the first; the lock
of a killed process is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from csa_rerank.run_lock import LOCK_NAME, exclusive

HOLD = "import sys, time\nfrom csa_rerank.run_lock import exclusive\nwith exclusive(sys.argv[1]):\n" \
       "    print('locked', flush=True)\n    time.sleep(120)\n"  # fmt: skip


def hold_lock(run_dir) -> subprocess.Popen:
    """Another process holding the lock of ``run_dir`` (as the training of a killed Snakemake's job would)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_holder_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=f"in use by another training \\(process {holder.pid} on ") as refused:
            with exclusive(run_dir):
                pytest.fail("entered a locked run folder")
        assert time.monotonic() - started < 1  # at once, not after a wait
        assert "wait until it ends" in str(refused.value) and "--cleanup-metadata" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    messages = []
    with exclusive(run_dir, log=messages.append):
        assert f"process {holder.pid} " in messages[0] and "no longer runs" in messages[0]
        assert (run_dir / LOCK_NAME).read_text().startswith(f"process {os.getpid()} ")
    assert (run_dir / LOCK_NAME).read_text() == ""  # released: the next holder reports no stale one
    with exclusive(run_dir, log=messages.append):
        assert len(messages) == 1
