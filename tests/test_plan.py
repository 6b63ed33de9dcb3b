"""The experiment plan (csa_rerank.plan) and the registries (csa_rerank.registry), called directly: no Snakemake.

Most expectations come from a small configuration written below and are worked out by hand from it.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from csa_rerank import compare, registry, tables
from csa_rerank.plan import Plan, alternatives
from csa_rerank.plan.tables import TABLE6_METHODS

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "datasets": {
        "test": ["roxford5k", "rparis6k"],
        "distractors": "r1m",
        "distractor_images": 25,
        "training": "rsfm120k",
    },  # fmt: skip
    "networks": {
        "r101": {"arch": "resnet101", "seed": 1},
        "r50": {"arch": "resnet50", "seed": 2, "post_whitening": "centre"},
        "rmac": {"arch": "resnet101", "pooling": "rmac", "body_checkpoint": "<data>/networks/body.pth"},
    },
    "extraction": {"image_size": 64, "scales": [1.0], "shard_size": 10},
    "experiments": {
        "first_round": "r101",
        "K": 24,
        "L": 16,
        "training_sets": {"A": ["r101"], "B": ["r50", "r101"]},
        "default_training_set": "A",
        "table1_K": [8, 24],
        "table2_L": [8, 16],
        "table6_K": [24],
        "latency_queries": 4,
        "cross_features": {"X": "rmac"},
        "fig2": {"depth": [0, 2], "hidden": [16, 32]},
        "supp_fig1": {"temperature": [1.0, 2.0]},
        "seeds": [0, 1],
    },
    "reranker": {"hidden": 32, "heads": 4, "depth": 2, "temperature": 2.0},
    "training": {"recon_weight": 0.2, "seed": 0, "K_train": 20, "epochs": 2, "processes": 2},
    "methods": {"AQE": {}, "DSM": {"top_n": 5}, "CRL": {"K": 16, "fit": {"epochs": 2}}, "GSS": {}, "k-reciprocal": {}},
}


def small(**changes) -> dict:
    """SMALL with changes given as 'section.key' (dots as '__') -> value."""
    config = copy.deepcopy(SMALL)
    for path, value in changes.items():
        *parents, key = path.split("__")
        section = config
        for part in parents:
            section = section[part]
        section[key] = value
    return config


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan(small())


def validated(path: Path) -> dict:
    """A configuration file with the schema's defaults filled in, as common.smk sees it."""
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


CONFIGS = ["config.yaml", "configs/demo.yaml", "configs/ci.yaml"]


# ---------------------------------------------------------------------------------------------------------------
# models, sweeps, shards


def test_models_of_tables_and_figures(plan):
    # training sets, table 2's L = 8, then the sweeps' non-default values; depth 2, hidden 32, tau 2, seed 0 are the
    # default model.  Head width 32 / 4 = 8: hidden 16 has 2 heads
    assert plan.models == {
        "A": {"training_set": "A", "anchors": 16},
        "B": {"training_set": "B", "anchors": 16},
        "A-L8": {"training_set": "A", "anchors": 8},
        "A-depth0": {"training_set": "A", "anchors": 16, "reranker": {"depth": 0}},
        "A-hidden16": {"training_set": "A", "anchors": 16, "reranker": {"hidden": 16, "heads": 2}},
        "A-tau1": {"training_set": "A", "anchors": 16, "reranker": {"temperature": 1.0}},
        "A-seed1": {"training_set": "A", "anchors": 16, "training": {"seed": 1}},
    }
    assert plan.figure_sweeps == {
        "fig2": {"depth": [(0, "A-depth0"), (2, "A")], "hidden": [(16, "A-hidden16"), (32, "A")]},
        "supp_fig1": {"temperature": [(1.0, "A-tau1"), (2.0, "A")]},
        "supp_fig2": {"seed": [(0, "A"), (1, "A-seed1")]},
    }
    assert plan.figures == ["fig2", "supp_fig1", "supp_fig2"]
    assert plan.train_topk == 20  # K_train 20 > the longest anchor list, 16


def test_float_sweep_values_name_models_without_trailing_zeros():
    plan = Plan(small(experiments__fig2={"lambda": [0.0, 0.5]}))
    assert plan.figure_sweeps["fig2"]["lambda"] == [(0.0, "A-lambda0"), (0.5, "A-lambda0.5")]


