"""The Snakemake workflow: dry runs of both configurations, one tiny end-to-end run, the rerun policy.

The end-to-end run uses configs/ci.yaml (the demo preset shrunk to seconds of compute) in a temporary working
directory, then checks the tables, that a second dry run has nothing to do, which jobs a hyperparameter change
reruns, and that the first-round numbers equal an independent revisitop evaluation of the descriptor files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from csa_rerank import safe_pickle
from csa_rerank.plan import resources

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [
    sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
    "--workflow-profile", str(REPO / "profiles" / "cpu"),
]  # fmt: skip
# --configfile takes further files: a test appends an overlay file to CI_CONFIG to change one value
CI_CONFIG = ["--replace-workflow-config", "--configfile", str(REPO / "configs" / "ci.yaml")]


def snakemake(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=1200, env=env)


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    if "Nothing to be done" in output:
        return {}
    stats = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}


def reordered_mappings(value):
    """``value`` with the keys of every mapping in it in reverse order, the values unchanged."""
    if isinstance(value, dict):
        return {key: reordered_mappings(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered_mappings(item) for item in value]
    return value


def write_reordered(config_file: Path, out: Path) -> Path:
    config = yaml.safe_load(config_file.read_text())
    out.write_text(yaml.safe_dump(reordered_mappings(config), sort_keys=False, allow_unicode=True))
    assert yaml.safe_load(out.read_text()) == config and list(yaml.safe_load(out.read_text())) != list(config)
    return out


def test_reordering_every_mapping_of_the_demo_config_changes_no_param(tmp_path):
    """A finished run has nothing to do after its config's mappings are reordered: every job of the demo plans the
    params Snakemake compares with the recorded ones, string for string, whatever the order of the keys."""
    reordered = write_reordered(REPO / "configs" / "demo.yaml", tmp_path / "reordered.yaml")
    planned = {}
    for name, config_file in (("original", REPO / "configs" / "demo.yaml"), ("reordered", reordered)):
        command = [sys.executable, str(REPO / "tests" / "planned_params.py"), str(REPO / "Snakefile"), str(config_file)]
        result = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        planned[name] = json.loads(result.stdout)
    assert len(planned["original"]) > 300
    changed = {job: params for job, params in planned["reordered"].items() if planned["original"].get(job) != params}
    assert not changed, list(changed.items())[:3]


def test_demo_dry_run_lists_every_stage(tmp_path):
    result = snakemake(
        ["-n", "--configfile", str(REPO / "configs" / "demo.yaml"), "--replace-workflow-config"], tmp_path
    )
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = planned_jobs(result.stdout)
    for rule in ("generate_demo_testset", "generate_demo_distractors", "generate_demo_trainset", "extract", "knn",
                 "train_neighbours", "affinity", "train", "rerank_csa", "rerank_affinity_feature",
                 "evaluate_first_round", "evaluate_rerank", "table", "evaluate_val", "figure", "report"):  # fmt: skip
        assert jobs.get(rule, 0) > 0, rule
    # one job per (dataset, network): 2 test sets with R101-GeM and R101-RMAC (the cross-feature row), the training
    # set with R50/R101/R152-GeM and R101-RMAC (its post-whitening is fitted there); the 600 distractors (R101-GeM)
    # in 3 shards of 200, merged by one job
    assert jobs["extract"] == 8
    assert jobs["extract_shard"] == 3 and jobs["merge_shards"] == 1
    assert jobs["table"] == 7
    # models: 2 training sets + L = 32 (table 2) + the figures' variants depth0, hidden32, lambda0 (Fig. 2),
    # tau1 (supplementary Fig. 1), seed1 (supplementary Fig. 2); the sweeps' default values are the default
    # model.  Validation-split evaluations: the default model, depth0, hidden32, lambda0, tau1
    assert jobs["train"] == 3 + 5 and jobs["evaluate_val"] == 5
    assert jobs["figure"] == 3 and jobs["report"] == 1


def test_paper_dry_run_plans_r1m_shards_and_cross_features_offline(tmp_path):
    # config.yaml in an empty directory: nothing downloaded yet, and no network needed to plan; the report is a
    # target whose inputs are every table and figure, so it plans the whole workflow (all but the rule `all`)
    result = snakemake(["-n", "results/report.html", "--configfile", str(REPO / "config.yaml")], tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = planned_jobs(result.stdout)
    assert jobs["report"] == 1 and jobs["table"] == 7 and jobs["figure"] == 3 and "all" not in jobs
    # 7 models of the tables + the figures' variants: depth 0, 1, 3, 4; hidden 256, 512, 1024, 1280; lambda 0, 0.1,
    # 0.5, 1; tau 0.5, 1, 4; seeds 1-4 (the sweeps' default values are the default model, trained once)
    assert jobs["train"] == 7 + 4 + 4 + 4 + 3 + 4
    assert "models/rSfM120k-hidden1024/model.pt" in result.stdout and "models/rSfM120k-lambda0.1/" in result.stdout
    assert "rSfM120k-depth2" not in result.stdout and "rSfM120k-seed0" not in result.stdout
    # validation split: the default model and its 15 supplementary Fig. 1 variants
    assert jobs["evaluate_val"] == 16 and "eval/rsfm120k-val/gl18-tl-resnet101-gem-w/csa-rSfM120k-tau4" in result.stdout
    # ceil(1,001,001 / 50,000) = 21 shards of R1M with the first-round network, planned without the image list
    assert jobs["extract_shard"] == 21 and jobs["merge_shards"] == 1
    # gl18 nets: 2 test sets + training set (R101), training set (R50, R152); cross features: 5 nets x 2 test sets;
    # the 3 "-W" nets on cirtorch's whitening set (rsfm120k-whiten), where their Lw is learnt
    assert jobs["extract"] == 5 + 10 + 3
    assert "rsfm120k-whiten/imagenet-resnet101-rmac-lw.h5" in result.stdout
    # the database graph once per (test set, network) the compared methods run on: R101 on ROxf, RPar and their
    # +R1M databases (before it, each of the 8 graph-reading methods searched each database itself)
    assert jobs["db_graph"] == 4 and "graph/roxford5k+r1m/gl18-tl-resnet101-gem-w.h5" in result.stdout


def test_bad_config_value_names_the_key(tmp_path):
    result = snakemake(["-n", *CI_CONFIG, "--config", "reranker={recon_head: cubic}"], tmp_path)
    assert result.returncode != 0
    assert "recon_head" in result.stdout + result.stderr
    result = snakemake(["-n", *CI_CONFIG, "--config", "experiments={first_round: nonet}"], tmp_path)
    assert result.returncode != 0
    assert "experiments" in result.stdout + result.stderr
    # a keyword the method does not take fails when the DAG is built, not in its job after extraction
    result = snakemake(["-n", *CI_CONFIG, "--config", "methods={AQE: {m: 3}}"], tmp_path)
    assert result.returncode != 0
    assert "config key methods.AQE: 'm' is no keyword" in result.stdout + result.stderr


def _check_per_query_analysis(tmp_path: Path, results: Path, table5: pd.DataFrame) -> None:
    """Per-query CSVs average to the tables' mAP; Figure 3's frames and query boxes read back from its pixels."""
    from test_qualitative import check_figure3_pixels

    from csa_rerank.plan.analysis import row_slug

    for label in table5["Method"].iloc[1:]:
        for testset, set_label in (("roxford5k", "ROxf"), ("rparis6k+r1m", "RPar+R1M")):
            per_query = pd.read_csv(results / "per_query" / testset / "methods" / f"{row_slug(label)}.csv")
            row = table5[table5["Method"] == label].iloc[0]
            for protocol in ("Medium", "Hard"):
                assert per_query[f"AP {protocol} after"].mean() == pytest.approx(row[f"{set_label} {protocol}"],
                                                                                abs=0.01), (label, testset)  # fmt: skip
    for testset in ("roxford5k", "rparis6k"):
        assert (results / "per_query" / testset / "scatter.png").read_bytes()[:4] == b"\x89PNG"
        index = (results / "gallery" / f"{testset}.html").read_text()
        gnd = safe_pickle.load(tmp_path / "data" / "ci" / "test" / testset / f"gnd_{testset}.pkl")
        assert all(f'id="{name}"' in index for name in gnd["qimlist"])
    gnd = safe_pickle.load(tmp_path / "data" / "ci" / "test" / "roxford5k" / "gnd_roxford5k.pkl")
    fig3 = pd.read_csv(results / "fig3.csv")
    assert list(fig3["kind"]) == ["success"] * 4 + ["failure"] * 4
    assert set(fig3["row"]) == {"first round", "Ours(rSfM120k)"}
    check_figure3_pixels(results / "fig3.png", results / "fig3.csv", gnd, tmp_path / "data" / "ci" / "test" /
                         "roxford5k" / "jpg")  # fmt: skip
    # the selection rule against the per-query CSV (exact values): largest gains, then largest losses, ties by index
    ours = pd.read_csv(results / "per_query" / "roxford5k" / "methods" / "ours-rsfm120k.csv")
    change = (ours["AP Medium after"] - ours["AP Medium before"]).dropna()
    by_gain = sorted(change.index, key=lambda q: (-change[q], q))
    by_loss = [q for q in sorted(change.index, key=lambda q: (change[q], q)) if q not in by_gain[:2]]
    assert list(fig3["query"][::2]) == by_gain[:2] + by_loss[:2]
    report = (results / "report.html").read_text()
    for name in ("fig3.png", "scatter.png", "help_hurt.csv", "roxford5k.html"):
        assert name in report, name


def _independent_map(ranks: np.ndarray, gnd: list[dict], protocol: str) -> float:
    """revisitop's compute_map written out plainly (positions, junk removal, trapezoid), for cross-checking."""
    aps = []
    for q, entry in enumerate(gnd):
        easy, hard, junk = set(entry["easy"]), set(entry["hard"]), set(entry["junk"])
        ok = {"medium": easy | hard, "hard": hard}[protocol]
        bad = {"medium": junk, "hard": junk | easy}[protocol]
        if not ok:
            continue
        position, found, ap = 0, 0, 0.0
        for item in ranks[q]:
            if item in bad:
                continue
            if item in ok:
                before = 1.0 if position == 0 else found / position
                found += 1
                ap += (before + found / (position + 1)) / 2 / len(ok)
            position += 1
        aps.append(ap)
    return 100 * float(np.mean(aps))


