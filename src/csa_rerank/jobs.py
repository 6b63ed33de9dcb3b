"""What a pipeline job sets in its own process, and what it measures of it.

Every workflow script that runs torch starts with :func:`prepare_job`; the re-ranking stages report the memory
they used with :func:`peak_rss_bytes`.
"""

from __future__ import annotations

import logging
import os
import resource
import sys

# OpenMP's default lets a thread that waits for the others spin (GNU OpenMP: up to ~0.2 s) before it sleeps.  On a
# CPU that other work shares, those spins burn the time slices the job's descheduled threads need: a demo extraction
# job of two threads ran 1.9x faster with a busy process beside it, for 8-19% of its idle speed (docs/benchmarks.md,
# "Shared CPUs"); jobs of one thread lose nothing either way.
PASSIVE_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE"}


def share_the_cpu() -> None:
    """Make OpenMP's waiting threads sleep at once, in this process and the jobs it starts, unless the user chose a
    wait policy.  OpenMP reads it when torch loads it: call this before ``import torch``."""
    for key, value in PASSIVE_OPENMP.items():
        os.environ.setdefault(key, value)


def prepare_job(threads: int) -> None:
    """Settings of a job that runs torch: the job's threads for torch's intra-op parallelism (Snakemake sets
    OMP_NUM_THREADS to match, and the Snakefile OpenMP's passive wait policy: :func:`share_the_cpu`), and an
    allocator that keeps freed memory for the next batch
    (:mod:`csa_rerank.allocator`)."""
    import torch

    from .allocator import retain_freed_memory

    torch.set_num_threads(max(1, int(threads)))
    retain_freed_memory()
    logging.getLogger(__name__).info(
        "torch threads %d, OpenMP wait policy %s", torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "default")
    )


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS).

    A high-water mark: it cannot be reset, so the growth over a phase of the process underestimates that phase's
    own use (0 at worst) when an earlier phase used more.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
