"""Snakemake script: the per-query analysis of one evaluation set (every table-5 row against the first round)."""

from csa_rerank import logs, per_query

log = logs.setup(snakemake.log[0])
rows = snakemake.params.rows  # row slug -> label, in the order of snakemake.input.after
per_query.write_analysis(
    before_file=snakemake.input.before,
    after_files={
        slug: (label, after) for (slug, label), after in zip(rows.items(), snakemake.input.after, strict=True)
    },
    gnd_file=snakemake.input.gnd,
    out={key: snakemake.output[key] for key in ("methods", "scatter", "help_hurt")},
    title=snakemake.params.title,
)
