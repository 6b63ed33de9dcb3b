"""Snakemake script: one figure of model variants as CSV (its points) and PNG (one panel per swept parameter)."""

from csa_rerank import figures, logs

log = logs.setup(snakemake.log[0])
figure = snakemake.wildcards.figure
frame = figures.build(figure, snakemake.params.layout)
figures.write(frame, snakemake.output.csv)
figures.plot(figure, frame, snakemake.params.layout, snakemake.output.png)
log.info("wrote %s and %s (%d rows)", snakemake.output.csv, snakemake.output.png, len(frame))
