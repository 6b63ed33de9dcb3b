# Configuration validation, the names every rule shares, and the input functions.  No rules here.
import re

from snakemake.utils import validate

from csa_rerank import download

validate(config, schema="../schemas/config.schema.yaml")

DATASETS = config["datasets"]
TESTSETS = DATASETS["test"]
DISTRACTORS = DATASETS.get("distractors")
TRAINSET = DATASETS["training"]
# The dataset whose descriptors fit the post-whitening (centre, learned) of the networks that have one: the
# training set (pairs: its train split's qidxs/pidxs) or cirtorch's whitening set (retrieval-SfM-120k-whiten.pkl).
WHITENING_SET = DATASETS.get("whitening", TRAINSET)
NETWORKS = config["networks"]
EXPERIMENTS = config["experiments"]
TRAINING_SETS = EXPERIMENTS["training_sets"]
DEFAULT_TRAINING_SET = EXPERIMENTS["default_training_set"]
CROSS_FEATURES = EXPERIMENTS.get("cross_features", {})
# Table 4 shows the whitened features of supplementary table 1 under labels without "-W"; its own rows if set.
CROSS_FEATURES_TABLE4 = EXPERIMENTS.get("cross_features_table4") or CROSS_FEATURES
# Extraction settings that change descriptors (rerun triggers); the shard size only changes how jobs are cut.
EXTRACTION_SETTINGS = {
    key: value for key, value in config["extraction"].items() if key != "shard_size"
}
TABLES = ["table1", "table2", "table3", "table4", "table5", "table6", "supp_table1"]
# What the download rules fetch (workflow/rules/download.smk); None for the demo, which generates its data.
DOWNLOADS = (
    download.plan_downloads(config["downloads"])
    if "downloads" in config and not config.get("demo")
    else None
)


def _config_error(key, message):
    raise ValueError(f"config key {key}: {message}")


def _check_network(key, name):
    if name not in NETWORKS:
        _config_error(
            key,
            f"network {name!r} is not defined under 'networks' (defined: {', '.join(NETWORKS)})",
        )


_check_network("experiments.first_round", EXPERIMENTS["first_round"])
for _set, _nets in TRAINING_SETS.items():
    for _net in _nets:
        _check_network(f"experiments.training_sets.{_set}", _net)
for _label, _net in CROSS_FEATURES.items():
    _check_network(f"experiments.cross_features.{_label}", _net)
for _label, _net in EXPERIMENTS.get("cross_features_table4", {}).items():
    _check_network(f"experiments.cross_features_table4.{_label}", _net)
for _name, _spec in NETWORKS.items():
    if _spec.get("post_whitening") == "checkpoint" and not _spec.get("checkpoint"):
        _config_error(
            f"networks.{_name}.post_whitening",
            "'checkpoint' (the precomputed Lw of a cirtorch checkpoint) needs 'checkpoint'",
        )
if DEFAULT_TRAINING_SET not in TRAINING_SETS:
    _config_error(
        "experiments.default_training_set",
        f"{DEFAULT_TRAINING_SET!r} is not one of experiments.training_sets ({', '.join(TRAINING_SETS)})",
    )


def with_distractors(testset):
    return f"{testset}+{DISTRACTORS}"


# Distractor extraction is cut into shards of extraction.shard_size images, one job each, merged into one file.
# The number of shards must be known when the DAG is built, i.e. before the list of the 1M images may exist: it
# follows from the configured image count (datasets.distractor_images; the demo's from the number it generates),
# which every shard job checks against the list.
if config.get("demo"):
    DISTRACTOR_IMAGES = config["demo"]["distractors"]["n_images"]
    if DATASETS.get("distractor_images", DISTRACTOR_IMAGES) != DISTRACTOR_IMAGES:
        _config_error(
            "datasets.distractor_images",
            f"the demo generates demo.distractors.n_images = {DISTRACTOR_IMAGES} distractors",
        )
else:
    DISTRACTOR_IMAGES = DATASETS.get("distractor_images")
if DISTRACTORS and not DISTRACTOR_IMAGES:
    _config_error(
        "datasets.distractor_images",
        f"the number of images of {DISTRACTORS} is needed to plan its extraction shards",
    )
