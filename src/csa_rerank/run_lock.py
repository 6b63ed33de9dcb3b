"""One training per run folder: an exclusive lock held by the training process for as long as it trains.

A training job keeps its resumable state in ``<model dir>/run/``.  When Snakemake itself is killed (or a login-node
Snakemake dies under SLURM) its jobs keep running, and a rerun would start a second training in the same folder:
both would append to one log and overwrite one checkpoint.  The lock is an ``flock`` on ``run/lock``, which the
kernel releases when its process ends however it ends, so a lock left by a dead process is simply taken (the file
still names the dead holder, which is logged); the file names the holder for the message of a refused training.
``flock`` needs a file system that supports it across machines when the jobs of one workflow run on several
(NFS v4, Lustre and GPFS do; see docs/scaling.md for shared run folders).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "lock"


def _holder() -> str:
    return f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _refusal(run_dir: Path, holder: str) -> RuntimeError:
    return RuntimeError(
        f"{run_dir} is in use by another training ({holder or 'holder unknown'}); two trainings in one run folder "
        "would mix their checkpoints and logs. That process is probably the job of an earlier Snakemake that was "
        "killed. Either wait until it ends: its outputs are then complete, and `snakemake --cleanup-metadata "
        f"{run_dir.parent}/*.*` marks them so (a rerun without it trains again); or stop it (kill it, by the process "
        "id above, on that machine) and rerun: the training resumes from its last completed epoch."
    )


@contextmanager
def exclusive(run_dir: str | Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (created if missing) for the block.

    Raises:
        RuntimeError: at once, naming the process that holds it and what to do, if another process holds it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise _refusal(run_dir, handle.read().strip()) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:  # a holder that ended without clearing the file: killed
            log(f"took over the lock of {run_dir} from {previous}, which no longer runs")
        handle.truncate(0)
        handle.write(_holder())
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # ended normally (or raised): no stale holder for the next one to report
