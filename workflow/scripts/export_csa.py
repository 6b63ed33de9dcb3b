"""Snakemake script: one descriptor file as the pickle the authors' CSA code reads (csa_rerank.export)."""

from csa_rerank import export, logs

log = logs.setup(snakemake.log[0])
layout = export.export(snakemake.input[0], snakemake.output[0], protocol=snakemake.params.protocol)
log.info("wrote %s (%s layout)", snakemake.output[0], layout)
