"""Snakemake script: first-round and CSA mAP of one model on the training set's val split (supplementary Fig. 1)."""

from csa_rerank import jobs, logs, stages

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
stages.evaluate_val(
    features_file=snakemake.input.features,
    db_file=snakemake.input.db,
    model_file=snakemake.input.model,
    out_path=snakemake.output[0],
    K=int(snakemake.wildcards.K),
    L=int(snakemake.wildcards.L),
    precision=snakemake.params.settings["precision"],
    batch_size=snakemake.params.settings["batch_size"],
    onednn_graph=snakemake.params.settings["onednn_graph"],
    use_gpu=snakemake.resources.get("gpu", 0) > 0,
)
