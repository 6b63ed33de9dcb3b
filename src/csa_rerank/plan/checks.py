"""Cross-key checks of the configuration: what its schema cannot say (names defined elsewhere, in the config
itself or in :mod:`csa_rerank.registry`).  Each failure raises ``ValueError("config key <key>: ...")``, naming the
key and what it may be."""

from __future__ import annotations

import ast
import importlib.util

from csa_rerank import registry


def config_error(key: str, message: str):
    raise ValueError(f"config key {key}: {message}")


def check_config(config: dict) -> None:
    check_own_datasets(config)
    check_datasets(config["datasets"])
    check_methods(config.get("methods", {}))
    check_networks(config)
    check_training_sets(config["experiments"])
    check_candidates(config)
    check_training(config)
    check_reranker(config["reranker"])
    check_method_keywords(config.get("methods", {}))


def _check_dataset(key: str, name: str, kinds: tuple[str, ...], own: dict) -> None:
    allowed = registry.dataset_names(*kinds) + [n for n, spec in own.items() if spec["kind"] in kinds]
    if name not in allowed:
        config_error(
            key,
            f"{name!r} is not a {' or '.join(kinds)} dataset of csa_rerank.registry.DATASETS or datasets.own; "
            f"allowed: {', '.join(allowed)}",
        )


def check_datasets(datasets: dict) -> None:
    own = datasets.get("own", {})
    for name in datasets["test"]:
        _check_dataset("datasets.test", name, (registry.TEST,), own)
    if datasets.get("distractors"):
        _check_dataset("datasets.distractors", datasets["distractors"], (registry.DISTRACTORS,), own)
    _check_dataset("datasets.training", datasets["training"], (registry.TRAINING,), own)
    if "whitening" in datasets:
        # a training set fits the whitening on its train split's pairs, a whitening set on its own
        _check_dataset("datasets.whitening", datasets["whitening"], (registry.TRAINING, registry.WHITENING), own)


def check_own_datasets(config: dict) -> None:
    """Own datasets: names of their own, descriptors of configured networks, no whitening fitted on descriptors."""
    datasets = config["datasets"]
    registered = {d.name for d in registry.DATASETS}
    whitening_set = datasets.get("whitening", datasets["training"])
    for name, spec in datasets.get("own", {}).items():
        if name in registered:
            config_error(f"datasets.own.{name}", f"{name!r} is a dataset of csa_rerank.registry.DATASETS already")
        for network in spec.get("descriptors", {}):
            _check_network(config["networks"], f"datasets.own.{name}.descriptors", network)
        if spec.get("descriptors") and name == datasets["training"]:
            _check_training_descriptors(config["experiments"], name, spec["descriptors"])
        fitted = [n for n, s in config["networks"].items() if s.get("post_whitening") in ("centre", "learned")]
        if spec.get("descriptors") and name == whitening_set and fitted:
            config_error(
                f"datasets.own.{name}",
                f"the post-whitening of {', '.join(fitted)} is fitted on the images of {name}, which is given as "
                "descriptors; set datasets.whitening to a dataset with images",
            )


def _check_training_descriptors(experiments: dict, name: str, descriptors: dict) -> None:
    """A training set given as descriptors has those of every network a model trains on (training_sets) and of
    the first-round network (its val split, the learned methods' fit)."""
    needed = {
        net: f"experiments.training_sets.{key}" for key, nets in experiments["training_sets"].items() for net in nets
    }
    needed.setdefault(experiments["first_round"], "experiments.first_round")
    for network, key in needed.items():
        if network not in descriptors:
            config_error(
                f"datasets.own.{name}.descriptors",
                f"no descriptor file for network {network!r}, which {key} needs (given: {', '.join(descriptors)})",
            )


def check_methods(methods: dict) -> None:
    allowed = [m.label for m in registry.compared_methods()]
    for label in methods:
        if label not in allowed:
            config_error(
                f"methods.{label}",
                f"{label!r} is not a compared method of csa_rerank.registry.METHODS; allowed: {', '.join(allowed)}",
            )


def _check_network(networks: dict, key: str, name: str) -> None:
    if name not in networks:
        config_error(key, f"network {name!r} is not defined under 'networks' (defined: {', '.join(networks)})")


