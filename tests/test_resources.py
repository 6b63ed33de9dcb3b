"""Per-method memory and time limits of rule rerank_method (csa_rerank.plan.resources), worked out by hand."""

from __future__ import annotations

import pytest

from csa_rerank import registry
from csa_rerank.plan import resources
from csa_rerank.plan.resources import LARGE, SMALL, mem_mb, runtime


def test_every_compared_method_is_measured_and_every_measurement_is_a_method():
    compared = {m.label for m in registry.METHODS if m.kind != registry.CSA}
    assert set(SMALL) == compared
    # DSM's large-scale cost is images, not database rows: not measured on the synthetic database
    assert set(LARGE) == {m.label for m in registry.METHODS if m.kind != registry.CSA and not m.needs_images}


def test_a_small_job_gets_twice_its_memory_and_ten_times_its_time():
    # AQE's demo job: 798 MB, 3.6 s -> 2 x 798 = 1596 MB -> 2000 MB; 10 x 3.6 = 36 s -> 10 minutes
    assert mem_mb("AQE", 0) == 2000 and runtime("AQE", 0) == 10
    # DDBA's: 2069 MB -> 4138 -> 5000; GSS's 28.0 s -> 280 s -> 10 minutes
    assert mem_mb("DDBA + DQE", 0) == 5000 and runtime("GSS", 0) == 10


def test_a_retry_asks_for_twice_as_much():
    assert mem_mb("AQE", 0, attempt=2) == 4000 and runtime("AQE", 0, attempt=2) == 20
    assert mem_mb("k-reciprocal", 9000, attempt=2) == 2 * mem_mb("k-reciprocal", 9000)


def test_dsm_grows_by_its_descriptors_only():
    # 2 x 1172 + 2 x 1.0 MB per MB x 10,000 MB = 22,344 -> 23,000 MB; time: 10 x 27.8 s = 278 s -> 10 minutes
    assert mem_mb("DSM", 10_000) == 23_000 and runtime("DSM", 10_000) == 10


def test_an_unmeasured_method_gets_the_largest_small_figures():
    # a method a user added: 2 x 2069 (DDBA's) -> 5000 MB; 10 x 28.0 s (GSS's) -> 10 minutes; + 2 x its input
    assert mem_mb("My QE", 0) == 5000 and runtime("My QE", 0) == 10
    assert mem_mb("My QE", 1000) == 7000  # 4138 + 2000 -> 7000


CPU_MEASURED = sorted(set(LARGE) - set(resources.GPU_SECONDS_PER_INPUT_MB))


@pytest.mark.parametrize("label", CPU_MEASURED)
def test_the_measured_large_job_gets_at_least_twice_what_it_used(label):
    large = LARGE[label]
    assert large.input_mb == pytest.approx(resources.large_input_mb(label))
    assert mem_mb(label, large.input_mb) >= 2 * large.rss_mb
    assert runtime(label, large.input_mb) * 60 >= 2 * large.seconds


def test_worked_examples_on_roxf_r1m():
    # a ROxf+R1M job reads ≈ 9,165 MiB: R1M's descriptors 7,820 + the first-round lists 537 + the graph 768 + ROxf's 40
    # k-reciprocal: rate (6434 - 1736) / (1715.6 - 0.9) = 2.740 MB/MB; 2 x 1736 + 2 x 2.740 x 9165 = 53,700 -> 54,000
    # time: (199.8 - 4.6) / 1714.7 = 0.1138 s/MB; 10 x 4.6 + 2 x 0.1138 x 9165 = 2,132.7 s = 35.5 min -> 40
    assert mem_mb("k-reciprocal", 9165) == 54_000 and runtime("k-reciprocal", 9165) == 40
    # AQE (no graph: 8,397 MiB): (2173 - 798) / 1562.1 = 0.8802; 2 x 798 + 2 x 0.8802 x 8397 = 16,378 -> 17,000
    assert mem_mb("AQE", 8397) == 17_000 and runtime("AQE", 8397) == 10
    # GSS, on its job's GPU: 2 x 1398 + 2 x 9165 = 21,126 -> 22,000; 10 x 28.0 + 2 x 0.65 x 9165 = 12,194.5 s
    # -> 203.2 min -> 210
    assert mem_mb("GSS", 9165) == 22_000 and runtime("GSS", 9165) == 210


def test_gpu_estimates_are_the_registry_gpu_methods():
    assert set(resources.GPU_SECONDS_PER_INPUT_MB) == {m.label for m in registry.METHODS if m.gpu}


def test_limits_grow_with_the_input():
    for label in LARGE:
        assert mem_mb(label, 50_000) >= mem_mb(label, 5_000) >= mem_mb(label, 5)
        assert runtime(label, 50_000) >= runtime(label, 5_000) >= runtime(label, 5)