def test_model_settings_are_the_config_with_the_variants_changes(plan):
    variant = plan.reranker_config("A-hidden16")
    assert variant == {"hidden": 16, "heads": 2, "depth": 2, "temperature": 2.0, "anchors": 16}
    assert plan.reranker_config("A-L8")["anchors"] == 8
    # without the process count, which does not change the result
    assert plan.training_hyperparameters("A-seed1") == {"recon_weight": 0.2, "seed": 1, "K_train": 20, "epochs": 2}
    assert plan.training_priority("B") == 2 and plan.training_priority("A-tau1") == 1
    assert plan.training_inputs("B") == {
        "db": "<data>/train/retrieval-SfM-120k/retrieval-SfM-120k.pkl",
        "features": ["<results>/features/rsfm120k/r50.h5", "<results>/features/rsfm120k/r101.h5"],
        "neighbours": ["<results>/neighbours/r50.h5", "<results>/neighbours/r101.h5"],
    }


def test_distractor_shards(plan):
    assert plan.n_shards == 3  # ceil(25 / 10)
    assert [plan.shard_range(i) for i in range(3)] == [[0, 10], [10, 20], [20, 25]]
    with pytest.raises(ValueError, match="shard 3 does not exist: 3 shards"):
        plan.shard_range(3)
    assert plan.distractor_shards("r101") == [f"<results>/features/r1m/r101/shard{i}.h5" for i in range(3)]
    assert Plan(small(datasets__distractors=None)).n_shards == 0


def test_demo_plans_the_shards_of_the_distractors_it_generates():
    demo = {"seed": 0, "distractors": {"n_images": 7}}
    config = small(demo=demo)
    del config["datasets"]["distractor_images"]
    plan = Plan(config)
    assert plan.distractor_images == 7 and plan.n_shards == 1 and plan.shard_range(0) == [0, 7]


def test_evaluation_sets_and_wildcard_constraints(plan):
    assert plan.eval_sets == ["roxford5k", "rparis6k", "roxford5k+r1m", "rparis6k+r1m"]
    assert Plan(small(datasets__distractors=None)).eval_sets == ["roxford5k", "rparis6k"]
    constraints = plan.wildcard_constraints()
    assert re.fullmatch(constraints["network"], "r101~gss") and re.fullmatch(constraints["network"], "r50")
    assert not re.fullmatch(constraints["network"], "r101~dfs")  # DFS is not configured
    assert re.fullmatch(constraints["reranker"], "csa-A-hidden16")
    assert not re.fullmatch(constraints["reranker"], "csa-C")
    assert re.fullmatch(constraints["dataset"], "rsfm120k") and not re.fullmatch(constraints["dataset"], "r1m")
    assert alternatives(["a", "abc", "ab"]) == "abc|ab|a"


# ---------------------------------------------------------------------------------------------------------------
# inputs of the rules


def test_extraction_inputs(plan):
    assert plan.extract_inputs("roxford5k", "r101") == {
        "images": "<data>/test/roxford5k/jpg",
        "listing": "<data>/test/roxford5k/gnd_roxford5k.pkl",
    }
    # a post-whitened network reads the whitening fitted on the whitening set (the training set by default)
    assert plan.extract_inputs("rparis6k", "r50")["whitening"] == "<results>/features/rsfm120k/r50.h5"
    assert "whitening" not in plan.extract_inputs("rsfm120k", "r50")
    assert plan.extract_inputs("r1m", "rmac") == {
        "images": "<data>/revisitop1m/jpg",
        "listing": "<data>/revisitop1m/revisitop1m.txt",
        "body_checkpoint": "<data>/networks/body.pth",
    }
    whiten = Plan(small(datasets__whitening="rsfm120k-whiten"))
    assert whiten.extract_inputs("rsfm120k-whiten", "r50")["listing"] == (
        "<data>/train/retrieval-SfM-120k/retrieval-SfM-120k-whiten.pkl"
    )
    assert whiten.extract_inputs("rsfm120k", "r50")["whitening"] == "<results>/features/rsfm120k-whiten/r50.h5"
    assert [whiten.dataset_kind(d) for d in ("rparis6k", "r1m", "rsfm120k", "rsfm120k-whiten")] == [
        "test",
        "distractors",
        "training",
        "whitening",
    ]


