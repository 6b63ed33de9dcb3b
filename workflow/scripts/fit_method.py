"""Snakemake script: fit a learned compared method (LAttQE, CRL) on the training split."""

from csa_rerank import compare, jobs, logs

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
compare.fit_method(
    method=snakemake.params.method,
    db_file=snakemake.input.db,
    features_file=snakemake.input.features,
    neighbours_file=snakemake.input.neighbours,
    params=snakemake.params.settings,
    out_path=snakemake.output[0],
)
