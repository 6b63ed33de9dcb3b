# CSA re-ranking (NeurIPS 2021): from images to every table and figure of the paper, and a report.
#
#   snakemake --cores all results/table5.csv              paper configuration (config.yaml)
#   snakemake --cores all results/report.html             everything, then Snakemake's HTML report
#   snakemake --cores all --configfile configs/demo.yaml --replace-workflow-config all
#                                                         built-in demo -> results/demo/
#
# --configfile takes several files, so a target goes before it or after a flag such as --replace-workflow-config
# (which makes the demo's complete configuration replace config.yaml instead of being merged over it).
#
# Paths are pathvars (<data>, <results>, <logs>, <benchmarks>) set in the config, so the demo and the paper
# runs never share a file.
from snakemake.utils import min_version

from csa_rerank.jobs import share_the_cpu

min_version("9.12")
# every job's OpenMP threads sleep while they wait instead of spinning: jobs lose little on an idle CPU and far
# less on one that other work shares (docs/benchmarks.md, "Shared CPUs")
share_the_cpu()


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/knn.smk"
include: "workflow/rules/affinity.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/rerank.smk"
include: "workflow/rules/methods.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        plan.all_targets(),