def test_descriptor_files_and_ground_truth(plan):
    assert plan.descriptor_files("roxford5k+r1m", "r101~gss") == {
        "testset": "<results>/features/roxford5k/r101.h5",
        "distractors": "<results>/features/r1m/r101.h5",
    }
    assert plan.descriptor_files("rparis6k", "r50") == {"testset": "<results>/features/rparis6k/r50.h5"}
    assert plan.ground_truth("rparis6k+r1m") == "<data>/test/rparis6k/gnd_rparis6k.pkl"
    assert plan.export_layouts == {"test/roxford5k": "roxford5k", "test/rparis6k": "rparis6k", "train": "rsfm120k",
                                   "r1m": "r1m"}  # fmt: skip
    assert plan.export_input("train", "r50") == "<results>/features/rsfm120k/r50.h5"


def test_method_inputs_and_settings(plan):
    assert plan.method_of_slug == {"aqe": "AQE", "dsm": "DSM", "crl": "CRL", "gss": "GSS",
                                   "kreciprocal": "k-reciprocal"}  # fmt: skip
    assert plan.method_inputs("roxford5k", "r101", "aqe") == {
        "testset": "<results>/features/roxford5k/r101.h5",
        "knn": "<results>/knn/roxford5k/r101.h5",
    }
    assert plan.method_inputs("roxford5k", "r101", "crl")["weights"] == "<results>/methods/crl/r101.pt"
    dsm = plan.method_inputs("rparis6k+r1m", "rmac", "dsm")  # DSM reads the images and the network
    assert dsm["images"] == "<data>/test/rparis6k/jpg" and dsm["gnd"] == "<data>/test/rparis6k/gnd_rparis6k.pkl"
    assert dsm["distractor_list"] == "<data>/revisitop1m/revisitop1m.txt"
    assert dsm["body_checkpoint"] == "<data>/networks/body.pth"
    assert plan.method_settings("crl") == {"K": 16} and plan.fit_settings("crl") == {"epochs": 2}
    assert plan.fit_settings("lattqe") == {}  # LAttQE not configured: its module's defaults
    assert plan.image_settings("dsm", "r101") == {"network": SMALL["networks"]["r101"], "image_size": 64}
    assert plan.image_settings("aqe", "r101") == {}
    # GSS and k-reciprocal read the database graph of their (test set, network), AQE does not
    assert plan.method_inputs("rparis6k+r1m", "r50", "gss")["graph"] == "<results>/graph/rparis6k+r1m/r50.h5"
    assert "graph" not in plan.method_inputs("rparis6k+r1m", "r50", "aqe")


def test_graph_widths_are_the_most_any_configured_method_reads(plan):
    # defaults read from the methods' source: GSS k = 5 (via **params into fit_embeddings), k-reciprocal k1 = 20
    # plus itself, and min p·u (one far column)
    assert plan.graph_widths == (21, 1)
    assert Plan(small(methods={"GSS": {"k": 40}, "AQE": {}})).graph_widths == (40, 0)
    assert Plan(small(methods={"DDBA + DQE": {"n_dba": 4}})).graph_widths == (5, 50)
    # LAttDBA reads k + 1 columns, k being its model's (LAttQE's fit), default 16
    assert Plan(small(methods={"LAttDBA + LAttQE": {}})).graph_widths == (17, 0)
    assert Plan(small(methods={"LAttQE": {"fit": {"k": 30}}, "LAttDBA + LAttQE": {}})).graph_widths == (31, 0)
    assert Plan(small(methods={"AQE": {}})).graph_widths == (0, 0)


def test_method_job_limits_come_from_the_method_of_the_slug(plan):
    from csa_rerank.plan import resources

    assert plan.method_mem_mb("aqe", 0, 1) == resources.mem_mb("AQE", 0) == 2000
    assert plan.method_runtime("kreciprocal", 9000, 2) == resources.runtime("k-reciprocal", 9000, 2)
    assert plan.method_mem_mb("dsm", 10_000, 1) == 23_000


# ---------------------------------------------------------------------------------------------------------------
# table and figure layouts


def _labels(layout):
    return [row["label"] for row in layout["rows"]]


