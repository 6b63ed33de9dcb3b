"""profiles/slurm: its submission plan offline, and a run on a real SLURM with one fake GPU started for the test.

The real run: the tiny end-to-end configuration (configs/ci.yaml, target table1: demo data, extraction, kNN,
training neighbours, training, affinities, CSA re-ranking, evaluation, table) through ``--profile
profiles/slurm`` with only what is specific to a cluster overridden: account ``ci``, the test partition, a small
default runtime, the size of the node (2 cores, its memory) and the ``squeue`` status command of a cluster
without accounting.  Checked:

- every output equals that of a local run of the same targets (started alongside, same threads per job);
- the jobs of the GPU rules (extract, train, rerank_csa) requested a GPU and their tasks saw
  ``CUDA_VISIBLE_DEVICES=0`` (recorded by the cluster's TaskProlog); no job of a CPU rule requested a GPU or saw
  one; the short rules ran as group jobs;
- a job that fails (its input corrupted behind Snakemake's back) is reported as failed (that run with
  ``--retries 0``, to save the resubmission), and once the input is repaired the next run resubmits that job
  alone.

The cluster (tests/slurm_cluster.py) needs root: Debian's slurm packages are installed with apt when missing,
and the test skips with the reason when that is impossible.  Its daemons are stopped by their PIDs afterwards.
It takes about 5 minutes on 2 cores (most of it Snakemake and SLURM start-up and status polling).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from slurm_cluster import ClusterUnavailable, SlurmCluster, ensure_installed

from csa_rerank import registry

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
CI_CONFIG = ["--replace-workflow-config", "--configfile", str(REPO / "configs" / "ci.yaml")]
TARGETS = ["results/ci/table1.csv"]
GPU_RULES = {"extract", "extract_shard", "train", "rerank_csa", "evaluate_val", "db_graph"}  # resources: gpu
GPU_METHODS = {m.slug for m in registry.METHODS if m.gpu}  # rule rerank_method requests one for these only
# measured, not computed: these differ between any two runs
TIMING_COLUMNS = {"Re-ranking latency (ms)"}
TIMING_KEYS = {"latency_ms", "memory_gb"}
RUN_TIMEOUT = 900  # seconds for one Snakemake run (timeout -k 10 stops a hung one)
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    start = time.monotonic()
    try:
        ensure_installed()
    except ClusterUnavailable as err:
        pytest.skip(f"no SLURM for the profile test: {err}")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd for the profile test needs root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-cluster"), gpus=1)
    try:
        cluster.start()
        print(f"\n[slurm] cluster up in {time.monotonic() - start:.1f} s ({cluster.conf})")
        yield cluster
    finally:
        cluster.stop()


def slurm_run(cluster: SlurmCluster, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """Snakemake through profiles/slurm on TARGETS; only cluster-specific values are overridden."""
    command = [
        "timeout", "-k", "10", str(RUN_TIMEOUT), *SNAKEMAKE, *TARGETS,
        "--profile", str(PROFILE), "--workflow-profile", "none", *CI_CONFIG,
        # the user's one place: account, partition, default memory and time limit
        "--default-resources", "slurm_account=ci", f"slurm_partition={cluster.partition}", "mem_mb=1000",
        "runtime=10",
        # the size of the test node: caps threads, memory and the width of group jobs
        "--cores", str(cores(cluster)), "--resources", "gpu=1", f"mem_mb={cluster.memory_mb}",
        # no accounting database here: status from squeue (MinJobAge is long enough), checked every few seconds
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
        *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=workdir, env=cluster.env, capture_output=True, text=True)


def cores(cluster: SlurmCluster) -> int:
    return min(2, cluster.cpus)


def local_run(cluster: SlurmCluster, workdir: Path) -> subprocess.Popen:
    """The same targets without SLURM, as the reference: the same threads per job (rule threads capped alike)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "snakemake.out").open("w")
    command = [*SNAKEMAKE, *TARGETS, "--workflow-profile", "none", "--cores", str(cores(cluster)), *CI_CONFIG]
    return subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True)


