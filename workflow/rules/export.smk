# Descriptors in the pickle layout of the authors' code (https://github.com/MCC-WH/CSA), on request:
# <results>/csa_export/ mirrors CSA's data folder (test/<dataset>/<network>.pkl, train/<network>.pkl,
# r1m/<network>.pkl), e.g.  snakemake --cores 1 <results>/csa_export/test/roxford5k/<network>.pkl
# Not part of `all`.  The same by hand: python -m csa_rerank.export <features.h5> <out.pkl>


rule export_csa:
    input:
        export_input,
    output:
        "<results>/csa_export/{layout}/{network}.pkl",
    log:
        "<logs>/export_csa/{layout}/{network}.log",
    wildcard_constraints:
        layout=alternatives(plan.export_layouts),
    conda:
        "../../envs/torch.yaml"
    params:
        code=script_code("export_csa.py"),
        protocol=4,  # as the authors' save_pickle; 5 writes R1M in constant memory (csa_rerank.export)
    script:
        "../scripts/export_csa.py"
