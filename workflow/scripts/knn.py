"""Snakemake script: whole-database first-round ranking of a test set (with distractors when it has them)."""

from csa_rerank import jobs, logs, stages

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
stages.knn(
    snakemake.input.testset,
    snakemake.input.get("distractors"),
    snakemake.output[0],
    memory_gb=snakemake.params.memory_gb,
)
