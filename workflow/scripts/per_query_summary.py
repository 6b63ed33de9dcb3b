"""Snakemake script: the scatter plot and the most helped and hurt queries of one evaluation set."""

from csa_rerank import logs, per_query

log = logs.setup(snakemake.log[0])
per_query.write_summary(
    method_tables=dict(zip(snakemake.params.labels, snakemake.input, strict=True)),
    scatter_png=snakemake.output.scatter,
    help_hurt_csv=snakemake.output.help_hurt,
    title=snakemake.params.title,
)
