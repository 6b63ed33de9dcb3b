"""Snakemake script: per-query AP and P@k of one table-5 row on one evaluation set, before and after re-ranking."""

from csa_rerank import logs, per_query

log = logs.setup(snakemake.log[0])
per_query.write_method_table(
    before_file=snakemake.input.before,
    after_file=snakemake.input.after,
    gnd_file=snakemake.input.gnd,
    out_csv=snakemake.output[0],
)
