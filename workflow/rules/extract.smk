# Global descriptors: one job per (dataset, network); CUDA when present and allowed (resource gpu > 0).


rule extract:
    input:
        unpack(extract_inputs),
    output:
        "<results>/features/{dataset}/{network}.h5",
    log:
        "<logs>/extract/{dataset}/{network}.log",
    benchmark:
        "<benchmarks>/extract/{dataset}/{network}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        kind=extract_kind,
        network=network_spec,
        settings=config["extraction"],
    script:
        "../scripts/extract.py"
