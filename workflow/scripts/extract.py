"""Snakemake script: descriptors of one dataset (or one shard of the distractors) with one network."""

from csa_rerank import jobs, logs, stages

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
stages.extract(
    kind=snakemake.params.kind,
    listing=snakemake.input.listing,
    images=snakemake.input.images,
    network_name=snakemake.wildcards.network,
    network_spec=snakemake.params.network,
    settings=snakemake.params.settings,
    out_path=snakemake.output[0],
    checkpoint=snakemake.input.get("checkpoint"),
    body_checkpoint=snakemake.input.get("body_checkpoint"),
    whitening=snakemake.input.get("whitening"),
    use_gpu=snakemake.resources.get("gpu", 0) > 0,
    shard=snakemake.params.get("shard"),
    n_images=snakemake.params.get("n_images"),
)
