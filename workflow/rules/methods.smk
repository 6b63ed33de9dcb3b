# Compared re-ranking methods (Table 5; csa_rerank.methods, csa_rerank.compare).  Each re-ranks the first-round
# lists of a (test set, network) into a first-round-shaped file <results>/knn/{testset}/{network}~{method}.h5:
# rule evaluate_first_round gives the method's row, and the CSA rules applied to {network}~{method} give the
# "+Ours" rows.  Learned methods are fitted once per network on the training split.


rule fit_method:
    input:
        db=plan.raw_data(plan.training_set)["listing"],
        features=f"<results>/features/{plan.training_set}/{{network}}.h5",
        neighbours="<results>/neighbours/{network}.h5",
    output:
        "<results>/methods/{module}/{network}.pt",
    log:
        "<logs>/fit_method/{module}/{network}.log",
    benchmark:
        "<benchmarks>/fit_method/{module}/{network}.tsv"
    wildcard_constraints:
        module=alternatives(FIT_MODULES),
        network=alternatives(plan.networks),
    # started as soon as the training descriptors exist, so that a long fit does not end the run alone
    priority: 1
    conda:
        "../../envs/torch.yaml"
    threads: 2
    params:
        code=fit_code,
        # LAttQE's settings train the model that LAttDBA + LAttQE shares
        method=fit_method_label,
        settings=fit_settings,
    script:
        "../scripts/fit_method.py"


rule rerank_method:
    input:
        unpack(method_inputs),
    output:
        "<results>/knn/{testset}/{network}~{method}.h5",
    log:
        "<logs>/rerank_method/{testset}/{network}~{method}.log",
    benchmark:
        "<benchmarks>/rerank_method/{testset}/{network}~{method}.tsv"
    wildcard_constraints:
        network=alternatives(plan.networks),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=method_gpus,  # GSS and DSM (csa_rerank.registry)
        # per method, from the size of the job's inputs (csa_rerank.plan.resources)
        mem_mb=method_mem_mb,
        runtime=method_runtime,
    params:
        code=method_code,
        method=method_label,
        settings=method_settings,
        dsm=dsm_settings,
    script:
        "../scripts/rerank_method.py"
