# Snakemake's report as a target: `snakemake --cores all <results>/report.html` runs what is missing, then
# `snakemake --report` in a subprocess (workflow/scripts/report.py), with this run's configuration, for every table
# and figure.  `snakemake --report <results>/report.html` after a run writes the same file without this rule.
#
# Why a subprocess and not Snakemake's own `--report-after-run` (checked with Snakemake 9.27): that option is a
# flag of one invocation, valid only with `--report FILE`, and writes the report after that invocation's jobs.  No
# rule then produces the file, so `snakemake results/report.html` and rule `all` (which lists it, as `make demo`
# builds it) would fail with "no rule to produce", its path would be given on each command line instead of
# following the configuration's <results> pathvar (results/ or results/demo/), and it would cover whatever targets
# that invocation named, not every table and figure.  Snakemake's API (DAGApi.create_report) needs a workflow of
# its own as well, which is what the subprocess builds.  Adding `--report <file> --report-after-run` to a command
# line still works, for that command's targets.


localrules:
    report,


rule report:
    input:
        plan.report_inputs(),
    output:
        "<results>/report.html",
    log:
        "<logs>/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=script_code("report.py"),
        snakefile=workflow.main_snakefile,
    script:
        "../scripts/report.py"
