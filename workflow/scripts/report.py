"""Snakemake script: Snakemake's report of the run (every table, figure and loss curve) as one HTML file.

``snakemake --report`` is a command-line mode, not something a job can call in-process, so this job runs it in a
subprocess: the same Snakefile and Python, this run's whole configuration (written to a temporary file, so
``--configfile``/``--config`` overrides carry over), no profile (nothing is executed) and ``--nolock`` (the
calling run holds the lock).  Its targets are this job's inputs, the tables and figures: the report then covers
every job they depend on.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from csa_rerank import logs
from csa_rerank.atomic import atomic_path

log = logs.setup(snakemake.log[0])
# written under a temporary name like every output, renamed when snakemake --report has succeeded
with (
    tempfile.TemporaryDirectory(prefix="report-config-") as tmp,
    atomic_path(snakemake.output[0], keep_extension=True) as report,
):
    config_file = Path(tmp) / "config.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(json.dumps(dict(snakemake.config))), sort_keys=False))
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", snakemake.params.snakefile,
        "--configfile", str(config_file), "--replace-workflow-config", "--workflow-profile", "none", "--nolock",
        "--report", str(report), *snakemake.input,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "SNAKEMAKE_PROFILE"}
    log.info("running %s", " ".join(command))
    sys.stderr.flush()
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0 or not report.exists():
        raise RuntimeError(f"snakemake --report failed (exit status {result.returncode}); see {snakemake.log[0]}")
log.info("wrote %s", snakemake.output[0])
