"""Snakemake script: generate one part of the demo benchmark (a test set, the distractors or the training set)."""

from pathlib import Path

from csa_rerank import demo, logs

log = logs.setup(snakemake.log[0])
out_dir = Path(snakemake.output.images).parent
sizes = {"seed": snakemake.params.seed, "image_size": snakemake.params.image_size, **snakemake.params.sizes}
if snakemake.rule == "generate_demo_testset":
    demo.generate_test_set(out_dir, snakemake.wildcards.dataset, **sizes)
elif snakemake.rule == "generate_demo_distractors":
    demo.generate_distractors(out_dir, **sizes)
else:
    demo.generate_training_set(out_dir, **sizes)
log.info("wrote %s", out_dir)
