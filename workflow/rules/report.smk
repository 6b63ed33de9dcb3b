# Snakemake's report as a target: `snakemake --cores all <results>/report.html` runs what is missing, then
# `snakemake --report` in a subprocess (workflow/scripts/report.py), with this run's configuration, for every table
# and figure.  `snakemake --report <results>/report.html` after a run writes the same file without this rule.


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