def test_table1_latency_against_K(plan):
    layout = plan.table_layout("table1")
    assert _labels(layout) == ["R-GeM", "R-GeM+Ours(K=8)", "R-GeM+Ours(K=24)"]
    assert layout["rows"][0]["text"] == {"Re-ranking latency (ms)": "0.0"}
    cells = layout["rows"][1]["cells"]
    assert list(cells) == ["ROxf Medium", "RPar Medium", "ROxf Hard", "RPar Hard", "Re-ranking latency (ms)"]
    assert cells["RPar Hard"] == {"file": "<results>/eval/rparis6k/r101/csa-A/K8_L16.json", "key": ["hard", "mAP"]}
    assert cells["Re-ranking latency (ms)"] == {
        "file": "<results>/eval/roxford5k/r101/csa-A/K8_L16.json",
        "key": ["latency_ms"],
    }
    assert layout["rows"][0]["cells"]["ROxf Medium"]["file"] == "<results>/eval/roxford5k/r101/first_round.json"


def test_table2_one_model_per_anchor_length(plan):
    layout = plan.table_layout("table2")
    assert _labels(layout) == ["R-GeM", "R-GeM+Ours(L=8)", "R-GeM+Ours(L=16)"]
    assert layout["rows"][1]["cells"]["ROxf Medium"]["file"] == "<results>/eval/roxford5k/r101/csa-A-L8/K24_L8.json"
    assert layout["rows"][2]["cells"]["ROxf Medium"]["file"] == "<results>/eval/roxford5k/r101/csa-A/K24_L16.json"


def test_table3_training_sets(plan):
    layout = plan.table_layout("table3")
    assert layout["label_header"] == "Training Dataset" and _labels(layout) == ["A", "B"]
    summary = {"file": "<results>/models/B/summary.json", "key": ["n_samples"]}
    assert layout["rows"][1]["cells"]["Training nums"] == summary
    assert layout["rows"][1]["cells"]["RPar Medium"]["file"] == "<results>/eval/rparis6k/r101/csa-B/K24_L16.json"


def test_table4_and_supplementary_table1_cross_features():
    plan = Plan(small(experiments__cross_features_table4={"Y": "r50"}))
    table4, supp = plan.table_layout("table4"), plan.table_layout("supp_table1")
    assert _labels(table4) == ["Y", "Y+Ours"] and _labels(supp) == ["X", "X+Ours"]
    assert [row["text"] for row in supp["rows"]] == [{"Training feature": "-"}, {"Training feature": "R-GeM"}]
    # the feature's own first round, then re-ranked by the default model
    assert supp["rows"][0]["cells"]["ROxf Hard"]["file"] == "<results>/eval/roxford5k/rmac/first_round.json"
    assert supp["rows"][1]["cells"]["ROxf Hard"]["file"] == "<results>/eval/roxford5k/rmac/csa-A/K24_L16.json"
    # without cross_features_table4, table 4 has the rows of supplementary table 1
    assert _labels(Plan(small()).table_layout("table4")) == ["X", "X+Ours"]


def test_row_order_is_the_papers_not_the_mappings():
    """Training sets and cross features are mapping keys: their rows follow the paper's, unknown labels last by
    name, so that reordering the configuration changes no table."""
    training_sets = {"rSfM120k": ["r101"], "Z": ["r50"], "AugrSfM120k": ["r50", "r101"], "C": ["r101"]}
    for order in (list(training_sets), list(reversed(training_sets))):
        sets = {name: training_sets[name] for name in order}
        config = small(experiments__training_sets=sets, experiments__default_training_set="rSfM120k")
        assert _labels(Plan(config).table_layout("table3")) == ["rSfM120k", "AugrSfM120k", "C", "Z"]
    features = {"V-GeM-W": "r50", "R-GeM[O]-W": "rmac", "R-RMAC[O]": "r101"}
    assert _labels(Plan(small(experiments__cross_features=features)).table_layout("supp_table1"))[::2] == [
        "R-RMAC[O]",
        "R-GeM[O]-W",
        "V-GeM-W",
    ]


