"""Snakemake script: the neighbour graph of a test set's database, shared by the graph-reading compared methods."""

from csa_rerank import graph, jobs, logs
from csa_rerank.extract import pick_device

log = logs.setup(snakemake.log[0])
jobs.prepare_job(snakemake.threads)
near, far = snakemake.params.widths
lists = graph.build(
    snakemake.input.testset,
    snakemake.input.get("distractors"),
    near,
    far,
    memory_gb=snakemake.params.memory_gb,
    device=pick_device(snakemake.resources.get("gpu", 0) > 0),
)
graph.write(snakemake.output[0], lists)
