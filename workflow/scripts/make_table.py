"""Snakemake script: one paper table as CSV and Markdown, our values beside the published ones."""

from csa_rerank import logs, tables

log = logs.setup(snakemake.log[0])
frame = tables.build(snakemake.wildcards.table, snakemake.params.layout)
tables.write(frame, snakemake.output.csv, snakemake.output.markdown)
log.info("wrote %s (%d rows)", snakemake.output.csv, len(frame))
