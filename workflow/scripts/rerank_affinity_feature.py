"""Snakemake script: the training-free "Affinity Feature" re-ranking (cosine of raw affinity vectors)."""

from csa_rerank import logs, stages

log = logs.setup(snakemake.log[0])
stages.rerank_affinity_feature(snakemake.input.affinity, snakemake.output[0])
