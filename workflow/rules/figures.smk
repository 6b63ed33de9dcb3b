# The figures of model variants (Fig. 2, supplementary Figs. 1 and 2): their points as CSV, one PNG each.  Every
# point is a model trained by `train` (csa_rerank.plan.models), evaluated on the test sets by
# `rerank_csa` + `evaluate_rerank`, or on the training set's val split by `evaluate_val`.


localrules:
    figure,


rule evaluate_val:
    input:
        features=f"<results>/features/{plan.training_set}/{{network}}.h5",
        db=plan.raw_data(plan.training_set)["listing"],
        model="<results>/models/{model}/model.pt",
    output:
        f"<results>/eval/{plan.training_set}-val/{{network}}/csa-{{model}}/K{{K}}_L{{L}}.json",
    log:
        f"<logs>/evaluate/{plan.training_set}-val/{{network}}/csa-{{model}}/K{{K}}_L{{L}}.log",
    benchmark:
        f"<benchmarks>/evaluate_val/{{network}}/csa-{{model}}/K{{K}}_L{{L}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        code=script_code("evaluate_val.py"),
        settings=plan.config["rerank"],
    script:
        "../scripts/evaluate_val.py"


rule figure:
    input:
        figure_inputs,
    output:
        png=report(
            "<results>/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}", "file": "plot"},
        ),
        csv=report(
            "<results>/{figure}.csv",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}", "file": "points (CSV)"},
        ),
    log:
        "<logs>/figures/{figure}.log",
    wildcard_constraints:
        figure="|".join(plan.figures) or "no-figure-configured",
    conda:
        "../../envs/tables.yaml"
    params:
        code=script_code("make_figure.py"),
        layout=figure_layout_of,
    script:
        "../scripts/make_figure.py"
