"""Own datasets in the workflow by configuration only (datasets.own): a test set in revisitop's layout under a new
name, and a test set given as descriptor files (extraction skipped); their columns in the tables carry their labels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow import REPO, planned_jobs, snakemake

from csa_rerank import safe_pickle
from csa_rerank.plan import Plan

NETWORK = "demo-resnet101-gem"  # the first-round network of configs/ci.yaml


def own_config(descriptors: Path, gnd: Path, distractors: bool = True) -> dict:
    """configs/ci.yaml with 'mybuildings' (revisitop layout) and 'mydescs' (descriptor files) as test sets."""
    config = yaml.safe_load((REPO / "configs" / "ci.yaml").read_text())
    config["datasets"]["test"] += ["mybuildings", "mydescs"]
    config["datasets"]["own"] = {
        "mybuildings": {"kind": "test", "label": "MyB"},
        "mydescs": {"kind": "test", "label": "MyD", "descriptors": {NETWORK: str(descriptors)}, "listing": str(gnd)},
    }
    if not distractors:
        config["datasets"]["distractors"] = None
        config["methods"].pop("DSM")  # keeps the run short; DSM's column rule is checked by the plan test
    return config


def test_plan_of_own_test_sets():
    plan = Plan(own_config(Path("descs.h5"), Path("gnd.pkl")))
    assert plan.raw_data("mybuildings") == {
        "images": "<data>/test/mybuildings/jpg",
        "listing": "<data>/test/mybuildings/gnd_mybuildings.pkl",
    }
    assert plan.raw_data("mydescs") == {"listing": "gnd.pkl"} and plan.imported == ["mydescs"]
    assert plan.imported_descriptors("mydescs", NETWORK) == "descs.h5"
    rows = {row["label"]: row["cells"] for row in plan.table_layout("table5")["rows"]}
    for label in ("R-GeM(No re-ranking)", "AQE", "Ours(rSfM120k)", "GSS+Ours(rSfM120k)"):
        assert {"MyB Medium", "MyD Hard", "MyD+R1M Medium"} <= set(rows[label]), label
    assert "MyB Medium" in rows["DSM"] and "MyD Medium" not in rows["DSM"]  # DSM needs the images
    assert (
        rows["Ours(rSfM120k)"]["MyD Medium"]["file"]
        == "<results>/eval/mydescs/demo-resnet101-gem/csa-rSfM120k/K24_L16.json"
    )
    # the cross-feature tables use networks mydescs has no descriptors of
    assert not any("MyD" in column for row in plan.table_layout("supp_table1")["rows"] for column in row["cells"])
    assert "<results>/gallery/mydescs.html" not in plan.report_inputs()


def test_own_dataset_errors_name_the_key():
    config = own_config(Path("d.h5"), Path("g.pkl"))
    config["datasets"]["own"]["mydescs"]["descriptors"] = {"no-such-net": "d.h5"}
    with pytest.raises(ValueError, match="config key datasets.own.mydescs.descriptors: network 'no-such-net'"):
        Plan(config)
    config = own_config(Path("d.h5"), Path("g.pkl"))
    config["datasets"]["test"].append("unknown")
    with pytest.raises(ValueError, match="datasets.test: 'unknown' is not a test dataset"):
        Plan(config)


def _own_data(folder: Path, data: Path) -> tuple[Path, Path]:
    """'mybuildings' under <data> (an empty stand-in for the dry run) and a descriptor file with its gnd."""
    (data / "test" / "mybuildings" / "jpg").mkdir(parents=True)
    safe_pickle.dump({"imlist": [], "qimlist": [], "gnd": []}, data / "test" / "mybuildings" / "gnd_mybuildings.pkl")
    with h5py.File(folder / "descs.h5", "w") as handle:
        handle["query"], handle["db"] = np.eye(2, 8, dtype=np.float32), np.eye(8, dtype=np.float32)
    safe_pickle.dump({"imlist": [], "qimlist": [], "gnd": []}, folder / "gnd.pkl")
    return folder / "descs.h5", folder / "gnd.pkl"


def test_dry_run_with_own_test_sets(tmp_path):
    descriptors, gnd = _own_data(tmp_path, tmp_path / "data" / "ci")
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(own_config(descriptors, gnd)))
    result = snakemake(["-n", "--replace-workflow-config", "--configfile", str(tmp_path / "own.yaml")], tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = planned_jobs(result.stdout)
    assert jobs["import_descriptors"] == 1  # mydescs, with the first-round network
    # 2 demo test sets + mybuildings with the first-round network, the training set with three: no mydescs
    assert jobs["extract"] == 6 and jobs["generate_demo_testset"] == 2
    assert "features/mydescs/demo-resnet101-gem.h5" in result.stdout
    assert "results/ci/knn/mydescs+r1m/demo-resnet101-gem.h5" in result.stdout


@pytest.mark.e2e
def test_own_test_sets_run_through_the_workflow(tmp_path, lopq_descriptors, roxford_gnd_path):
    """A copy of the demo's roxford5k renamed 'mybuildings', and the real ROxf descriptors (128-d) as 'mydescs'
    (without distractors, whose demo descriptors are 2048-d): both columns filled in tables 1, 3 and 5."""
    query, db = lopq_descriptors
    with h5py.File(tmp_path / "roxf_lopq128.h5", "w") as handle:
        handle["query"], handle["db"] = query, db
    config = own_config(tmp_path / "roxf_lopq128.h5", roxford_gnd_path, distractors=False)
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(config))
    config_args = ["--replace-workflow-config", "--configfile", str(tmp_path / "own.yaml")]  # after the targets
    demo_gnd = "data/ci/test/roxford5k/gnd_roxford5k.pkl"
    result = snakemake(
        ["--cores", "2", demo_gnd, *config_args], tmp_path
    )  # the demo test set 'mybuildings' is a copy of
    assert result.returncode == 0, result.stderr[-3000:]
    mine = tmp_path / "data" / "ci" / "test" / "mybuildings"
    shutil.copytree(tmp_path / "data" / "ci" / "test" / "roxford5k", mine)
    (mine / "gnd_roxford5k.pkl").rename(mine / "gnd_mybuildings.pkl")
    tables = ["results/ci/table1.csv", "results/ci/table3.csv", "results/ci/table5.csv"]
    result = snakemake(["--cores", "2", *tables, *config_args], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table5 = pd.read_csv(tmp_path / "results" / "ci" / "table5.csv").set_index("Method")
    print("\n" + table5.filter(regex="Medium$").to_string())
    for column in ("ROxf Medium", "MyB Medium", "MyD Medium"):
        assert table5[column].notna().all(), column
    # the renamed copy is the same test set: the same numbers as its original
    assert table5["MyB Medium"].equals(table5["ROxf Medium"])
    # the first round of the real descriptors: the mAP of ../shared/data/README.md
    assert table5.loc["R-GeM(No re-ranking)", "MyD Medium"] == pytest.approx(21.13, abs=0.01)


def test_imported_descriptors_are_checked(tmp_path):
    from csa_rerank import stages

    db = np.eye(8, dtype=np.float32)
    db[6] *= 2
    with h5py.File(tmp_path / "descs.h5", "w") as handle:
        handle["query"], handle["db"] = np.eye(2, 8, dtype=np.float32), db
    out = tmp_path / "features.h5"
    with pytest.raises(ValueError, match=r"descs\.h5:db: row 6 has L2 norm 2, not 1"):
        stages.import_descriptors("test", str(tmp_path / "descs.h5"), NETWORK, str(out))
    assert not out.exists()
    db[6] /= 2
    with h5py.File(tmp_path / "descs.h5", "a") as handle:
        handle["db"][...] = db
    stages.import_descriptors("test", str(tmp_path / "descs.h5"), NETWORK, str(out))
    with h5py.File(out) as handle:
        assert np.array_equal(handle["db"][()], db) and handle.attrs["network"] == NETWORK
