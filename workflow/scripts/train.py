"""Snakemake script: train one CSA re-ranker (resumes from the last epoch checkpoint of an interrupted run)."""

from csa_rerank import jobs, logs, stages

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
stages.train(
    db_file=snakemake.input.db,
    feature_files=list(snakemake.input.features),
    neighbour_files=list(snakemake.input.neighbours),
    reranker=snakemake.params.reranker,
    training=snakemake.params.training,
    model_path=snakemake.output.model,
    summary_path=snakemake.output.summary,
    log_csv=snakemake.output.log_csv,
    curve_png=snakemake.output.curve,
    use_gpu=snakemake.resources.get("gpu", 0) > 0,
    # Read from the config, not a param: the number of processes does not change the result, so changing it
    # must not retrain.
    processes=snakemake.config["training"]["processes"],
    threads=snakemake.threads,
    code=snakemake.params.code,
)
