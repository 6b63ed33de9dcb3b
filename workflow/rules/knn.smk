# First-round rankings: whole-database rankings of the test queries, top-k neighbour lists of the training
# images (the image itself first), and the neighbour graph of each test database that the graph-reading compared
# methods share (csa_rerank.graph; on the GPU when the job has one).


rule knn:
    input:
        unpack(descriptor_files),
    output:
        "<results>/knn/{testset}/{network}.h5",
    log:
        "<logs>/knn/{testset}/{network}.log",
    benchmark:
        "<benchmarks>/knn/{testset}/{network}.tsv"
    wildcard_constraints:
        network=alternatives(plan.networks),  # {network}~{method} lists come from rule rerank_method
    conda:
        "../../envs/torch.yaml"
    threads: 2
    params:
        code=script_code("knn.py"),
        memory_gb=plan.config["knn"]["memory_gb"],
    script:
        "../scripts/knn.py"


rule train_neighbours:
    input:
        f"<results>/features/{plan.training_set}/{{network}}.h5",
    output:
        "<results>/neighbours/{network}.h5",
    log:
        "<logs>/train_neighbours/{network}.log",
    benchmark:
        "<benchmarks>/train_neighbours/{network}.tsv"
    # the trainings, the longest jobs, wait on it
    priority: 1
    conda:
        "../../envs/torch.yaml"
    threads: 2
    params:
        code=script_code("train_neighbours.py"),
        k=plan.train_topk,
        memory_gb=plan.config["knn"]["memory_gb"],
    script:
        "../scripts/train_neighbours.py"


rule db_graph:
    input:
        unpack(descriptor_files),
    output:
        "<results>/graph/{testset}/{network}.h5",
    log:
        "<logs>/db_graph/{testset}/{network}.log",
    benchmark:
        "<benchmarks>/db_graph/{testset}/{network}.tsv"
    wildcard_constraints:
        network=alternatives(plan.networks),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        code=script_code("db_graph.py"),
        widths=plan.graph_widths,
        memory_gb=plan.config["knn"]["memory_gb"],
    script:
        "../scripts/db_graph.py"
