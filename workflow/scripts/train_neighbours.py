"""Snakemake script: top-k neighbour lists of the training images (each image first in its own list)."""

from csa_rerank import jobs, logs, stages

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
stages.train_neighbours(
    snakemake.input[0], snakemake.output[0], k=snakemake.params.k, memory_gb=snakemake.params.memory_gb
)