def check_networks(config: dict) -> None:
    networks, experiments = config["networks"], config["experiments"]
    _check_network(networks, "experiments.first_round", experiments["first_round"])
    for training_set, nets in experiments["training_sets"].items():
        for net in nets:
            _check_network(networks, f"experiments.training_sets.{training_set}", net)
    for key in ("cross_features", "cross_features_table4"):
        for label, net in experiments.get(key, {}).items():
            _check_network(networks, f"experiments.{key}.{label}", net)
    for name, spec in networks.items():
        if spec.get("post_whitening") == "checkpoint" and not spec.get("checkpoint"):
            config_error(
                f"networks.{name}.post_whitening",
                "'checkpoint' (the precomputed Lw of a cirtorch checkpoint) needs 'checkpoint'",
            )


def check_training_sets(experiments: dict) -> None:
    default, training_sets = experiments["default_training_set"], experiments["training_sets"]
    if default not in training_sets:
        config_error(
            "experiments.default_training_set",
            f"{default!r} is not one of experiments.training_sets ({', '.join(training_sets)})",
        )


def distractor_images(config: dict) -> int | None:
    """The number of distractor images, which plans the extraction shards.

    It must be known when the DAG is built, i.e. before the list of the 1M images may exist: it is the configured
    image count (datasets.distractor_images; the demo's the number it generates), which every shard job checks
    against the list."""
    datasets = config["datasets"]
    if config.get("demo"):
        generated = config["demo"]["distractors"]["n_images"]
        if datasets.get("distractor_images", generated) != generated:
            config_error(
                "datasets.distractor_images", f"the demo generates demo.distractors.n_images = {generated} distractors"
            )
        return generated
    if datasets.get("distractors") and not datasets.get("distractor_images"):
        config_error(
            "datasets.distractor_images",
            f"the number of images of {datasets['distractors']} is needed to plan its extraction shards",
        )
    return datasets.get("distractor_images")


# ---------------------------------------------------------------------------------------------------------------
# sizes: what would otherwise fail inside a job, after hours of extraction


def database_images(config: dict, testset: str) -> int | None:
    """The database images of a test set: the demo's generated count, the registry's for the real data."""
    if config.get("demo"):
        sizes = config["demo"].get("testsets")
        return sizes and sizes["n_landmarks"] * sizes["db_views_per_landmark"] + sizes["n_background"]
    return registry.dataset(testset).images_count


def training_images(config: dict) -> int | None:
    """The images of the training set's train split, i.e. the samples of one backbone."""
    if config.get("demo"):
        sizes = config["demo"].get("training")
        return sizes and sizes["n_clusters"] * sizes["images_per_cluster"]
    return registry.dataset(config["datasets"]["training"]).images_count


def check_candidates(config: dict) -> None:
    """The K candidates and the L anchors are database images.  (L may exceed K: the anchors are the top L of the
    whole first-round list, and the paper's Table 2 has L = 1280 at K = 1024.)"""
    experiments, datasets = config["experiments"], config["datasets"]
    used = {
        "experiments.K": [experiments["K"]],
        "experiments.table1_K": experiments["table1_K"],
        "experiments.L": [experiments["L"]],
        "experiments.table2_L": experiments["table2_L"],
    }
    for testset in datasets["test"]:
        images = database_images(config, testset)
        if images is None:
            continue
        for key, values in used.items():
            if max(values) > images:
                config_error(key, f"{max(values)} exceeds the {images} database images of {testset}; at most {images}")
        if datasets.get("distractors"):  # table 6 re-ranks the sets with distractors only
            images += distractor_images(config)
            if max(experiments["table6_K"]) > images:
                config_error(
                    "experiments.table6_K",
                    f"{max(experiments['table6_K'])} exceeds the {images} database images of "
                    f"{testset}+{datasets['distractors']}; at most {images}",
                )


def check_training(config: dict) -> None:
    training, experiments = config["training"], config["experiments"]
    if training.get("warmup_epochs", 0) > training.get("epochs", 100):
        config_error(
            "training.warmup_epochs",
            f"{training['warmup_epochs']} warm-up epochs exceed the {training.get('epochs', 100)} epochs of "
            "training (training.epochs); 0 <= warmup_epochs <= epochs",
        )
    batch = training.get("batch_size", 256)
    for key in ("code_world_size", "processes"):
        if batch % training.get(key, 1):
            config_error("training.batch_size", f"{batch} is not divisible by training.{key} = {training[key]}")
    images = training_images(config)
    if images is None:
        return
    smallest = min(len(networks) for networks in experiments["training_sets"].values()) * images
    if batch > smallest:
        config_error(
            "training.batch_size",
            f"a batch of {batch} exceeds the {smallest} samples of the smallest training set "
            f"({images} training images per network); batch_size <= {smallest}",
        )
    if training.get("K_train", 512) > images:
        config_error("training.K_train", f"{training['K_train']} tokens exceed the {images} training images")


