"""Snakemake script: the paper's Figure 3 (rule fig3) or the gallery of every query of a test set (rule gallery)."""

from csa_rerank import logs, per_query

log = logs.setup(snakemake.log[0])
settings = snakemake.params.settings
common = dict(
    first_round_file=snakemake.input.before,
    method_file=snakemake.input.after,
    gnd_file=snakemake.input.gnd,
    method=snakemake.params.method,
    protocol=settings["protocol"],
)
if snakemake.rule == "fig3":
    per_query.figure3(
        out_png=snakemake.output.png,
        out_csv=snakemake.output.csv,
        successes=settings["successes"],
        failures=settings["failures"],
        **common,
    )
else:
    per_query.gallery(out_html=snakemake.output[0], title=snakemake.params.title, **common)
