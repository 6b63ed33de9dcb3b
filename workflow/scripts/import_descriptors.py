"""Snakemake script: the descriptor file of a dataset given as descriptors (extraction skipped)."""

from csa_rerank import logs, stages

log = logs.setup(snakemake.log[0])
stages.import_descriptors(snakemake.params.kind, snakemake.input[0], snakemake.wildcards.network, snakemake.output[0])