def check_reranker(reranker: dict) -> None:
    if reranker.get("hidden", 768) % reranker.get("heads", 12):
        config_error(
            "reranker.heads",
            f"{reranker.get('heads', 12)} heads do not divide the hidden size {reranker.get('hidden', 768)} "
            "(reranker.hidden); choose a divisor of it",
        )


# ---------------------------------------------------------------------------------------------------------------
# method keywords, read from the methods' source: importing the methods would import torch into every dry run


REQUIRED = object()  # the default of a keyword that has none
NOT_LITERAL = object()  # the default of a keyword whose default is an expression


def _default(node: ast.expr | None) -> object:
    if node is None:
        return REQUIRED
    try:
        return ast.literal_eval(node)
    except ValueError:
        return NOT_LITERAL


def _parameters(node: ast.FunctionDef) -> dict[str, object]:
    """Keyword -> default of a function's named parameters."""
    named = node.args.args
    defaults = [None] * (len(named) - len(node.args.defaults)) + node.args.defaults
    parameters = {arg.arg: _default(default) for arg, default in zip(named, defaults, strict=True)}
    kwonly = zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)
    return parameters | {arg.arg: _default(default) for arg, default in kwonly}


def _functions(module: str) -> tuple[dict[str, ast.FunctionDef], dict[str, dict[str, object]]]:
    """The module's top-level functions, and field -> default of its classes' annotated fields (dataclasses)."""
    tree = ast.parse(open(importlib.util.find_spec(module).origin, encoding="utf-8").read())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    fields = {
        node.name: {item.target.id: _default(item.value) for item in node.body if isinstance(item, ast.AnnAssign)}
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }
    return functions, fields


def keyword_defaults(module: str, function: str) -> dict[str, object] | None:
    """Keyword -> default (:data:`REQUIRED`, :data:`NOT_LITERAL` or the value) of every keyword ``module.function``
    accepts, following its ``**kwargs`` into the functions and dataclasses of the same module it passes them to
    (where a keyword is both, the outer default counts); None when they go anywhere else."""
    functions, fields = _functions(module)

    def keywords(name: str) -> dict[str, object] | None:
        node = functions[name]
        own = _parameters(node)
        if node.args.kwarg is None:
            return own
        forwarded: dict[str, object] = {}
        for call in ast.walk(node):
            forwards = isinstance(call, ast.Call) and any(
                k.arg is None and isinstance(k.value, ast.Name) and k.value.id == node.args.kwarg.arg
                for k in call.keywords
            )
            if not forwards:
                continue
            callee = call.func.id if isinstance(call.func, ast.Name) else None
            further = keywords(callee) if callee in functions else fields.get(callee)
            if further is None:
                return None
            forwarded |= further
        return forwarded | own

    return keywords(function)


def accepted_keywords(module: str, function: str) -> set[str] | None:
    """The keywords ``module.function`` accepts (:func:`keyword_defaults`); None when any may be valid."""
    defaults = keyword_defaults(module, function)
    return None if defaults is None else set(defaults)


def _check_keywords(key: str, settings: dict, module: str, function: str) -> None:
    accepted = accepted_keywords(module, function)
    unknown = sorted(set(settings) - (accepted or set(settings)))
    if unknown:
        config_error(
            key,
            f"{', '.join(map(repr, unknown))} is no keyword of {module}.{function}; it accepts: "
            f"{', '.join(sorted(accepted))}",
        )


def check_method_keywords(methods: dict) -> None:
    """Every key of ``methods.<label>`` is a keyword of the method's function and every key of its ``fit`` one of
    its module's ``fit``."""
    for label, settings in methods.items():
        entry = registry.method(label)
        # DSM re-ranks through rerank_with_network (csa_rerank.compare), which computes the activations first
        function = "rerank_with_network" if entry.needs_images else entry.function.partition(":")[2]
        _check_keywords(f"methods.{label}", {k: v for k, v in settings.items() if k != "fit"}, entry.module, function)
        if "fit" in settings:
            if not entry.fitted_by:
                config_error(f"methods.{label}.fit", f"{label} learns nothing: it has no fit settings")
            _check_keywords(f"methods.{label}.fit", settings["fit"], f"csa_rerank.methods.{entry.fitted_by}", "fit")
