# The built-in demo benchmark (configs/demo.yaml): generated locally, deterministic from its seed, written in the
# real datasets' formats and paths so that every later rule is the one the paper run uses.  The paper
# configuration has no `demo` section, so these rules do not exist there.

if config.get("demo"):

    rule generate_demo_testset:
        output:
            images=directory("<data>/test/{dataset}/jpg"),
            gnd="<data>/test/{dataset}/gnd_{dataset}.pkl",
        log:
            "<logs>/generate_demo/{dataset}.log",
        conda:
            "../../envs/torch.yaml"
        params:
            seed=demo_seed,
            image_size=config["demo"]["image_size"],
            sizes=config["demo"]["testsets"],
        script:
            "../scripts/generate_demo.py"

    rule generate_demo_distractors:
        output:
            images=directory("<data>/revisitop1m/jpg"),
            listing="<data>/revisitop1m/revisitop1m.txt",
        log:
            "<logs>/generate_demo/distractors.log",
        conda:
            "../../envs/torch.yaml"
        params:
            seed=config["demo"]["seed"] + 100,
            image_size=config["demo"]["image_size"],
            sizes=config["demo"]["distractors"],
        script:
            "../scripts/generate_demo.py"

    rule generate_demo_trainset:
        output:
            images=directory("<data>/train/retrieval-SfM-120k/ims"),
            db="<data>/train/retrieval-SfM-120k/retrieval-SfM-120k.pkl",
        log:
            "<logs>/generate_demo/training.log",
        conda:
            "../../envs/torch.yaml"
        params:
            seed=config["demo"]["seed"] + 200,
            image_size=config["demo"]["image_size"],
            sizes=config["demo"]["training"],
        script:
            "../scripts/generate_demo.py"
