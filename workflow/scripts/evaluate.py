"""Snakemake script: revisitop evaluation of a first-round ranking, or of a re-ranking of its top-K block."""

from csa_rerank import logs, stages

log = logs.setup(snakemake.log[0])
stages.evaluate(
    snakemake.input.knn, snakemake.input.gnd, snakemake.output[0], rerank_file=snakemake.input.get("rerank")
)
