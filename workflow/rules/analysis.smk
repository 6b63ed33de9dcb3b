# What re-ranking changed, query by query (csa_rerank.per_query, csa_rerank.plan.analysis): per-query AP and P@k of
# every table-5 row against the first round, their scatter plot and the most helped and hurt queries per set, the
# paper's Figure 3 and a gallery of every query.  All read the evaluation files, which hold per-query results.


localrules:
    per_query,


# one job per evaluation set: a CSV per table-5 row, the scatter plot and the most helped and hurt queries
rule per_query:
    input:
        unpack(per_query_inputs),
    output:
        methods=directory("<results>/per_query/{testset}/methods"),
        scatter=report(
            "<results>/per_query/{testset}/scatter.png",
            caption="../report/per_query.rst",
            category="Per-query analysis",
            labels={"set": "{testset}", "file": "AP after vs before"},
        ),
        help_hurt=report(
            "<results>/per_query/{testset}/help_hurt.csv",
            caption="../report/per_query.rst",
            category="Per-query analysis",
            labels={"set": "{testset}", "file": "most helped and hurt queries"},
        ),
    log:
        "<logs>/per_query/{testset}.log",
    conda:
        "../../envs/tables.yaml"
    params:
        code=script_code("per_query.py"),
        rows=per_query_rows,
        title=lambda wildcards: f"Per-query AP, {wildcards.testset}: every method against the first round",
    script:
        "../scripts/per_query.py"


rule fig3:
    input:
        unpack(fig3_inputs),
    output:
        png=report(
            "<results>/fig3.png",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"figure": "fig3", "file": "plot"},
        ),
        csv=report(
            "<results>/fig3.csv",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"figure": "fig3", "file": "queries (CSV)"},
        ),
    log:
        "<logs>/figures/fig3.log",
    conda:
        "../../envs/tables.yaml"
    params:
        code=script_code("qualitative.py"),
        settings=plan.fig3,
        method=plan.fig3_method(),
    script:
        "../scripts/qualitative.py"


rule gallery:
    input:
        unpack(gallery_inputs),
    output:
        report(
            "<results>/gallery/{testset}.html",
            caption="../report/gallery.rst",
            category="Per-query analysis",
            labels={"set": "{testset}", "file": "gallery"},
        ),
    log:
        "<logs>/gallery/{testset}.log",
    conda:
        "../../envs/tables.yaml"
    params:
        code=script_code("qualitative.py"),
        settings=plan.fig3,
        method=plan.fig3_method(),
        title=lambda wildcards: f"{wildcards.testset}: first round and {plan.fig3_method()}, every query",
    script:
        "../scripts/qualitative.py"
