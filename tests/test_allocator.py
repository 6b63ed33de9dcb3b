"""csa_rerank.allocator: freed memory is reused instead of being faulted in again."""

import os
import subprocess
import sys

import pytest

from csa_rerank import jobs

# Ten forward passes of a re-ranker (after a warm-up) and the minor page faults they cause.  With glibc's defaults
# the activations land in fresh mappings or in heap memory just given back, to be faulted in and zeroed again.
PROBE = """
import resource, sys
import torch
from csa_rerank.allocator import retain_freed_memory
from csa_rerank.model import CSAConfig, CSAReranker
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
torch.set_num_threads(1)
model = CSAReranker(CSAConfig(anchors=64, hidden=256, heads=4)).eval()
affinity = torch.rand(2, 1025, 64)
with torch.no_grad():
    for _ in range(3):
        model(affinity)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model(affinity)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# Faults caused by touching 64 MiB of fresh memory: at least 16,384 (one per 4 KiB page) where the kernel counts them.
# Some sandboxes (gVisor, for one) leave ru_minflt at 0, and then the test below cannot measure anything.
CALIBRATION = """
import resource
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touched = bytearray(64 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def counted_faults_of_64_mib() -> int:
    result = subprocess.run([sys.executable, "-c", CALIBRATION], capture_output=True, text=True, check=True)
    return int(result.stdout)


def probe(mode: str, malloc_env: dict | None = None) -> tuple[str, int]:
    env = {**os.environ, **(malloc_env or {})}
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    applied, faults = result.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_memory_is_reused_without_page_faults():
    if counted_faults_of_64_mib() < 1000:
        pytest.skip("this kernel does not count minor page faults (ru_minflt stays 0 when 64 MiB are touched)")
    applied, retained_faults = probe("retain")
    if applied != "True":
        pytest.skip("the C library is not glibc")
    # The reference: glibc handing every freed block back at once (each block its own mapping, no trimming
    # threshold), which its defaults do for most activations, though not always: their mmap threshold adapts to
    # the blocks freed, and on 2026-12-06 the same default run faulted 512 to 81,000 times.  Measured here:
    # ~192,600 faults handed back, 1,000-2,600 retained (the [2, 4, 1025, 1025] fp32 attention scores, 34 MB, are
    # above the largest mmap threshold glibc accepts and are still mapped afresh).
    _, handed_back_faults = probe("default", {"MALLOC_MMAP_THRESHOLD_": "0", "MALLOC_TRIM_THRESHOLD_": "0"})
    assert retained_faults * 10 < handed_back_faults


def test_share_the_cpu_sets_the_passive_wait_policy_unless_the_user_chose_one(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    jobs.share_the_cpu()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    jobs.share_the_cpu()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_prepare_job_sets_threads_and_allocator():
    script = "import torch\nfrom csa_rerank import jobs\njobs.prepare_job(1)\nprint(torch.get_num_threads())\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "1"
