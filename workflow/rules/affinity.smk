# Affinity sequences (Eq. 1) of every query for one (K, L): [Q, K+1, L], chunked per query.


rule affinity:
    input:
        unpack(descriptor_files),
        knn="<results>/knn/{testset}/{network}.h5",
    output:
        "<results>/affinity/{testset}/{network}/K{K}_L{L}.h5",
    log:
        "<logs>/affinity/{testset}/{network}/K{K}_L{L}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        code=script_code("affinity.py"),
    script:
        "../scripts/affinity.py"
