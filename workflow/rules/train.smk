# CSA training: one job per model (training set x anchor length, and the figures' variants of the default model).
# A checkpoint after every epoch lets a killed job resume where it stopped; changing a re-ranker or training
# hyperparameter retrains (params trigger).


rule train:
    input:
        unpack(training_inputs),
    output:
        model="<results>/models/{model}/model.pt",
        summary="<results>/models/{model}/summary.json",
        log_csv="<results>/models/{model}/train_log.csv",
        curve=report(
            "<results>/models/{model}/loss.png",
            caption="../report/loss.rst",
            category="Training",
            labels={"model": "{model}"},
        ),
    log:
        "<logs>/train/{model}.log",
    benchmark:
        "<benchmarks>/train/{model}.tsv"
    priority: training_priority
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=config["training"]["processes"],
    params:
        code=script_code("train.py"),
        reranker=reranker_config,
        training=training_hyperparameters,
    script:
        "../scripts/train.py"
