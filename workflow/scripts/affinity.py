"""Snakemake script: affinity sequences of a test set's queries for one (K, L)."""

from csa_rerank import jobs, logs, stages

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
stages.affinity(
    snakemake.input.testset,
    snakemake.input.get("distractors"),
    snakemake.input.knn,
    K=int(snakemake.wildcards.K),
    L=int(snakemake.wildcards.L),
    out_path=snakemake.output[0],
)
