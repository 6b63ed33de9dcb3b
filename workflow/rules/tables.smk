# The paper's tables as CSV (plus a Markdown rendering), each with the published values beside ours.


localrules:
    table,


rule table:
    input:
        table_inputs,
    output:
        csv=report(
            "<results>/{table}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "file": "CSV"},
        ),
        markdown=report(
            "<results>/{table}.md",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "file": "Markdown"},
        ),
    log:
        "<logs>/tables/{table}.log",
    wildcard_constraints:
        table="|".join(plan.tables),
    conda:
        "../../envs/tables.yaml"
    params:
        code=script_code("make_table.py"),
        layout=table_layout_of,
    script:
        "../scripts/make_table.py"
