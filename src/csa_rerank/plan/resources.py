"""Memory and time limit of each compared method's job (rule ``rerank_method``), from two measurements per method.

A cluster kills a job that outgrows the memory (``mem_mb``) or time limit (``runtime``, minutes) it asked for, and
queues a job that asks for much more than it needs behind smaller ones.  One rule-wide value cannot serve both an
AQE job on ROxf (seconds, under 1 GB) and GSS or k-reciprocal on ROxf+R1M (hours, tens of GB), so the rule asks
per method and per job, from the size of the job's input files (descriptors, first-round lists, the database
graph, a fitted model: Snakemake's ``input.size_mb``), through two measurements of the method:

- **small**: its largest job of the demo (``make demo``: the 4 test sets of configs/demo.yaml, databases of a few
  hundred rows), ``max_rss`` and wall time ``s`` of ``results/demo/benchmarks/rerank_method/*/<network>~<method>.tsv``:
  the interpreter, torch and the method's fixed costs;
- **large**: the method's call on a 200,000 × 2048 database, 70 queries, 2 threads
  (``benchmarks/graph_benchmark.py --rows 200000 --workdir ...``, docs/benchmarks.md "Shared database graph"):
  peak RSS and time, the graph-reading methods given the shared graph as rule ``db_graph`` writes it.

A job of ``x`` MB of input (MiB, as Snakemake's ``input.size_mb``, its benchmark files' ``max_rss`` and SLURM's
``--mem`` count them) then asks for, as the SLURM profile's other rules are derived from the demo (2 x the memory,
10 x the time) but with the margin on the part that grows with the data kept at 2 x, since 10 x an hours-long time
exceeds what clusters grant:

- ``mem_mb`` = 2 x (small RSS + x x RSS per input MB), rounded up to a multiple of 1000;
- ``runtime`` = 10 x small time + 2 x x x seconds per input MB, in minutes rounded up to 10;

each times ``attempt``: the profile's retry of a job killed for its memory or time asks for twice as much.  The
rates per input MB are (large - small) / (large input - small input).  Both measurements are of the CPU with the
rule's 2 threads.

The methods that run on the job's GPU (registry ``gpu``: GSS, DSM) are not derived from the CPU measurement, which
does not describe their GPU job: their host memory grows with their input like a descriptor-only method's (the
training and the activations are on the card), and their time at an estimated GPU rate
(:data:`GPU_SECONDS_PER_INPUT_MB`, to be replaced by a measurement on a GPU).  A method without measurements (one a
user adds to the registry) gets the largest method's small figures and the memory growth of a descriptor-only
method.  A value set for ``rerank_method`` in a profile's ``set-resources`` replaces these; ``wildcards.method``
there picks one method (profiles/slurm says how).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from csa_rerank import registry

# the margins over the measured figures (module docstring)
SMALL_MEMORY_MARGIN = 2
SMALL_TIME_MARGIN = 10
LARGE_MARGIN = 2


@dataclass(frozen=True)
class Measured:
    """One measurement of a method's call: peak RSS (MB), time (s), size of its input (MB)."""

    rss_mb: float
    seconds: float
    input_mb: float


# The largest of each method's 4 demo jobs (7bff7ec, 2-core Zen 4): max_rss (MB) and s of its benchmark file; the
# input is that job's descriptors, first-round lists and graph (under 1 MB in the demo).
SMALL: dict[str, Measured] = {
    "AQE": Measured(798, 3.6, 0.9),
    "AQEwD": Measured(771, 2.9, 0.9),
    "DQE": Measured(840, 3.6, 0.9),
    "αQE": Measured(798, 3.0, 0.9),
    "LAttQE": Measured(831, 3.8, 0.9),
    "ADBA + AQE": Measured(840, 3.6, 0.9),
    "ADBAwD + AQEwD": Measured(819, 3.4, 0.9),
    "DDBA + DQE": Measured(2069, 4.5, 0.9),
    "αDBA + αQE": Measured(811, 2.5, 0.9),
    "LAttDBA + LAttQE": Measured(922, 5.0, 0.9),
    "DSM": Measured(1172, 27.8, 0.9),
    "CRL": Measured(859, 3.5, 0.9),
    "GSS": Measured(1398, 28.0, 0.9),
    "DFS": Measured(959, 2.9, 0.9),
    "k-reciprocal": Measured(1736, 4.6, 0.9),
    "SuperGlobal (refinement)": Measured(1010, 4.3, 0.9),
}