def run_id(output: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, output[-3000:]
    return match.group(1)


def planned_jobs(output: str) -> dict[str, int]:
    if "Nothing to be done" in output:
        return {}
    stats = output.split("Job stats:")[1].split("Reasons:")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}
    jobs.pop("total", None)
    return jobs


def profile_groups() -> dict[str, str]:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())["groups"]


def rules_of(comment: str, groups: dict[str, str]) -> tuple[str | None, set[str]]:
    """(group or None, rules) of a SLURM job from the comment the executor gives it.

    ``rule_<rule>[_wildcards_<values>]`` for a single job, ``rule_<group>_<its rules, sorted, joined by _>`` for
    a group job.
    """
    body = comment.removeprefix("rule_")
    for group in sorted(set(groups.values()), key=len, reverse=True):
        members = sorted(rule for rule, g in groups.items() if g == group)
        for n in range(1, len(members) + 1):
            for subset in itertools.combinations(members, n):
                if body == f"{group}_{'_'.join(subset)}":
                    return group, set(subset)
    return None, {body.split("_wildcards_")[0]}


def timeline(jobs: list[dict[str, str]], groups: dict[str, str]) -> str:
    """One line per SLURM job: id, state, submit/start/end clock times, CPUs, memory, GPU request, rules."""
    lines = []
    for job in jobs:
        clock = [job.get(k, "")[-8:] for k in ("SubmitTime", "StartTime", "EndTime")]
        gpu = "gpu" if "gpu" in job.get("TresPerJob", "") + job.get("TresPerNode", "") else "-"
        group, rules = rules_of(job.get("Comment", ""), groups)
        lines.append(
            f"  {job['JobId']:>4} {job['JobState']:<9} {' '.join(clock)} cpus={job.get('NumCPUs')} "
            f"mem={job.get('MinMemoryNode', '?')} {gpu:<3} {group or ''} {','.join(sorted(rules))}"
        )
    return "\n".join(lines)


def jobs_of_run(cluster: SlurmCluster, uuid: str) -> list[dict[str, str]]:
    return [job for job in cluster.jobs() if job.get("JobName") == uuid]


def compare_outputs(local: Path, remote: Path) -> int:
    """Assert equal tables, evaluation files and HDF5 arrays; returns the number of files compared."""
    compared = 0
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local)
        if not path.is_file() or relative.parts[0] in ("logs", "benchmarks"):
            continue
        other = remote / relative
        assert other.exists(), f"{relative} missing in the SLURM run"
        if path.suffix == ".h5":
            with h5py.File(path) as a, h5py.File(other) as b:
                assert sorted(a) == sorted(b), relative
                for name in a:
                    assert np.array_equal(a[name][()], b[name][()]), f"{relative}:{name} differs"
        elif path.suffix == ".json" and "eval" in relative.parts:
            a, b = json.loads(path.read_text()), json.loads(other.read_text())
            for key in TIMING_KEYS:
                a.pop(key, None), b.pop(key, None)
            assert a == b, relative
        elif path.suffix == ".csv" and relative.parent == Path("."):
            a, b = pd.read_csv(path), pd.read_csv(other)
            keep = [c for c in a.columns if c not in TIMING_COLUMNS]
            pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=True)
        else:
            continue
        compared += 1
    return compared


