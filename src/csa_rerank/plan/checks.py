"""Cross-key checks of the configuration: what its schema cannot say (names defined elsewhere, in the config
itself or in :mod:`csa_rerank.registry`).  Each failure raises ``ValueError("config key <key>: ...")``, naming the
key and what it may be."""

from __future__ import annotations

from csa_rerank import registry


def config_error(key: str, message: str):
    raise ValueError(f"config key {key}: {message}")


def check_config(config: dict) -> None:
    check_own_datasets(config)
    check_datasets(config["datasets"])
    check_methods(config.get("methods", {}))
    check_networks(config)
    check_training_sets(config["experiments"])


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
