# Re-ranking of the top-K block (positions after K keep their first-round order) and revisitop evaluation.


rule rerank_csa:
    input:
        unpack(descriptor_files),
        affinity="<results>/affinity/{testset}/{network}/K{K}_L{L}.h5",
        knn="<results>/knn/{testset}/{network}.h5",
        model="<results>/models/{model}/model.pt",
    output:
        "<results>/rerank/{testset}/{network}/csa-{model}/K{K}_L{L}.h5",
    log:
        "<logs>/rerank/{testset}/{network}/csa-{model}/K{K}_L{L}.log",
    benchmark:
        "<benchmarks>/rerank/{testset}/{network}/csa-{model}/K{K}_L{L}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        code=script_code("rerank_csa.py"),
        settings=plan.config["rerank"],
        latency_queries=plan.experiments["latency_queries"],
    script:
        "../scripts/rerank_csa.py"


rule rerank_affinity_feature:
    input:
        affinity="<results>/affinity/{testset}/{network}/K{K}_L{L}.h5",
    output:
        "<results>/rerank/{testset}/{network}/affinity_feature/K{K}_L{L}.h5",
    log:
        "<logs>/rerank/{testset}/{network}/affinity_feature/K{K}_L{L}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=script_code("rerank_affinity_feature.py"),
    script:
        "../scripts/rerank_affinity_feature.py"


rule evaluate_first_round:
    input:
        knn="<results>/knn/{testset}/{network}.h5",
        gnd=testset_ground_truth,
    output:
        "<results>/eval/{testset}/{network}/first_round.json",
    log:
        "<logs>/evaluate/{testset}/{network}/first_round.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=script_code("evaluate.py"),
    script:
        "../scripts/evaluate.py"


rule evaluate_rerank:
    input:
        knn="<results>/knn/{testset}/{network}.h5",
        gnd=testset_ground_truth,
        rerank="<results>/rerank/{testset}/{network}/{reranker}/K{K}_L{L}.h5",
    output:
        "<results>/eval/{testset}/{network}/{reranker}/K{K}_L{L}.json",
    log:
        "<logs>/evaluate/{testset}/{network}/{reranker}/K{K}_L{L}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=script_code("evaluate.py"),
    script:
        "../scripts/evaluate.py"