# ``benchmarks/graph_benchmark.py --rows 200000 --workdir ...`` (44b7b54, 2-core Zen 4, 2026-12-06 10:56-11:48):
# the method's call on 200,000 × 2048 float32 descriptors and 70 queries (the test-set file, 1,563 MiB), the
# graph-reading methods given the shared graph (near 50 / far 50 columns: 153 MiB more), GSS 2 epochs of 10,000
# loss columns; peak RSS of the process (data loaded), seconds of the call.  DSM is not measured (module docstring).
LARGE_DESCRIPTORS_MB = 1563.0
LARGE_GRAPH_MB = 152.6
LARGE: dict[str, Measured] = {
    "AQE": Measured(2173, 0.8, LARGE_DESCRIPTORS_MB),
    "AQEwD": Measured(2174, 0.8, LARGE_DESCRIPTORS_MB),
    "DQE": Measured(2265, 0.9, LARGE_DESCRIPTORS_MB),
    "αQE": Measured(2171, 0.8, LARGE_DESCRIPTORS_MB),
    "LAttQE": Measured(2219, 1.4, LARGE_DESCRIPTORS_MB),
    "CRL": Measured(2166, 0.3, LARGE_DESCRIPTORS_MB),
    "SuperGlobal (refinement)": Measured(2494, 1.1, LARGE_DESCRIPTORS_MB),
    "ADBA + AQE": Measured(4062, 6.6, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
    "ADBAwD + AQEwD": Measured(4125, 6.5, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
    "DDBA + DQE": Measured(5674, 230.5, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
    "αDBA + αQE": Measured(4061, 8.7, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
    "LAttDBA + LAttQE": Measured(7106, 54.1, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
    "GSS": Measured(20273, 2437.0, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
    "DFS": Measured(4008, 37.9, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
    "k-reciprocal": Measured(6434, 199.8, LARGE_DESCRIPTORS_MB + LARGE_GRAPH_MB),
}

# A method whose job has a GPU (registry ``gpu``: GSS, DSM) does its large work on the card, which the CPU
# measurement above does not describe (GSS's 20 GB of loss matrices live in GPU memory; 2 of its 200 epochs took
# 41 min on the CPU).  On the host such a job holds what it loads: like a descriptor-only method, one MB per MB of
# input [E].  Its time grows at an estimated rate per input MB on an A100 [E]: GSS 2 x 0.65 s, from docs/scaling.md's
# 1.65 A100-h for ROxf+R1M (34.8 PFLOP at 30 % of peak; 9,165 MiB of input); DSM 0: its cost is the top_n images
# of each list, not the database, and its detection and matching on a GPU are not measured yet.
GPU_SECONDS_PER_INPUT_MB = {"GSS": 0.65, "DSM": 0.0}


def rate(label: str) -> tuple[float, float]:
    """(RSS MB, seconds) per MB of a job's input for the method: (large - small) / (large input - small input);
    for a GPU method and an unmeasured one (module docstring), one MB of memory per MB and the GPU estimate."""
    small, large = SMALL.get(label), LARGE.get(label)
    if label in _gpu_methods() or small is None or large is None:
        return 1.0, GPU_SECONDS_PER_INPUT_MB.get(label, 0.0)
    grown = large.input_mb - small.input_mb
    return max(large.rss_mb - small.rss_mb, 0) / grown, max(large.seconds - small.seconds, 0) / grown


def _gpu_methods() -> set[str]:
    return {m.label for m in registry.METHODS if m.gpu}


def small_figures(label: str) -> Measured:
    """The method's demo figures; for a method without any, the largest of every method's."""
    if label in SMALL:
        return SMALL[label]
    return Measured(*(max(getattr(m, field) for m in SMALL.values()) for field in ("rss_mb", "seconds", "input_mb")))


def mem_mb(label: str, input_mb: float, attempt: int = 1) -> int:
    """Memory limit (MB) of the method's job on ``input_mb`` MB of input files, at its ``attempt``-th try."""
    rss_rate, _ = rate(label)
    needed = SMALL_MEMORY_MARGIN * small_figures(label).rss_mb + LARGE_MARGIN * rss_rate * input_mb
    return math.ceil(needed / 1000) * 1000 * attempt


def runtime(label: str, input_mb: float, attempt: int = 1) -> int:
    """Time limit (minutes) of the method's job on ``input_mb`` MB of input files, at its ``attempt``-th try."""
    _, seconds_rate = rate(label)
    seconds = SMALL_TIME_MARGIN * small_figures(label).seconds + LARGE_MARGIN * seconds_rate * input_mb
    return math.ceil(seconds / 600) * 10 * attempt


def large_input_mb(label: str) -> float:
    """The input of the method's large measurement: the descriptors, and the graph if the method reads one."""
    return LARGE_DESCRIPTORS_MB + (LARGE_GRAPH_MB if registry.method(label).graph else 0.0)
