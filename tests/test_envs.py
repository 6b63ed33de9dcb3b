"""The conda environments of the rules (envs/*.yaml, used with ``--sdm conda``) against the project's packaging.

No environment is created here (that needs conda and the network): the files are checked for what drifts
silently — a rule naming a missing file, a channel that stopped publishing (``pytorch``/``nvidia`` ended with
PyTorch 2.5, https://github.com/pytorch/pytorch/issues/138506), and minimum versions or a Python that no longer
match pyproject.toml (or the Snakefile's ``min_version``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
# conda-forge names of the PyPI distributions of pyproject.toml, where they differ
CONDA_NAMES = {"torch": ("pytorch", "pytorch-gpu", "pytorch-cpu")}


def _pyproject_minimums() -> dict[str, str]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {
        m.group(1).lower(): m.group(2) for m in (re.match(r"([\w.-]+)\s*>=\s*([\w.]+)", d) for d in dependencies) if m
    }


def _conda_minimums(env: dict) -> dict[str, str]:
    specs = [spec for spec in env["dependencies"] if isinstance(spec, str)]
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"([\w.-]+)\s*>=\s*([\w.]+)", s) for s in specs) if m}


def test_every_conda_directive_names_an_environment_file():
    rule_files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    named = {
        (path.parent / match).resolve()
        for path in rule_files
        for match in re.findall(r"conda:\s*\n\s*\"([^\"]+)\"", path.read_text())
    }
    assert named, "no rule names a conda environment"
    assert named <= {env.resolve() for env in ENVS}, named


@pytest.mark.parametrize("path", ENVS, ids=lambda path: path.name)
def test_environment_uses_maintained_channels_and_the_projects_minimums(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"][0] == "conda-forge" and set(env["channels"]) <= {"conda-forge", "bioconda"}
    names = {re.split(r"[<>=!\s]", spec, maxsplit=1)[0] for spec in env["dependencies"] if isinstance(spec, str)}
    assert not names & {"pytorch-cuda", "cudatoolkit", "cpuonly"}, "packages of the retired pytorch/nvidia channels"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    python = next(spec for spec in env["dependencies"] if isinstance(spec, str) and spec.startswith("python="))
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, requires.removeprefix(">=").split(".")))
    pip = next(spec["pip"] for spec in env["dependencies"] if isinstance(spec, dict))
    assert "-e ../" in pip  # the project itself, from the checkout
    project, conda = _pyproject_minimums(), _conda_minimums(env)
    for package, minimum in project.items():
        for name in CONDA_NAMES.get(package, (package,)):
            if name in conda:
                assert conda[name] == minimum, (
                    f"{path.name}: {name}>={conda[name]}, pyproject.toml: {package}>={minimum}"
                )


def test_torch_environment_takes_pytorch_from_conda_forge():
    env = yaml.safe_load((REPO / "envs" / "torch.yaml").read_text())
    names = {re.split(r"[<>=!\s]", spec, maxsplit=1)[0] for spec in env["dependencies"] if isinstance(spec, str)}
    assert env["channels"] == ["conda-forge"]
    assert {"pytorch-gpu", "torchvision"} <= names


def test_snakefile_min_version_is_the_packages_minimum():
    minimum = re.search(r'min_version\("([\d.]+)"\)', (REPO / "Snakefile").read_text()).group(1)
    assert _pyproject_minimums()["snakemake"] == minimum
