"""Running the CSA training: in this process, or data-parallel in several started with ``torchrun``.

:func:`train_in_this_process` reads the training stage's files and runs :func:`csa_rerank.training.train`, alone
or as one process of a ``torch.distributed`` job.  :func:`launch` writes the training settings to a JSON file in
the run folder and starts
``python -m torch.distributed.run --standalone --nproc-per-node P -m csa_rerank.distributed <settings.json>``;
every process then joins the process group (NCCL on CUDA, gloo on the CPU) and runs
:func:`train_in_this_process`, whose training loop splits each global batch over the processes.  Users with
their own launcher can run the module directly::

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

import numpy as np

from csa_rerank import datasets, h5io
from csa_rerank.atomic import write_json
from csa_rerank.jobs import prepare_job

SETTINGS_NAME = "settings.json"
logger = logging.getLogger("csa_rerank")


def launch(settings: dict, processes: int, threads_per_process: int = 1, log: Callable[[str], None] = print) -> None:
    """Run :func:`train_in_this_process` with ``settings`` in ``processes`` processes.

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


def train_in_this_process(
    db_file: str,
    feature_files: list[str],
    neighbour_files: list[str],
    reranker: dict,
    training: dict,
    run_dir: str,
    use_gpu: bool = True,
    identity: dict | None = None,
) -> tuple[Path, dict]:
    """The training itself, in this process (alone, or as one process of a ``torch.distributed`` job).

    ``identity`` (the code and input files the training stage runs on) is recorded in the checkpoints, which only
    a run of the same identity resumes.

    Returns the path of the trained model (of the last checkpoint, for an unfinished run) and facts for the
    summary; process 0 also writes these facts to ``run_dir/facts.json``.
    """
    import torch.distributed as dist

    from .extract import pick_device
    from .training import TrainingSamples, configs_from_settings, train

    db = datasets.load_training_db(db_file)
    clusters = np.asarray(db["train"]["cluster"])
    features = [h5io.read_descriptors(path, "train") for path in feature_files]
    neighbours = [h5io.read_array(path, "train") for path in neighbour_files]
    samples = TrainingSamples(features, neighbours, [clusters] * len(features))
    model_config, train_config = configs_from_settings(reranker, training)
    device = pick_device(use_gpu)
    if device.type == "cuda" and dist.is_initialized():
        device = torch_device_of_local_rank()
    logger.info("training %s on %d samples (%d backbones) on %s", model_config, len(samples), len(features), device)
    # Progress bars only in a single process: from torchrun workers the epoch lines are the progress report.
    distributed = dist.is_initialized()
    final = train(
        model_config,
        train_config,
        samples,
        run_dir,
        device,
        log=logger.info,
        progress=not distributed,
        identity=identity,
    )
    facts = {
        "n_samples": len(samples),
        "n_backbones": len(features),
        "n_images": int(len(clusters)),
        "n_clusters": int(len(np.unique(clusters))),
        "epochs": train_config.epochs,
        "device": str(device),
    }
    if not distributed or dist.get_rank() == 0:
        write_json(Path(run_dir) / "facts.json", facts)
    return final, facts


def torch_device_of_local_rank():
    """The CUDA device torchrun assigned to this process (``LOCAL_RANK``), made the current one."""
    import torch

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def main(settings_file: str) -> None:
    """Entry point of one ``torchrun`` process."""
    import torch
    import torch.distributed as dist

    settings = json.loads(Path(settings_file).read_text())
    use_cuda = settings.get("use_gpu", True) and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    prepare_job(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rank = dist.get_rank()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    try:
        if use_cuda:
            torch_device_of_local_rank()
        train_in_this_process(**settings)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: torchrun --nproc-per-node P -m csa_rerank.distributed <{SETTINGS_NAME}>")
    main(sys.argv[1])