def test_params_do_not_depend_on_the_order_of_mappings(plan):
    def reversed_mappings(value):
        if isinstance(value, dict):
            return {key: reversed_mappings(value[key]) for key in reversed(list(value))}
        return value

    other = Plan(reversed_mappings(small()))
    for model in plan.models:
        assert repr(other.reranker_config(model)) == repr(plan.reranker_config(model))
        assert repr(other.training_hyperparameters(model)) == repr(plan.training_hyperparameters(model))
    for slug in plan.method_of_slug:
        assert repr(other.method_settings(slug)) == repr(plan.method_settings(slug))
        assert repr(other.image_settings(slug, "r101")) == repr(plan.image_settings(slug, "r101"))
    assert repr(other.fig3) == repr(plan.fig3) and repr(other.networks) == repr(plan.networks)
    assert repr(other.table_layout("table5")) == repr(plan.table_layout("table5"))


def test_table5_rows_in_registry_order(plan):
    layout = plan.table_layout("table5")
    assert _labels(layout) == [
        "R-GeM(No re-ranking)", "Affinity Feature", "AQE", "DSM", "CRL", "GSS",
        "Ours(A)", "GSS+Ours(A)", "Ours(B)", "GSS+Ours(B)", "k-reciprocal (not in the paper)",
    ]  # fmt: skip
    rows = {row["label"]: row["cells"] for row in layout["rows"]}
    assert list(rows["GSS"]) == [
        "ROxf Medium", "RPar Medium", "ROxf+R1M Medium", "RPar+R1M Medium",
        "ROxf Hard", "RPar Hard", "ROxf+R1M Hard", "RPar+R1M Hard",
    ]  # fmt: skip
    assert rows["GSS"]["ROxf+R1M Hard"] == {
        "file": "<results>/eval/roxford5k+r1m/r101~gss/first_round.json",
        "key": ["hard", "mAP"],
    }
    assert rows["GSS+Ours(B)"]["RPar Medium"]["file"] == "<results>/eval/rparis6k/r101~gss/csa-B/K24_L16.json"
    assert rows["Affinity Feature"]["ROxf Medium"]["file"] == (
        "<results>/eval/roxford5k/r101/affinity_feature/K24_L16.json"
    )


def test_table6_costs_on_the_large_sets(plan):
    layout = plan.table_layout("table6")
    assert _labels(layout) == ["GSS", "Ours(K=24)"]  # of DFS, GSS, αQE only GSS is configured
    ours = layout["rows"][1]
    assert ours["text"] == {"Space Cplx.": "O(Nd)", "Time Cplx.": "O(KLd + K^2)"}
    roxf, rpar = (
        "<results>/eval/roxford5k+r1m/r101/csa-A/K24_L16.json",
        "<results>/eval/rparis6k+r1m/r101/csa-A/K24_L16.json",
    )
    assert ours["cells"] == {
        "Re-ranking latency (ms)": {"file": roxf, "key": ["latency_ms"]},
        "Memory (GB) ROxf+R1M": {"file": roxf, "key": ["memory_gb"]},
        "Memory (GB) RPar+R1M": {"file": rpar, "key": ["memory_gb"]},
    }
    assert Plan(small(datasets__distractors=None)).table_layout("table6")["rows"] == []


def test_layout_files_resolved_and_inputs_unique(plan):
    layout = plan.table_layout("table3", resolve=lambda path: path.replace("<results>", "out"))
    assert layout["rows"][0]["cells"]["ROxf Medium"]["file"] == "out/eval/roxford5k/r101/csa-A/K24_L16.json"
    inputs = plan.table_inputs("table1")
    # 4 metric files per K row share the latency file: first round 2 + 2 test sets x 2 K
    assert inputs == sorted(set(inputs)) and len(inputs) == 6
    with pytest.raises(ValueError, match="unknown table 'table7'"):
        plan.table_layout("table7")


