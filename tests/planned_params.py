"""The params Snakemake would record for every job of a dry run, as JSON on stdout: {job's outputs: params}.

The params are serialised by Snakemake's own persistence code (``Persistence._params``, which a rerun compares
with the recorded ones), so two configurations plan the same params exactly when a finished run of one has
nothing to do under the other.  Used by tests/test_workflow.py::

    python tests/planned_params.py <Snakefile> <configfile> <working directory>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings


def planned_params(snakefile: Path, configfile: Path, workdir: Path) -> dict[str, list[str]]:
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[configfile], replace_workflow_config=True),
            snakefile=snakefile,
            workdir=workdir,
        )
        workflow_api.dag(DAGSettings(targets={"all"})).execute_workflow(pseudo_executor="dryrun")
        workflow = workflow_api._workflow  # the API exposes no finished DAG
        return {
            ",".join(sorted(map(str, job.output))) or job.rule.name: workflow.persistence._params(job)
            for job in workflow.dag.jobs
        }


if __name__ == "__main__":
    snakefile, configfile, workdir = (Path(arg).resolve() for arg in sys.argv[1:4])
    print(json.dumps(planned_params(snakefile, configfile, workdir), indent=1, sort_keys=True))
