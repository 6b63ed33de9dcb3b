# Global descriptors: one job per (dataset, network); CUDA when present and allowed (resource gpu > 0).  The
# distractors (1M images for R1M) are extracted in shards of extraction.shard_size images, one job per (shard,
# network), so that a failed or killed shard reruns alone; merge_shards then copies the shards, slice by slice, into
# the one descriptor file every later rule reads.


rule extract:
    input:
        unpack(extract_inputs),
    output:
        "<results>/features/{dataset}/{network}.h5",
    log:
        "<logs>/extract/{dataset}/{network}.log",
    benchmark:
        "<benchmarks>/extract/{dataset}/{network}.tsv"
    # every later stage waits on descriptors: extract before anything else is started
    priority: 1
    conda:
        "../../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        code=script_code("extract.py"),
        kind=extract_kind,
        network=network_spec,
        settings=plan.extraction_settings,
    script:
        "../scripts/extract.py"


# a dataset given as descriptor files (datasets.own.<name>.descriptors): checked and copied, not extracted
rule import_descriptors:
    input:
        imported_descriptors,
    output:
        "<results>/features/{imported}/{network}.h5",
    log:
        "<logs>/import_descriptors/{imported}/{network}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=script_code("import_descriptors.py"),
        kind=imported_kind,
    script:
        "../scripts/import_descriptors.py"


if plan.distractors:

    rule extract_shard:
        input:
            unpack(shard_inputs),
        output:
            f"<results>/features/{plan.distractors}/{{network}}/shard{{shard}}.h5",
        log:
            f"<logs>/extract/{plan.distractors}/{{network}}/shard{{shard}}.log",
        benchmark:
            f"<benchmarks>/extract/{plan.distractors}/{{network}}/shard{{shard}}.tsv"
        wildcard_constraints:
            shard=r"\d+",
        priority: 1
        conda:
            "../../envs/torch.yaml"
        threads: 4
        resources:
            gpu=1,
        params:
            code=script_code("extract.py"),
            kind="distractors",
            network=network_spec,
            settings=plan.extraction_settings,
            shard=shard_range,
            n_images=plan.distractor_images,
        script:
            "../scripts/extract.py"

    rule merge_shards:
        input:
            distractor_shards,
        output:
            f"<results>/features/{plan.distractors}/{{network}}.h5",
        log:
            f"<logs>/merge_shards/{plan.distractors}/{{network}}.log",
        benchmark:
            f"<benchmarks>/merge_shards/{plan.distractors}/{{network}}.tsv"
        conda:
            "../../envs/torch.yaml"
        params:
            code=script_code("merge_shards.py"),
            n_images=plan.distractor_images,
        script:
            "../scripts/merge_shards.py"