def test_figure_layouts(plan):
    fig2 = plan.figure_layout("fig2")
    assert fig2["title"].endswith("(K=24, L=16)") and fig2["metric"] == "ROxf Hard"
    assert fig2["ylabel"] == "mAP (%), ROxf Hard" and fig2["paper_in_plot"]
    assert list(fig2["baseline"]["cells"]) == ["ROxf Medium", "ROxf Hard"]  # the first test set only
    assert [panel["parameter"] for panel in fig2["panels"]] == ["depth", "hidden"]
    point = fig2["panels"][1]["points"][0]
    assert (point["value"], point["model"]) == (16, "A-hidden16")
    assert point["cells"]["ROxf Hard"]["file"] == "<results>/eval/roxford5k/r101/csa-A-hidden16/K24_L16.json"
    supp1 = plan.figure_layout("supp_fig1")  # on the training set's val split
    assert supp1["ylabel"] == "mAP (%), rsfm120k val split"
    assert supp1["baseline"]["cells"] == {
        "mAP": {"file": "<results>/eval/rsfm120k-val/r101/csa-A/K24_L16.json", "key": ["first_round", "mAP"]}
    }
    assert supp1["panels"][0]["points"][0]["cells"]["mAP"]["file"].endswith("/csa-A-tau1/K24_L16.json")
    supp2 = plan.figure_layout("supp_fig2")
    assert supp2["ylabel"] == "mAP (%)" and list(supp2["baseline"]["cells"])[:2] == ["ROxf Medium", "RPar Medium"]
    assert not Plan(small(demo={"seed": 0, "distractors": {"n_images": 25}})).figure_layout("fig2")["paper_in_plot"]
    assert len(plan.figure_inputs("supp_fig1")) == 2  # the default model's evaluation (baseline and tau 2), tau 1


def test_targets(plan):
    assert plan.all_targets()[-1] == "<results>/report.html"
    assert "<results>/supp_table1.md" in plan.tables_and_figures() and "<results>/supp_fig2.png" in plan.all_targets()
    # the galleries are one HTML file each, shown by the report
    assert "<results>/gallery/rparis6k.html" in plan.report_inputs()


def test_per_query_analysis_compares_every_table5_row_with_the_first_round(plan):
    rows = plan.compared_rows
    # table 5 of SMALL: Affinity Feature, AQE, DSM, CRL, GSS, Ours(A), GSS+Ours(A), Ours(B), GSS+Ours(B), k-reciprocal
    assert list(rows) == ["affinity-feature", "aqe", "dsm", "crl", "gss", "ours-a", "gss-ours-a", "ours-b",
                          "gss-ours-b", "k-reciprocal"]  # fmt: skip
    assert rows["k-reciprocal"] == "k-reciprocal (not in the paper)"
    inputs = plan.per_query_inputs("roxford5k+r1m")  # one job per set: the after files in the order of the rows
    assert inputs["before"] == "<results>/eval/roxford5k+r1m/r101/first_round.json"
    assert inputs["gnd"] == "<data>/test/roxford5k/gnd_roxford5k.pkl"
    on_r1m = plan.per_query_rows("roxford5k+r1m")
    after = dict(zip(on_r1m, inputs["after"], strict=True))
    assert after["gss-ours-b"] == "<results>/eval/roxford5k+r1m/r101~gss/csa-B/K24_L16.json"
    assert len(plan.per_query_rows("rparis6k")) == 10
    assert "<results>/per_query/rparis6k+r1m/scatter.png" in plan.report_inputs()
    assert "<results>/fig3.png" in plan.all_targets()


def test_fig3_defaults_and_choices():
    plan = Plan(small())
    assert plan.fig3 == {"successes": 2, "failures": 2, "protocol": "medium", "method": "Ours", "testset": "roxford5k"}
    assert plan.fig3_method() == "Ours(A)"
    assert plan.qualitative_inputs("roxford5k") == {
        "before": "<results>/eval/roxford5k/r101/first_round.json",
        "after": "<results>/eval/roxford5k/r101/csa-A/K24_L16.json",
        "gnd": "<data>/test/roxford5k/gnd_roxford5k.pkl",
        "images": "<data>/test/roxford5k/jpg",
    }
    gss = Plan(small(experiments__fig3={"method": "GSS+Ours", "testset": "rparis6k"}))
    assert gss.qualitative_inputs("rparis6k")["after"] == "<results>/eval/rparis6k/r101~gss/csa-A/K24_L16.json"
    assert Plan(small(experiments__fig3={"method": "k-reciprocal"})).fig3_method() == "k-reciprocal (not in the paper)"


# ---------------------------------------------------------------------------------------------------------------
# cross-key checks: each failure names the key


