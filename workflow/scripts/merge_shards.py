"""Snakemake script: the distractors' descriptor file from its shards."""

from csa_rerank import logs, stages

log = logs.setup(snakemake.log[0])
stages.merge_shards(list(snakemake.input), snakemake.output[0], n_images=snakemake.params.n_images)