@pytest.mark.parametrize("config", ["demo", "paper"])
def test_profile_dry_run_requests_gpus_for_gpu_rules_only(config, tmp_path):
    """The submission plan offline: every job carries the profile's partition and account, GPUs go to GPU rules only."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e .[slurm]")
    configfile = REPO / ("configs/demo.yaml" if config == "demo" else "config.yaml")
    command = [*SNAKEMAKE, "-n", "--profile", str(PROFILE), "--workflow-profile", "none",
               "--replace-workflow-config", "--configfile", str(configfile)]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    defaults = profile["default-resources"]
    gpu_jobs: dict[str, set[int]] = {}
    rule = None
    for line in result.stdout.splitlines():
        if match := re.match(r"\s*(?:local)?rule (\w+):$", line):
            rule, method = match.group(1), None
        elif match := re.match(r"\s*wildcards: .*\bmethod=([\w-]+)", line):
            method = match.group(1)
        elif (match := re.match(r"\s*resources: (.*)", line)) and rule == "rerank_method":
            resources = dict(item.split("=", 1) for item in match.group(1).split(", "))
            assert int(resources.get("gpu", 0)) == (method in GPU_METHODS), (method, resources)
            gpu_jobs.setdefault(f"rerank_method~{method}", set()).add(int(resources.get("gpu", 0)))
            rule = None
        elif (match := re.match(r"\s*resources: (.*)", line)) and rule:
            resources = dict(item.split("=", 1) for item in match.group(1).split(", "))
            assert resources["slurm_partition"] == defaults["slurm_partition"], (rule, resources)
            assert resources["slurm_account"] == defaults["slurm_account"], (rule, resources)
            assert "gres" not in resources, (rule, resources)
            gpu_jobs.setdefault(rule, set()).add(int(resources.get("gpu", 0)))
            rule = None
    assert {"extract", "train", "rerank_csa", "knn", "affinity", "evaluate_rerank", "table"} <= set(gpu_jobs)
    assert {"rerank_method~gss", "rerank_method~dsm", "rerank_method~aqe", "db_graph"} <= set(gpu_jobs)
    for rule, gpus in gpu_jobs.items():
        if rule.startswith("rerank_method~"):
            continue
        if rule in GPU_RULES:
            assert min(gpus) >= 1, (rule, gpus)
        else:  # a new GPU rule belongs in GPU_RULES (and in the GPU section of the profile's comments)
            assert gpus == {0}, f"{rule} requests GPUs {gpus} but is not one of the GPU rules {sorted(GPU_RULES)}"
    for group in set(profile["groups"].values()) - {"demo_data", "unpack"}:
        assert f"Group job {group} " in result.stdout, group


@pytest.mark.e2e
@pytest.mark.slurm
def test_profile_on_a_real_slurm_cluster(cluster, tmp_path):
    t0 = time.monotonic()
    remote, local = tmp_path / "slurm", tmp_path / "local"
    remote.mkdir()
    groups = profile_groups()
    reference = local_run(cluster, local)  # alongside: the SLURM run mostly waits for the scheduler
    try:
        # ---- the whole DAG through SLURM ------------------------------------------------------------------
        result = slurm_run(cluster, remote, "--slurm-logdir", str(tmp_path / "slurm_logs"))
        t_run = time.monotonic() - t0
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        jobs = jobs_of_run(cluster, run_id(output))
        assert jobs, "no SLURM job of this run is known to the controller"
        print(f"\n[slurm] SLURM run done at {t_run:.0f} s; its jobs:\n{timeline(jobs, groups)}")
        assert all(job["JobState"] == "COMPLETED" for job in jobs), [(j["JobId"], j["JobState"]) for j in jobs]
        assert {job["Account"] for job in jobs} == {"ci"} and {job["Partition"] for job in jobs} == {"ci"}

        # ---- GPUs: requested by and visible to the GPU rules' jobs only -----------------------------------
        seen: dict[str, set[str]] = {}
        for job_id, _step, visible in cluster.task_environments():
            seen.setdefault(job_id, set()).add(visible)
        rules_seen: set[str] = set()
        grouped: set[str] = set()
        for job in jobs:
            group, rules = rules_of(job.get("Comment", ""), groups)
            rules_seen |= rules
            if group:
                grouped |= rules
            gpu_requested = "gpu" in job.get("TresPerJob", "") + job.get("TresPerNode", "")
            visible = seen.get(job["JobId"], set())
            assert visible, f"job {job['JobId']} ({rules}): its TaskProlog recorded nothing"
            if rules & GPU_RULES:
                assert rules <= GPU_RULES, f"GPU and CPU rules in one job: {rules}"
                assert gpu_requested, f"job {job['JobId']} ({rules}) requested no GPU: {job.get('TresPerJob')}"
                assert visible == {"0"}, f"job {job['JobId']} ({rules}) saw CUDA_VISIBLE_DEVICES {visible}"
            else:
                assert not gpu_requested, f"CPU job {job['JobId']} ({rules}) requested a GPU"
                assert job.get("JOB_GRES", "(null)") == "(null)", job.get("JOB_GRES")
                assert visible == {"unset"}, f"CPU job {job['JobId']} ({rules}) saw CUDA_VISIBLE_DEVICES {visible}"
        expected = {"generate_demo_testset", "generate_demo_trainset", "extract", "knn", "train_neighbours", "train",
                    "affinity", "rerank_csa", "evaluate_first_round", "evaluate_rerank"}  # fmt: skip
        assert rules_seen == expected, rules_seen ^ expected  # table is a local rule: no SLURM job
        assert {"evaluate_first_round", "evaluate_rerank", "affinity", "rerank_csa", "knn"} <= grouped, grouped

        # ---- the same outputs as a local run --------------------------------------------------------------
        assert reference.wait(timeout=RUN_TIMEOUT) == 0, (local / "snakemake.out").read_text()[-6000:]
        t_local = time.monotonic() - t0
        compared = compare_outputs(local / "results" / "ci", remote / "results" / "ci")
        assert compared >= 20, compared
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()

    # ---- a failing job is reported; once repaired it is resubmitted alone ---------------------------------
    t1 = time.monotonic()
    results = remote / "results" / "ci"
    evaluation = results / "eval" / "roxford5k" / "demo-resnet101-gem" / "first_round.json"
    knn = results / "knn" / "roxford5k" / "demo-resnet101-gem.h5"
    evaluation.unlink()
    (results / "table1.csv").unlink()  # the target: Snakemake only rebuilds missing files that a target needs
    original, stat = knn.read_bytes(), knn.stat()
    knn.write_bytes(b"\0" * len(original))  # corrupted on disk, same size and mtime: Snakemake cannot tell
    os.utime(knn, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    dry = subprocess.run([*SNAKEMAKE, *TARGETS, "-n", *CI_CONFIG], cwd=remote, capture_output=True, text=True)
    assert planned_jobs(dry.stdout) == {"evaluate_first_round": 1, "table": 1}, dry.stdout[-3000:]

    failed = slurm_run(cluster, remote, "--retries", "0")
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output[-3000:]
    assert re.search(r"Error in (rule evaluate_first_round|group evaluation)", output), output[-3000:]
    failed_jobs = jobs_of_run(cluster, run_id(output))
    assert [job["JobState"] for job in failed_jobs] == ["FAILED"], failed_jobs
    assert not evaluation.exists()

    knn.write_bytes(original)  # repaired
    os.utime(knn, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rerun = slurm_run(cluster, remote)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-6000:]
    assert planned_jobs(output) == {"evaluate_first_round": 1, "table": 1}, output[-3000:]
    rerun_jobs = jobs_of_run(cluster, run_id(output))
    assert len(rerun_jobs) == 1 and rerun_jobs[0]["JobState"] == "COMPLETED", rerun_jobs
    assert rules_of(rerun_jobs[0]["Comment"], groups)[1] == {"evaluate_first_round"}
    assert evaluation.exists()
    compare_outputs(local / "results" / "ci", results)
    t_fail = time.monotonic() - t1
    print(
        f"\n[slurm] {len(jobs)} SLURM jobs, run {t_run:.0f} s (local reference done at {t_local:.0f} s), "
        f"{compared} output files equal; failure and lone rerun {t_fail:.0f} s; total {time.monotonic() - t0:.0f} s"
    )
