# The built-in demo benchmark (configs/demo.yaml): generated locally, deterministic from its seed, written in the
# real datasets' formats and paths so that every later rule is the one the paper run uses.  The paper
# configuration has no `demo` section, so these rules do not exist there.  The demo's test sets are in revisitop's
# layout (csa_rerank.registry.revisitop_test_set).

if config.get("demo"):
    # generated in revisitop's layout whatever the test set's name
    demo_testset = paths.dataset_files(registry.revisitop_test_set("{dataset}"))

    rule generate_demo_testset:
        output:
            images=directory(demo_testset["images"]),
            gnd=demo_testset["listing"],
        log:
            "<logs>/generate_demo/{dataset}.log",
        # the demo's own test sets only: a test set of datasets.own is the user's
        wildcard_constraints:
            dataset=alternatives(
                [t for t in plan.test_sets if t not in plan.own_datasets]
            ),
        conda:
            "../../envs/torch.yaml"
        params:
            code=script_code("generate_demo.py"),
            seed=demo_seed,
            image_size=plan.config["demo"]["image_size"],
            sizes=plan.config["demo"]["testsets"],
        script:
            "../scripts/generate_demo.py"

    if plan.distractors:

        rule generate_demo_distractors:
            output:
                images=directory(plan.raw_data(plan.distractors)["images"]),
                listing=plan.raw_data(plan.distractors)["listing"],
            log:
                "<logs>/generate_demo/distractors.log",
            conda:
                "../../envs/torch.yaml"
            params:
                code=script_code("generate_demo.py"),
                seed=plan.config["demo"]["seed"] + 100,
                image_size=plan.config["demo"]["image_size"],
                sizes=plan.config["demo"]["distractors"],
            script:
                "../scripts/generate_demo.py"

    # the registered training set (rsfm120k), as the training set or as the whitening set of a training set of
    # datasets.own: that one is the user's, in rSfM120k's layout or given as descriptors
    if plan.demo_training_set():

        rule generate_demo_trainset:
            output:
                images=directory(plan.raw_data(plan.demo_training_set())["images"]),
                db=plan.raw_data(plan.demo_training_set())["listing"],
            log:
                "<logs>/generate_demo/training.log",
            conda:
                "../../envs/torch.yaml"
            params:
                code=script_code("generate_demo.py"),
                seed=plan.config["demo"]["seed"] + 200,
                image_size=plan.config["demo"]["image_size"],
                sizes=plan.config["demo"]["training"],
            script:
                "../scripts/generate_demo.py"