@pytest.mark.parametrize(
    "changes, key, allowed",
    [
        ({"datasets__test": ["roxford5k", "r1m"]}, "datasets.test", "roxford5k, rparis6k"),
        ({"datasets__distractors": "rsfm120k"}, "datasets.distractors", "r1m"),
        ({"datasets__training": "roxford5k"}, "datasets.training", "rsfm120k"),
        ({"datasets__whitening": "r1m"}, "datasets.whitening", "rsfm120k, rsfm120k-whiten"),
        ({"methods": {"AQE": {}, "XQE": {}}}, "methods.XQE", "AQE, AQEwD"),
        ({"methods": {"Ours": {}}}, "methods.Ours", "DFS, k-reciprocal"),  # CSA has its own rules
        ({"experiments__first_round": "nonet"}, "experiments.first_round", "r101, r50, rmac"),
        ({"experiments__training_sets": {"A": ["r101", "nonet"]}}, "experiments.training_sets.A", "r101"),
        ({"experiments__cross_features": {"X": "nonet"}}, "experiments.cross_features.X", "r101"),
        ({"experiments__cross_features_table4": {"Y": "nonet"}}, "experiments.cross_features_table4.Y", "r101"),
        ({"networks__r101__post_whitening": "checkpoint"}, "networks.r101.post_whitening", "needs 'checkpoint'"),
        ({"experiments__default_training_set": "C"}, "experiments.default_training_set", "A, B"),
        ({"datasets__distractor_images": None}, "datasets.distractor_images", "shards"),
        ({"demo": {"distractors": {"n_images": 7}}}, "datasets.distractor_images", "n_images = 7"),
        ({"experiments__fig2": {"hidden": [12]}}, "experiments.fig2.hidden", "head width 8"),
        ({"experiments__fig3": {"testset": "r1m"}}, "experiments.fig3.testset", "roxford5k, rparis6k"),
        ({"experiments__fig3": {"method": "DFS"}}, "experiments.fig3.method", "AQE, Affinity Feature"),
        # what used to fail inside a job, after extraction (or was reported against another key)
        ({"experiments__K": 5000}, "experiments.K", "4993 database images of roxford5k"),
        ({"experiments__table1_K": [8, 6000]}, "experiments.table1_K", "at most 4993"),
        ({"experiments__L": 6000}, "experiments.L", "at most 4993"),
        ({"experiments__table2_L": [8, 7000]}, "experiments.table2_L", "at most 4993"),
        ({"experiments__table6_K": [5019]}, "experiments.table6_K", "5018 database images of roxford5k+r1m"),
        ({"training__warmup_epochs": 3}, "training.warmup_epochs", "warmup_epochs <= epochs"),
        ({"training__batch_size": 100_000}, "training.batch_size", "batch_size <= 91642"),
        ({"training__batch_size": 3}, "training.batch_size", "training.processes = 2"),
        ({"training__K_train": 100_000}, "training.K_train", "91642 training images"),
        ({"reranker__heads": 5}, "reranker.heads", "hidden size 32"),
        ({"methods": {"AQE": {"m": 3}}}, "methods.AQE", "'m' is no keyword of csa_rerank.methods.qe.aqe; it accepts"),
        ({"methods": {"GSS": {"epochs": 5, "rounds": 1}}}, "methods.GSS", "beta_percentile"),  # through **params
        ({"methods": {"DSM": {"chanels": 5}}}, "methods.DSM", "channels"),  # DSM's rerank_with_network
        ({"methods": {"CRL": {"fit": {"epochs": 2, "hiden": 8}}}}, "methods.CRL.fit", "hidden"),
        ({"methods": {"AQE": {"fit": {}}}}, "methods.AQE.fit", "learns nothing"),
    ],
    ids=lambda value: value if isinstance(value, str) and "." in value else None,
)
def test_bad_cross_key_values_name_the_key(changes, key, allowed):
    with pytest.raises(ValueError, match=re.escape(f"config key {key}: ")) as error:
        Plan(small(**changes))
    assert allowed in str(error.value)