def job_limits(dry_run: str, rule: str, workdir: Path) -> list[tuple[float, dict[str, str]]]:
    """(MiB of input, as Snakemake's input.size_mb, and resources) of each job of ``rule`` in a dry run."""
    limits = []
    for block in re.findall(rf"^rule {rule}:((?:\n[ \t]+\S.*)+)", dry_run, flags=re.M):
        inputs = re.search(r"^\s*input: (.*)$", block, flags=re.M).group(1).split(", ")
        listed = re.search(r"^\s*resources: (.*)$", block, flags=re.M).group(1)
        size = sum((workdir / path).stat().st_size for path in inputs) / 2**20
        limits.append((size, dict(item.split("=", 1) for item in listed.split(", "))))
    return limits


@pytest.mark.e2e
def test_end_to_end_tables_and_rerun_policy(tmp_path):
    result = snakemake(["--cores", "2", *CI_CONFIG], tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    results = tmp_path / "results" / "ci"
    # the CPU profile's one thread per job, and OpenMP's passive wait policy that the Snakefile sets for every job
    extract_log = (results / "logs" / "extract" / "roxford5k" / "demo-resnet101-gem.log").read_text()
    assert "torch threads 1, OpenMP wait policy PASSIVE" in extract_log
    for table in ("table1", "table2", "table3", "table4", "table5", "table6", "supp_table1"):
        assert (results / f"{table}.csv").exists(), table
        assert (results / f"{table}.md").exists(), table

    table5 = pd.read_csv(results / "table5.csv")
    # the paper's rows of the methods configs/ci.yaml compares, in the paper's order
    assert list(table5["Method"]) == [
        "R-GeM(No re-ranking)", "Affinity Feature", "AQE", "DSM", "CRL", "GSS", "DFS",
        "Ours(rSfM120k)", "GSS+Ours(rSfM120k)", "DFS+Ours(rSfM120k)",
        "Ours(AugrSfM120k)", "GSS+Ours(AugrSfM120k)", "DFS+Ours(AugrSfM120k)",
    ]  # fmt: skip
    assert "paper ROxf+R1M Hard" in table5.columns
    assert table5.loc[0, "paper ROxf Medium"] == 67.3
    table1 = pd.read_csv(results / "table1.csv")
    assert list(table1["Method"]) == ["R-GeM", "R-GeM+Ours(K=8)", "R-GeM+Ours(K=24)"]
    assert (table1["Re-ranking latency (ms)"].iloc[1:] > 0).all()
    table3 = pd.read_csv(results / "table3.csv")
    assert list(table3["Training nums"]) == [80, 240]  # 10 clusters - 2 for validation = 8 x 8 images, x3 backbones

    # the figures: one model per sweep value, the default value being the default model of the tables
    fig2 = pd.read_csv(results / "fig2.csv")
    assert list(fig2["parameter"]) == ["first round", "depth", "depth", "hidden", "hidden", "lambda", "lambda"]
    assert list(fig2["model"])[1:] == ["rSfM120k-depth0", "rSfM120k", "rSfM120k-hidden16", "rSfM120k",
                                       "rSfM120k-lambda0", "rSfM120k"]  # fmt: skip
    assert fig2.loc[0, "ROxf Hard"] == table5.loc[0, "ROxf Hard"]
    assert (fig2.loc[fig2["model"] == "rSfM120k", "ROxf Hard"] == table1.loc[2, "ROxf Hard"]).all()  # K=24, L=16
    assert fig2.loc[2, "paper ROxf Hard"] == 58.4 and fig2.loc[0, "paper ROxf Hard"] == 44.3
    supp_fig1 = pd.read_csv(results / "supp_fig1.csv")
    assert list(supp_fig1["parameter"]) == ["first round", "depth", "depth", "temperature", "temperature"]
    assert list(supp_fig1["model"])[1:] == ["rSfM120k-depth0", "rSfM120k", "rSfM120k-tau1", "rSfM120k"]
    assert supp_fig1["mAP"].between(0, 100).all() and "paper mAP" not in supp_fig1
    val = json.loads((results / "eval" / "rsfm120k-val" / "demo-resnet101-gem" / "csa-rSfM120k-tau1" / "K24_L16.json")
                     .read_text())  # fmt: skip
    # 2 val clusters x 8 images: each a query against the other 15 (K = 24 capped at 15), 7 positives each
    assert (val["K"], val["L"], val["n_queries"], val["n_clusters"]) == (15, 16, 16, 2)
    assert supp_fig1.loc[3, "mAP"] == round(val["rerank"]["mAP"], 2)
    supp_fig2 = pd.read_csv(results / "supp_fig2.csv")
    assert list(supp_fig2["parameter"]) == ["first round", "seed", "seed", "mean", "std"]
    assert list(supp_fig2["model"])[1:3] == ["rSfM120k", "rSfM120k-seed1"]
    for column in ("ROxf Medium", "RPar Medium", "ROxf Hard", "RPar Hard"):
        seeds = supp_fig2.loc[1:2, column]
        assert supp_fig2.loc[3, column] == pytest.approx(seeds.mean(), abs=0.006)
        assert supp_fig2.loc[4, column] == pytest.approx(seeds.std(ddof=1), abs=0.011)
    for figure in ("fig2", "supp_fig1", "supp_fig2"):
        assert (results / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    # each variant was trained with its one change (hidden 16 keeps the head width 32 / 4 = 8: 2 heads)
    configs = {
        model: torch.load(results / "models" / model / "model.pt", weights_only=True)
        for model in ("rSfM120k", "rSfM120k-depth0", "rSfM120k-hidden16", "rSfM120k-tau1", "rSfM120k-seed1")
    }
    default = configs["rSfM120k"]["config"]
    assert configs["rSfM120k-depth0"]["config"] == {**default, "depth": 0}
    assert configs["rSfM120k-hidden16"]["config"] == {**default, "hidden": 16, "heads": 2}
    assert configs["rSfM120k-tau1"]["config"] == {**default, "temperature": 1.0}
    assert configs["rSfM120k-seed1"]["config"] == default
    weights = configs["rSfM120k-seed1"]["state_dict"]["projection.weight"]
    assert not torch.equal(weights, configs["rSfM120k"]["state_dict"]["projection.weight"])
    lambda0 = pd.read_csv(results / "models" / "rSfM120k-lambda0" / "train_log.csv")  # lambda 0: total = contrastive
    assert np.allclose(lambda0["total"], lambda0["contrastive"]) and (lambda0["reconstruction"] > 0).all()
    # the report: every table and figure in one HTML file
    report = (results / "report.html").read_text()
    for name in ("table5.csv", "table5.md", "fig2.png", "supp_fig1.csv", "supp_fig2.png", "loss.png"):
        assert name in report, name

    # first-round mAP in table 5 equals an independent evaluation of the descriptor files
    for name, label in (("roxford5k", "ROxf"), ("rparis6k", "RPar")):
        gnd = safe_pickle.load(tmp_path / "data" / "ci" / "test" / name / f"gnd_{name}.pkl")["gnd"]
        with h5py.File(results / "features" / name / "demo-resnet101-gem.h5") as handle:
            db, query = handle["db"][()], handle["query"][()]
        ranks = np.argsort(-(query @ db.T), axis=1, kind="stable")
        for protocol, column in (("medium", "Medium"), ("hard", "Hard")):
            expected = round(_independent_map(ranks, gnd, protocol), 2)
            assert table5.loc[0, f"{label} {column}"] == pytest.approx(expected, abs=0.011)

    _check_per_query_analysis(tmp_path, results, table5)

    # nothing to do after a finished run, nor with every mapping of its configuration in another order
    result = snakemake(["-n", *CI_CONFIG], tmp_path)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout, result.stdout[-3000:]
    reordered = write_reordered(REPO / "configs" / "ci.yaml", tmp_path / "reordered.yaml")
    result = snakemake(["-n", "--replace-workflow-config", "--configfile", str(reordered)], tmp_path)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout, result.stdout[-3000:]

    # editing the code of one compared method (DFS) reruns its jobs and what reads their output, nothing else
    package = tmp_path / "edited" / "csa_rerank"
    shutil.copytree(REPO / "src" / "csa_rerank", package, ignore=shutil.ignore_patterns("__pycache__"))
    with (package / "methods" / "diffusion.py").open("a") as module:
        module.write("\nEDITED = True\n")
    edited = snakemake(["-n", *CI_CONFIG], tmp_path, env={**os.environ, "PYTHONPATH": str(package.parent)})
    jobs = planned_jobs(edited.stdout)
    assert jobs.get("rerank_method") == 4 and "~dfs.h5" in edited.stdout, jobs  # DFS on the 4 evaluation sets
    assert not {"extract", "extract_shard", "knn", "train", "train_neighbours", "fit_method"} & set(jobs), jobs
    reruns = re.findall(r"output: (\S+knn/\S+~\w+\.h5)", edited.stdout)
    assert reruns and all(path.endswith("~dfs.h5") for path in reruns), reruns
    # their memory and time limits: DFS's for the size of each job's inputs (csa_rerank.plan.resources)
    limits = job_limits(edited.stdout, "rerank_method", tmp_path)
    assert len(limits) == 4, edited.stdout[-3000:]
    for input_mb, job_resources in limits:
        assert int(job_resources["mem_mb"]) == resources.mem_mb("DFS", input_mb), (input_mb, job_resources)
        assert int(job_resources["runtime"]) == resources.runtime("DFS", input_mb), (input_mb, job_resources)

    # a re-ranker hyperparameter reruns training, re-ranking, evaluation and tables, not extraction/kNN/affinity
    overlay = tmp_path / "recon_weight.yaml"
    overlay.write_text("training:\n  recon_weight: 0.5\n")
    changed = snakemake(["-n", *CI_CONFIG, str(overlay)], tmp_path)
    jobs = planned_jobs(changed.stdout)
    # every model but rSfM120k-lambda0 (lambda set by the sweep) retrains, and the sweep's lambda 0.2 is no longer
    # the default: 7 + rSfM120k-lambda0.2
    assert jobs.get("train") == 8 and jobs.get("rerank_csa", 0) > 0 and jobs.get("table", 0) > 0, jobs
    assert "rSfM120k-lambda0/model.pt" not in changed.stdout and jobs.get("report") == 1, jobs
    assert not {"extract", "knn", "affinity", "train_neighbours"} & set(jobs), jobs

    # the image size reruns extraction and everything after it
    overlay = tmp_path / "image_size.yaml"
    overlay.write_text("extraction:\n  image_size: 48\n")
    changed = snakemake(["-n", *CI_CONFIG, str(overlay)], tmp_path)
    jobs = planned_jobs(changed.stdout)
    assert jobs.get("extract") == 5 and jobs.get("extract_shard") == 3, jobs
    assert jobs.get("knn") == 4 and jobs.get("train") == 8, jobs
    assert "generate_demo_testset" not in jobs

    # the 40 distractors were extracted in shards of 16 (16, 16, 8) and merged into one file; a shard that failed
    # before the merge is extracted again alone.  (The merged file is requested: with the files after it present, a
    # plain run would not remake a deleted intermediate file.)
    with h5py.File(results / "features" / "r1m" / "demo-resnet101-gem.h5") as handle:
        assert handle["db"].shape[0] == 40 and handle.attrs["shards"] == 3
    (results / "features" / "r1m" / "demo-resnet101-gem" / "shard1.h5").unlink()
    (results / "features" / "r1m" / "demo-resnet101-gem.h5").unlink()
    jobs = planned_jobs(snakemake(["-n", "results/ci/features/r1m/demo-resnet101-gem.h5", *CI_CONFIG], tmp_path).stdout)
    assert jobs.get("extract_shard") == 1 and "extract" not in jobs and jobs.get("merge_shards") == 1, jobs

    json.loads((results / "models" / "rSfM120k" / "summary.json").read_text())
