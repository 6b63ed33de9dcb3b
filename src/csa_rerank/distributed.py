"""Data-parallel CSA training with ``torchrun``: the launcher and the per-process entry point.

:func:`launch` writes the training settings to a JSON file in the run folder and starts
``python -m torch.distributed.run --standalone --nproc-per-node P -m csa_rerank.distributed <settings.json>``;
every process then joins the process group (NCCL on CUDA, gloo on the CPU) and runs
:func:`csa_rerank.stages.train_in_this_process`, whose training loop splits each global batch over the
processes (:func:`csa_rerank.training.train`).  Users with their own launcher can run the module directly::

    torchrun --nproc-per-node 4 -m csa_rerank.distributed results/models/rSfM120k/run/settings.json
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from csa_rerank.atomic import write_json

SETTINGS_NAME = "settings.json"


def launch(settings: dict, processes: int, threads_per_process: int = 1, log: Callable[[str], None] = print) -> None:
    """Run :func:`csa_rerank.stages.train_in_this_process` with ``settings`` in ``processes`` processes.

    Raises:
        RuntimeError: naming the log of the failed processes, if the distributed run fails.
    """
    run_dir = Path(settings["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_file = run_dir / SETTINGS_NAME
    write_json(settings_file, settings)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "csa_rerank.distributed",
        str(settings_file),
    ]
    log(f"starting {processes} training processes: {' '.join(command)}")
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process)}
    with subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as workers:
        for line in workers.stdout:  # passed on as it comes: one line per epoch from process 0
            log(line.rstrip())
    if workers.returncode != 0:
        raise RuntimeError(
            f"distributed training with {processes} processes failed (exit code {workers.returncode}); "
            "its output is in this job's log above. Rerun the job: it resumes from the last completed epoch."
        )


def main(settings_file: str) -> None:
    """Entry point of one ``torchrun`` process."""
    import torch
    import torch.distributed as dist

    from . import stages

    settings = json.loads(Path(settings_file).read_text())
    use_cuda = settings.get("use_gpu", True) and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    stages.prepare_job(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rank = dist.get_rank()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    try:
        if use_cuda:
            stages.torch_device_of_local_rank()
        stages.train_in_this_process(**settings)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: torchrun --nproc-per-node P -m csa_rerank.distributed <{SETTINGS_NAME}>")
    main(sys.argv[1])