SHARD_SIZE = config["extraction"]["shard_size"]
N_SHARDS = -(-DISTRACTOR_IMAGES // SHARD_SIZE) if DISTRACTORS else 0


# Evaluation sets: each test set alone and, with distractors configured, with them appended to its database.
EVAL_SETS = TESTSETS + ([with_distractors(t) for t in TESTSETS] if DISTRACTORS else [])

# Re-ranking models: one per training set, plus the anchor-length variants of table 2 (the input projection of
# the model is L -> d, so every L needs its own model).
MODELS = {
    name: {"training_set": name, "anchors": EXPERIMENTS["L"]} for name in TRAINING_SETS
}
for _l in EXPERIMENTS["table2_L"]:
    if _l != EXPERIMENTS["L"]:
        MODELS[f"{DEFAULT_TRAINING_SET}-L{_l}"] = {
            "training_set": DEFAULT_TRAINING_SET,
            "anchors": _l,
        }

# Neighbours kept per training image: enough for the longest token list and the longest anchor list.
TRAIN_TOPK = max(
    [config["training"]["K_train"]] + [m["anchors"] for m in MODELS.values()]
)


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    # the distractors are extracted in shards (rules extract_shard, merge_shards), every other dataset by `extract`
    dataset=_alternatives(TESTSETS + list({TRAINSET, WHITENING_SET})),
    testset=_alternatives(EVAL_SETS),
    network=_alternatives(NETWORKS),
    model=_alternatives(MODELS),
    reranker=f"affinity_feature|csa-({_alternatives(MODELS)})",
    K=r"\d+",
    L=r"\d+",


def dataset_kind(dataset):
    if dataset in TESTSETS:
        return "test"
    if dataset == DISTRACTORS:
        return "distractors"
    if dataset == TRAINSET:
        return "training"
    return "whitening"


def raw_data(wildcards):
    """The image folder and the list/ground-truth file of a dataset, in cirtorch/revisitop layout."""
    return raw_data_of(wildcards.dataset)


def raw_data_of(dataset):
    kind = dataset_kind(dataset)
    if kind == "test":
        root = f"<data>/test/{dataset}"
        return {"images": f"{root}/jpg", "listing": f"{root}/gnd_{dataset}.pkl"}
    if kind == "distractors":
        return {
            "images": "<data>/revisitop1m/jpg",
            "listing": "<data>/revisitop1m/revisitop1m.txt",
        }
    root = "<data>/train/retrieval-SfM-120k"
    listing = (
        "retrieval-SfM-120k-whiten.pkl"
        if kind == "whitening"
        else "retrieval-SfM-120k.pkl"
    )
    return {"images": f"{root}/ims", "listing": f"{root}/{listing}"}


def unpacked_archives(wildcards):
    """The unpacked archives that make up one downloaded image folder."""
    folder = wildcards.image_folder
    return [
        f"<data>/{folder}.download/{archive}.unpacked"
        for archive in DOWNLOADS.image_folders[folder].archives
    ]


def extract_inputs(wildcards):
    return extract_inputs_of(wildcards.dataset, wildcards.network)


def extract_inputs_of(dataset, network):
    inputs = raw_data_of(dataset)
    spec = NETWORKS[network]
    for key in ("checkpoint", "body_checkpoint"):
        if spec.get(key):
            inputs[key] = spec[key]
    if (
        spec.get("post_whitening", "none") in ("centre", "learned")
        and dataset != WHITENING_SET
    ):
        # fitted by the whitening set's extraction job, stored in its descriptor file
        inputs["whitening"] = f"<results>/features/{WHITENING_SET}/{network}.h5"
    return inputs


def shard_inputs(wildcards):
    return extract_inputs_of(DISTRACTORS, wildcards.network)


def shard_range(wildcards):
    """Rows [start, stop) of the distractor list that shard {shard} extracts."""
    shard = int(wildcards.shard)
    if shard >= N_SHARDS:
        raise ValueError(f"shard {shard} does not exist: {N_SHARDS} shards")
    return [shard * SHARD_SIZE, min((shard + 1) * SHARD_SIZE, DISTRACTOR_IMAGES)]


def distractor_shards(wildcards):
    return [
        f"<results>/features/{DISTRACTORS}/{wildcards.network}/shard{i}.h5"
        for i in range(N_SHARDS)
    ]


# Descriptor files in the layout of the authors' code (csa_rerank.export): CSA's data folder -> our dataset.
EXPORT_LAYOUTS = {f"test/{t}": t for t in TESTSETS} | {"train": TRAINSET}
if DISTRACTORS:
    EXPORT_LAYOUTS["r1m"] = DISTRACTORS


def export_input(wildcards):
    dataset = EXPORT_LAYOUTS[wildcards.layout]
    return f"<results>/features/{dataset}/{wildcards.network}.h5"


def base_testset(testset):
    return testset.split("+")[0]


def ground_truth(testset):
    name = base_testset(testset)
    return f"<data>/test/{name}/gnd_{name}.pkl"


def descriptor_files(wildcards):
    """Descriptors of a test set's database and queries, then of the distractors when the set includes them."""
    files = {
        "testset": f"<results>/features/{base_testset(wildcards.testset)}/{wildcards.network}.h5"
    }
    if "+" in wildcards.testset:
        files["distractors"] = (
            f"<results>/features/{DISTRACTORS}/{wildcards.network}.h5"
        )
    return files


def training_inputs(wildcards):
    networks = TRAINING_SETS[MODELS[wildcards.model]["training_set"]]
    return {
        "db": "<data>/train/retrieval-SfM-120k/retrieval-SfM-120k.pkl",
        "features": [f"<results>/features/{TRAINSET}/{net}.h5" for net in networks],
        "neighbours": [f"<results>/neighbours/{net}.h5" for net in networks],
    }


def reranker_config(wildcards):
    return {**config["reranker"], "anchors": MODELS[wildcards.model]["anchors"]}


def training_hyperparameters():
    """config["training"] without its process count, which does not change the result (no rerun trigger)."""
    return {
        key: value for key, value in config["training"].items() if key != "processes"
    }


def evaluation(testset, network, reranker=None, K=None, L=None):
    """Path of the evaluation JSON of one (test set, network, re-ranker, K, L)."""
    if reranker is None:
        return f"<results>/eval/{testset}/{network}/first_round.json"
    return f"<results>/eval/{testset}/{network}/{reranker}/K{K}_L{L}.json"


def rerank_file(wildcards):
    return f"<results>/rerank/{wildcards.testset}/{wildcards.network}/{wildcards.reranker}/K{wildcards.K}_L{wildcards.L}.h5"


def all_targets():
    return [f"<results>/{table}.csv" for table in TABLES]


# ---------------------------------------------------------------------------------------------------------------
# Table layouts: which evaluation file and which value fills each cell.  Row labels and column headers are the
# paper's; csa_rerank.tables adds the published values beside them.
SET_LABELS = {"roxford5k": "ROxf", "rparis6k": "RPar", "r1m": "R1M"}
PROTOCOL_LABELS = {"medium": "Medium", "hard": "Hard"}
FIRST_ROUND_LABEL = "R-GeM"


def set_label(testset):
    return "+".join(SET_LABELS[part] for part in testset.split("+"))


def _map_cells(sets, reranker=None, K=None, L=None, network=None):
    """Cells '<set> <protocol>' -> (evaluation file, [protocol, 'mAP']) for the given sets, Medium then Hard."""
    network = network or EXPERIMENTS["first_round"]
    cells = {}
    for protocol, protocol_label in PROTOCOL_LABELS.items():
        for testset in sets:
            cells[f"{set_label(testset)} {protocol_label}"] = {
                "file": evaluation(testset, network, reranker, K, L),
                "key": [protocol, "mAP"],
            }
    return cells


def _csa(training_set_or_model):
    return f"csa-{training_set_or_model}"


def _table_layout(table):
    """The rows of a paper table for the configured experiments (rows that cannot be computed are left out)."""
    K, L = EXPERIMENTS["K"], EXPERIMENTS["L"]
    default = DEFAULT_TRAINING_SET
    rows = []
    if table in ("table1", "table2"):
        rows.append({"label": FIRST_ROUND_LABEL, "cells": _map_cells(TESTSETS)})
        if table == "table1":
            rows[0]["text"] = {"Re-ranking latency (ms)": "0.0"}
            for k in EXPERIMENTS["table1_K"]:
                cells = _map_cells(TESTSETS, _csa(default), k, L)
                cells["Re-ranking latency (ms)"] = {
                    "file": evaluation(
                        TESTSETS[0], EXPERIMENTS["first_round"], _csa(default), k, L
                    ),
                    "key": ["latency_ms"],
                }
                rows.append({"label": f"R-GeM+Ours(K={k})", "cells": cells})
        else:
            for l in EXPERIMENTS["table2_L"]:
                model = default if l == L else f"{default}-L{l}"
                rows.append(
                    {
                        "label": f"R-GeM+Ours(L={l})",
                        "cells": _map_cells(TESTSETS, _csa(model), K, l),
                    }
                )
        return {"label_header": "Method", "rows": rows}
    if table == "table3":
        for name in TRAINING_SETS:
            cells = _map_cells(TESTSETS, _csa(name), K, L)
            cells["Training nums"] = {
                "file": f"<results>/models/{name}/summary.json",
                "key": ["n_samples"],
            }
            rows.append({"label": name, "cells": cells})
        return {"label_header": "Training Dataset", "rows": rows}
    if table in ("table4", "supp_table1"):
        features = CROSS_FEATURES_TABLE4 if table == "table4" else CROSS_FEATURES
        for label, network in features.items():
            rows.append(
                {
                    "label": label,
                    "cells": _map_cells(TESTSETS, network=network),
                    "text": {"Training feature": "-"},
                }
            )
            rows.append(
                {
                    "label": f"{label}+Ours",
                    "cells": _map_cells(TESTSETS, _csa(default), K, L, network=network),
                    "text": {"Training feature": FIRST_ROUND_LABEL},
                }
            )
        return {"label_header": "Method", "rows": rows}
    if table == "table5":
        rows.append({"label": "R-GeM(No re-ranking)", "cells": _map_cells(EVAL_SETS)})
        rows.append(
            {
                "label": "Affinity Feature",
                "cells": _map_cells(EVAL_SETS, "affinity_feature", K, L),
            }
        )
        for name in TRAINING_SETS:
            rows.append(
                {
                    "label": f"Ours({name})",
                    "cells": _map_cells(EVAL_SETS, _csa(name), K, L),
                }
            )
        return {"label_header": "Method", "rows": rows}
    if table == "table6":
        if DISTRACTORS:
            for k in EXPERIMENTS["table6_K"]:
                large = [with_distractors(t) for t in TESTSETS]
                cells = {
                    "Re-ranking latency (ms)": {
                        "file": evaluation(
                            large[0], EXPERIMENTS["first_round"], _csa(default), k, L
                        ),
                        "key": ["latency_ms"],
                    }
                }
                for testset in large:
                    cells[f"Memory (GB) {set_label(testset)}"] = {
                        "file": evaluation(
                            testset, EXPERIMENTS["first_round"], _csa(default), k, L
                        ),
                        "key": ["memory_gb"],
                    }
                text = {"Space Cplx.": "O(Nd)", "Time Cplx.": "O(KLd + K^2)"}
                rows.append({"label": f"Ours(K={k})", "cells": cells, "text": text})
        return {"label_header": "Method", "rows": rows}
    raise ValueError(f"unknown table {table!r}")


def table_layout(table):
    """The layout with its files' pathvars resolved, ready to be a rule parameter."""
    layout = _table_layout(table)
    for row in layout["rows"]:
        for cell in row["cells"].values():
            cell["file"] = workflow.pathvars.apply(cell["file"])
    return layout


def table_inputs(wildcards):
    layout = table_layout(wildcards.table)
    return sorted(
        {cell["file"] for row in layout["rows"] for cell in row["cells"].values()}
    )


def demo_seed(wildcards):
    """Each demo test set has its own landmarks: its seed is the demo seed plus its position."""
    return config["demo"]["seed"] + 1 + TESTSETS.index(wildcards.dataset)


def extract_kind(wildcards):
    return dataset_kind(wildcards.dataset)


def network_spec(wildcards):
    return NETWORKS[wildcards.network]


def testset_ground_truth(wildcards):
    return ground_truth(wildcards.testset)


def table_layout_of(wildcards):
    return table_layout(wildcards.table)