def test_demo_sizes_are_the_generated_ones():
    config = validated(REPO / "configs" / "demo.yaml")
    config["experiments"]["table1_K"].append(305)  # 11 landmarks x 24 views + 40 background images = 304
    with pytest.raises(ValueError, match=re.escape("config key experiments.table1_K: 305 exceeds the 304 database")):
        Plan(config)
    config = validated(REPO / "configs" / "demo.yaml")
    config["training"]["batch_size"] = 2000  # 56 clusters x 22 images = 1232 samples of rSfM120k (one network)
    with pytest.raises(ValueError, match=re.escape("config key training.batch_size: a batch of 2000 exceeds the 1232")):
        Plan(config)


# ---------------------------------------------------------------------------------------------------------------
# registries and what derives from them


def test_registry_names_are_unique_and_slugs_unchanged():
    labels = [m.label for m in registry.METHODS]
    assert len(set(labels)) == len(labels) and len({m.slug for m in registry.METHODS}) == len(labels)
    assert len({d.name for d in registry.DATASETS}) == len(registry.DATASETS)
    # the slugs are in the paths of existing results: they must not change
    assert {m.label: m.slug for m in registry.compared_methods()} == {
        "AQE": "aqe", "AQEwD": "aqewd", "DQE": "dqe", "αQE": "alphaqe", "LAttQE": "lattqe",
        "ADBA + AQE": "adba-aqe", "ADBAwD + AQEwD": "adbawd-aqewd", "DDBA + DQE": "ddba-dqe",
        "αDBA + αQE": "alphadba-alphaqe", "LAttDBA + LAttQE": "lattdba-lattqe", "DSM": "dsm", "CRL": "crl",
        "GSS": "gss", "DFS": "dfs", "k-reciprocal": "kreciprocal", "SuperGlobal (refinement)": "superglobal",
    }  # fmt: skip


def test_methods_mapping_follows_the_registry_and_imports_lazily():
    from csa_rerank.methods import METHODS, qe

    assert list(METHODS) == [m.label for m in registry.METHODS] and len(METHODS) == len(registry.METHODS)
    assert METHODS["AQE"] is qe.aqe and "Ours" in METHODS and "XQE" not in METHODS
    with pytest.raises(KeyError):
        METHODS["XQE"]
    with pytest.raises(TypeError):
        METHODS["AQE"] = qe.aqe  # read-only
    # importing the package imports no method module (each is its own unit)
    code = "import sys, csa_rerank.methods; print(sorted(m for m in sys.modules if 'csa_rerank.methods.' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_method_function_exists():
    for entry in registry.METHODS:
        if entry.kind == registry.COMPARED:
            assert callable(entry.load()), entry.label
        assert re.fullmatch(r"csa_rerank\.methods\.\w+:\w+", entry.function), entry.label


def test_learned_and_spatial_methods_derive_from_the_registry():
    assert compare.LEARNED == {"LAttQE": "lattqe", "LAttDBA + LAttQE": "lattqe", "CRL": "crl"}
    assert compare.SPATIAL == "DSM"
    assert registry.fit_modules() == {"lattqe": "LAttQE", "crl": "CRL"}


def _enums(node):
    if isinstance(node, dict):
        yield from node.get("enum", [])
        for value in node.values():
            yield from _enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _enums(value)


def test_schema_keeps_no_list_of_dataset_or_method_names():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    names = {d.name for d in registry.DATASETS} | {m.label for m in registry.METHODS}
    assert not names & set(_enums(schema))
    assert "propertyNames" not in schema["properties"]["methods"]


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {name: Plan(validated(REPO / name)) for name in CONFIGS}


def test_paper_table5_rows_are_registry_methods_or_planned_rows(plans):
    planned = {label for plan in plans.values() for label in _labels(plan.table_layout("table5"))}
    labels = {m.label for m in registry.METHODS}
    for label in tables.PAPER["table5"]:
        assert label in labels or label in planned, label
    for entry in registry.compared_methods():  # the paper's methods have published rows, the extra ones none
        assert (entry.label in tables.PAPER["table5"]) == entry.in_paper, entry.label
    assert set(TABLE6_METHODS) <= labels


def test_every_layout_column_is_a_paper_column(plans):
    # so that every cell of the configured tables has its published value beside it
    for name, plan in plans.items():
        for table in plan.tables:
            known = set(tables.columns(table, plan.table_layout(table)["label_header"]))
            for row in plan.table_layout(table)["rows"]:
                assert set(row["cells"]) <= known, (name, table, row["label"])
