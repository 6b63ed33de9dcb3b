"""Snakemake script: CSA re-ranking of the top-K block, with measured per-query latency and memory."""

from csa_rerank import jobs, logs, stages

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
stages.rerank_csa(
    affinity_file=snakemake.input.affinity,
    model_file=snakemake.input.model,
    testset_file=snakemake.input.testset,
    distractors_file=snakemake.input.get("distractors"),
    knn_file=snakemake.input.knn,
    out_path=snakemake.output[0],
    precision=snakemake.params.settings["precision"],
    batch_size=snakemake.params.settings["batch_size"],
    onednn_graph=snakemake.params.settings["onednn_graph"],
    latency_queries=snakemake.params.latency_queries,
    use_gpu=snakemake.resources.get("gpu", 0) > 0,
)
