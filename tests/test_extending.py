"""What it takes to add a training-free method and a test set: one module and one registry entry each.

A copy of the package gets a toy method module and two lines appended to csa_rerank/registry.py (nothing else
changes: no rule, no schema, no table code); a dry run of the workflow with that copy on PYTHONPATH and configs/ci.yaml
plus the new names must plan the method's re-ranking jobs, the test set's extraction and evaluations, and the
tables' rows and columns for both.  README.md, "Extending", says the same in words.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TOY_METHOD = '''"""Toy query expansion: the first-round lists reversed (for tests/test_extending.py)."""

import numpy as np


def rerank(query: np.ndarray, db: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    return ranks[:, ::-1].copy()
'''
# the whole change to the registry: one entry per addition
REGISTRY_LINES = [
    'METHODS = (*METHODS, Method("Toy QE", "toyqe", "csa_rerank.methods.toyqe:rerank", in_paper=False))',
    'DATASETS = (*DATASETS, revisitop_test_set("toyset", "Toy"))',
]
# the plan of the copy, as the workflow builds it (common.smk): table 5's rows and every table's columns
PLAN_SCRIPT = """
import json, sys, yaml
from snakemake.utils import validate
from csa_rerank.methods import METHODS
from csa_rerank.plan import Plan
config = yaml.safe_load(open(sys.argv[1]))
validate(config, sys.argv[2])
plan = Plan(config)
layouts = {table: plan.table_layout(table) for table in plan.tables}
print(json.dumps({
    "table5_rows": [row["label"] for row in layouts["table5"]["rows"]],
    "columns": {t: sorted({c for row in layout["rows"] for c in row["cells"]}) for t, layout in layouts.items()},
    "toy_method": METHODS["Toy QE"].__module__,
}))
"""


def _extended_package(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "csa_rerank", src / "csa_rerank", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "csa_rerank" / "methods" / "toyqe.py").write_text(TOY_METHOD)
    with open(src / "csa_rerank" / "registry.py", "a") as registry:
        registry.write("\n" + "\n".join(REGISTRY_LINES) + "\n")
    return src


def _jobs(output: str) -> list[tuple[str, str, str]]:
    """(rule, output, input) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"^rule ", output, flags=re.M)[1:]:
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        jobs.append((block.split(":", 1)[0], fields.get("output", ""), fields.get("input", "")))
    return jobs


def test_a_toy_method_and_test_set_need_one_module_and_one_entry_each(tmp_path):
    src = _extended_package(tmp_path)
    config = yaml.safe_load((REPO / "configs" / "ci.yaml").read_text())
    config["datasets"]["test"].append("toyset")
    config["methods"]["Toy QE"] = {}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    work = tmp_path / "work"
    work.mkdir()

    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n",
               "--configfile", str(config_file), "--replace-workflow-config"]  # fmt: skip
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = _jobs(result.stdout)
    outputs = {(rule, output) for rule, output, _ in jobs}
    first = "demo-resnet101-gem"
    # the method re-ranks every evaluation set's first-round lists, and each is evaluated like a first round
    for testset in ("roxford5k", "toyset", "toyset+r1m"):
        assert ("rerank_method", f"results/ci/knn/{testset}/{first}~toyqe.h5") in outputs, testset
        assert ("evaluate_first_round", f"results/ci/eval/{testset}/{first}~toyqe/first_round.json") in outputs
    # the test set is generated (demo), extracted, ranked, re-ranked by CSA and evaluated, alone and with R1M
    assert ("generate_demo_testset", "data/ci/test/toyset/jpg, data/ci/test/toyset/gnd_toyset.pkl") in outputs
    assert ("extract", f"results/ci/features/toyset/{first}.h5") in outputs
    assert ("knn", f"results/ci/knn/toyset+r1m/{first}.h5") in outputs
    assert ("evaluate_rerank", f"results/ci/eval/toyset+r1m/{first}/csa-rSfM120k/K24_L16.json") in outputs
    # table 5 reads the method's evaluations on the new set
    (table5_inputs,) = [inputs for rule, output, inputs in jobs if output.startswith("results/ci/table5.csv")]
    assert f"results/ci/eval/toyset+r1m/{first}~toyqe/first_round.json" in table5_inputs.split(", ")

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    result = subprocess.run([sys.executable, "-c", PLAN_SCRIPT, str(config_file), str(schema)], env=env,
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    plan = json.loads(result.stdout)
    assert plan["table5_rows"][-1] == "Toy QE (not in the paper)" and plan["toy_method"] == "csa_rerank.methods.toyqe"
    assert {"Toy Medium", "Toy+R1M Hard"} <= set(plan["columns"]["table5"])
    assert {"Toy Medium", "Toy Hard"} <= set(plan["columns"]["table1"])
