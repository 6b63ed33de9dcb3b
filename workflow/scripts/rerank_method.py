"""Snakemake script: re-rank the first-round lists of a (test set, network) with a compared method."""

from csa_rerank import compare, jobs, logs

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
images = None
if snakemake.params.dsm:
    images = {
        **snakemake.params.dsm,
        "gnd": snakemake.input.gnd,
        "checkpoint": snakemake.input.get("checkpoint"),
        "body_checkpoint": snakemake.input.get("body_checkpoint"),
        "distractors": snakemake.input.get("distractor_list"),
        "use_gpu": snakemake.resources.get("gpu", 0) > 0,  # DSM's forward passes and matching
    }
compare.rerank_method(
    method=snakemake.params.method,
    params=snakemake.params.settings,
    testset_file=snakemake.input.testset,
    distractors_file=snakemake.input.get("distractors"),
    knn_file=snakemake.input.knn,
    out_path=snakemake.output[0],
    weights_file=snakemake.input.get("weights"),
    images=images,
    graph_file=snakemake.input.get("graph"),
    use_gpu=snakemake.resources.get("gpu", 0) > 0,
)
