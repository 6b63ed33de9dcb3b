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


# Compared re-ranking methods (Table 5, csa_rerank.methods): config label -> the name in paths.  A method's output
# is a first-round-shaped ranking <results>/knn/{testset}/{network}~{method}.h5, so the first-round evaluation and
# CSA apply to it unchanged: {network}~gss is "GSS", and CSA on it "GSS+Ours".
METHOD_SLUGS = {
    "AQE": "aqe",
    "AQEwD": "aqewd",
    "DQE": "dqe",
    "αQE": "alphaqe",
    "LAttQE": "lattqe",
    "ADBA + AQE": "adba-aqe",
    "ADBAwD + AQEwD": "adbawd-aqewd",
    "DDBA + DQE": "ddba-dqe",
    "αDBA + αQE": "alphadba-alphaqe",
    "LAttDBA + LAttQE": "lattdba-lattqe",
    "DSM": "dsm",
    "CRL": "crl",
    "GSS": "gss",
    "DFS": "dfs",
    "k-reciprocal": "kreciprocal",
    "SuperGlobal (refinement)": "superglobal",
}
METHODS = config.get("methods", {})
METHOD_OF_SLUG = {METHOD_SLUGS[label]: label for label in METHODS}
# learned methods -> the module whose fit() trains them (LAttQE and LAttDBA share one model)
FITTED_BY = {"LAttQE": "lattqe", "LAttDBA + LAttQE": "lattqe", "CRL": "crl"}


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

# Model variants of the figures (Fig. 2, supplementary Figs. 1 and 2): the default model with one setting changed.
# Swept parameter -> (config section, key there, tag in the model name, type, axis label).
SWEEPS = {
    "depth": ("reranker", "depth", "depth", int, "transformer depth n"),
    "hidden": ("reranker", "hidden", "hidden", int, "hidden size L'"),
    "lambda": ("training", "recon_weight", "lambda", float, "weight λ of the MSE loss"),
    "temperature": ("reranker", "temperature", "tau", float, "temperature τ"),
    "seed": ("training", "seed", "seed", int, "random seed"),
}
# The hidden-size sweep keeps the width of an attention head (the default model's hidden / heads, 768 / 12 = 64 in
# the paper) and scales the number of heads with the width: the paper's best size, 1024, is no multiple of 12.
HEAD_WIDTH = max(1, config["reranker"]["hidden"] // config["reranker"]["heads"])


def sweep_model(parameter, value, key):
    """The model of one sweep point, added to MODELS; the default model where the value is the configured one."""
    section, name, tag, kind, _ = SWEEPS[parameter]
    value = kind(value)
    if value == config[section][name]:
        return DEFAULT_TRAINING_SET
    overrides = {name: value}
    if parameter == "hidden":
        if value % HEAD_WIDTH:
            _config_error(
                key,
                f"hidden size {value} is no multiple of the head width {HEAD_WIDTH} (reranker.hidden / reranker.heads)",
            )
        overrides["heads"] = value // HEAD_WIDTH
    model = (
        f"{DEFAULT_TRAINING_SET}-{tag}{value:g}"
        if kind is float
        else f"{DEFAULT_TRAINING_SET}-{tag}{value}"
    )
    MODELS[model] = {
        "training_set": DEFAULT_TRAINING_SET,
        "anchors": EXPERIMENTS["L"],
        section: overrides,
    }
    return model


# Figure -> {swept parameter: [(value, model), ...]}, panels in the order of SWEEPS; only configured figures.
FIGURE_SWEEPS = {}
for _figure in ("fig2", "supp_fig1"):
    for _parameter in SWEEPS:
        for _value in EXPERIMENTS.get(_figure, {}).get(_parameter, []):
            FIGURE_SWEEPS.setdefault(_figure, {}).setdefault(_parameter, []).append(
                (
                    _value,
                    sweep_model(
                        _parameter, _value, f"experiments.{_figure}.{_parameter}"
                    ),
                )
            )
if EXPERIMENTS.get("seeds"):
    FIGURE_SWEEPS["supp_fig2"] = {
        "seed": [
            (_seed, sweep_model("seed", _seed, "experiments.seeds"))
            for _seed in EXPERIMENTS["seeds"]
        ]
    }
FIGURES = list(FIGURE_SWEEPS)

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
    # a network, or a network's first-round lists re-ranked by a compared method (rule rerank_method)
    network=f"({_alternatives(NETWORKS)})(~({_alternatives(METHOD_OF_SLUG) or 'none'}))?",
    method=_alternatives(METHOD_OF_SLUG) or "none",
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


def base_network(network):
    """The network of a ranking name: 'net' or 'net~method' -> 'net'."""
    return network.split("~")[0]


def ground_truth(testset):
    name = base_testset(testset)
    return f"<data>/test/{name}/gnd_{name}.pkl"


def descriptor_files(wildcards):
    """Descriptors of a test set's database and queries, then of the distractors when the set includes them."""
    network = base_network(wildcards.network)
    files = {
        "testset": f"<results>/features/{base_testset(wildcards.testset)}/{network}.h5"
    }
    if "+" in wildcards.testset:
        files["distractors"] = f"<results>/features/{DISTRACTORS}/{network}.h5"
    return files


def training_inputs(wildcards):
    networks = TRAINING_SETS[MODELS[wildcards.model]["training_set"]]
    return {
        "db": "<data>/train/retrieval-SfM-120k/retrieval-SfM-120k.pkl",
        "features": [f"<results>/features/{TRAINSET}/{net}.h5" for net in networks],
        "neighbours": [f"<results>/neighbours/{net}.h5" for net in networks],
    }


def training_priority(wildcards):
    """The longest training first: one on the samples of n backbones takes about n times as long as one on a
    single backbone's, and would otherwise start last and end the run alone."""
    return len(TRAINING_SETS[MODELS[wildcards.model]["training_set"]])


def reranker_config(wildcards):
    """config["reranker"] with the model's anchor length and its variant's changes (figures)."""
    model = MODELS[wildcards.model]
    return {
        **config["reranker"],
        "anchors": model["anchors"],
        **model.get("reranker", {}),
    }


def training_hyperparameters(wildcards):
    """config["training"] with the model variant's changes (figures), without the process count, which does not
    change the result (no rerun trigger)."""
    settings = {
        key: value for key, value in config["training"].items() if key != "processes"
    }
    return {**settings, **MODELS[wildcards.model].get("training", {})}


def evaluation(testset, network, reranker=None, K=None, L=None):
    """Path of the evaluation JSON of one (test set, network, re-ranker, K, L)."""
    if reranker is None:
        return f"<results>/eval/{testset}/{network}/first_round.json"
    return f"<results>/eval/{testset}/{network}/{reranker}/K{K}_L{L}.json"


def rerank_file(wildcards):
    return f"<results>/rerank/{wildcards.testset}/{wildcards.network}/{wildcards.reranker}/K{wildcards.K}_L{wildcards.L}.h5"


def val_evaluation(model):
    """Path of the evaluation JSON of a model on the training set's val split (first-round network, K, L)."""
    network, K, L = EXPERIMENTS["first_round"], EXPERIMENTS["K"], EXPERIMENTS["L"]
    return f"<results>/eval/{TRAINSET}-val/{network}/csa-{model}/K{K}_L{L}.json"


def tables_and_figures():
    """Every table (CSV, Markdown) and figure (PNG, CSV): the inputs of the report."""
    return [f"<results>/{table}.{ext}" for table in TABLES for ext in ("csv", "md")] + [
        f"<results>/{figure}.{ext}" for figure in FIGURES for ext in ("png", "csv")
    ]


def all_targets():
    return (
        [f"<results>/{table}.csv" for table in TABLES]
        + [f"<results>/{figure}.png" for figure in FIGURES]
        + ["<results>/report.html"]
    )


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


# Table 5's compared methods in the paper's row order, then the rows added here (not in the paper).
EXTRA_METHODS = [
    m for m in ("k-reciprocal", "SuperGlobal (refinement)") if m in METHODS
]
PAPER_METHODS = [m for m in METHOD_SLUGS if m in METHODS and m not in EXTRA_METHODS]
# Table 6's compared methods and their complexities as the paper gives them.
TABLE6_METHODS = {
    "DFS": {"Space Cplx.": "O(Nd + Nk)", "Time Cplx.": "O(tK^2)"},
    "GSS": {"Space Cplx.": "O(Nd + Nk)", "Time Cplx.": "O(Nd + k^2d^2)"},
    "αQE": {"Space Cplx.": "O(Nd)", "Time Cplx.": "O(Nd + kd)"},
}


def _method_lists(network, label):
    """The ranking name of a network's first-round lists re-ranked by a compared method."""
    return f"{network}~{METHOD_SLUGS[label]}"


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
        first = EXPERIMENTS["first_round"]
        for label in PAPER_METHODS:
            rows.append(
                {
                    "label": label,
                    "cells": _map_cells(EVAL_SETS, network=_method_lists(first, label)),
                }
            )
        for name in TRAINING_SETS:
            rows.append(
                {
                    "label": f"Ours({name})",
                    "cells": _map_cells(EVAL_SETS, _csa(name), K, L),
                }
            )
            for label in (
                "GSS",
                "DFS",
            ):  # CSA re-ranking the lists these methods produce
                if label in METHODS:
                    rows.append(
                        {
                            "label": f"{label}+Ours({name})",
                            "cells": _map_cells(
                                EVAL_SETS, _csa(name), K, L, _method_lists(first, label)
                            ),
                        }
                    )
        for label in EXTRA_METHODS:
            rows.append(
                {
                    "label": f"{label} (not in the paper)",
                    "cells": _map_cells(EVAL_SETS, network=_method_lists(first, label)),
                }
            )
        return {"label_header": "Method", "rows": rows}
    if table == "table6":
        if DISTRACTORS:
            large = [with_distractors(t) for t in TESTSETS]
            first = EXPERIMENTS["first_round"]
            for label, text in TABLE6_METHODS.items():
                if label not in METHODS:
                    continue
                lists = _method_lists(first, label)
                cells = {
                    "Re-ranking latency (ms)": {
                        "file": evaluation(large[0], lists),
                        "key": ["latency_ms"],
                    }
                }
                for testset in large:
                    cells[f"Memory (GB) {set_label(testset)}"] = {
                        "file": evaluation(testset, lists),
                        "key": ["memory_gb"],
                    }
                rows.append({"label": label, "cells": cells, "text": text})
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


# ---------------------------------------------------------------------------------------------------------------
# Figure layouts (csa_rerank.figures): a first-round baseline and one panel per swept parameter, each point the
# evaluation of one model variant at the configured K and L.  Fig. 2 and supplementary Fig. 2 are evaluated on the
# test sets (Fig. 2: the first one, ROxf, as in the paper), supplementary Fig. 1 on the training set's val split.
FIGURE_TITLES = {
    "fig2": "Fig. 2: model variants and the weight of the MSE loss",
    "supp_fig1": "Supplementary Fig. 1: model variants, MSE weight and temperature on the validation split",
    "supp_fig2": "Supplementary Fig. 2: random seeds",
}


def _figure_cells(figure, model=None):
    """The cells of one point of a figure: the first round (model None) or one model re-ranking."""
    if figure == "supp_fig1":
        key = "first_round" if model is None else "rerank"
        model = model or DEFAULT_TRAINING_SET
        return {"mAP": {"file": val_evaluation(model), "key": [key, "mAP"]}}
    sets = TESTSETS[:1] if figure == "fig2" else TESTSETS
    if model is None:
        return _map_cells(sets)
    return _map_cells(sets, _csa(model), EXPERIMENTS["K"], EXPERIMENTS["L"])


def _figure_layout(figure):
    K, L = EXPERIMENTS["K"], EXPERIMENTS["L"]
    if figure == "supp_fig1":
        metric, ylabel = "mAP", f"mAP (%), {TRAINSET} val split"
    else:
        metric = f"{set_label(TESTSETS[0])} Hard"
        ylabel = "mAP (%)" if figure == "supp_fig2" else f"mAP (%), {metric}"
    return {
        "title": f"{FIGURE_TITLES[figure]} (K={K}, L={L})",
        "metric": metric,
        "ylabel": ylabel,
        # the paper's numbers are drawn for the real data only: beside the demo's they would flatten its curves
        "paper_in_plot": not config.get("demo"),
        "baseline": {
            "label": f"first round ({FIRST_ROUND_LABEL})",
            "cells": _figure_cells(figure),
        },
        "panels": [
            {
                "parameter": parameter,
                "label": SWEEPS[parameter][4],
                "points": [
                    {
                        "value": value,
                        "model": model,
                        "cells": _figure_cells(figure, model),
                    }
                    for value, model in values
                ],
            }
            for parameter, values in FIGURE_SWEEPS[figure].items()
        ],
    }


def figure_layout(figure):
    """The layout with its files' pathvars resolved, ready to be a rule parameter."""
    layout = _figure_layout(figure)
    cells = [layout["baseline"]["cells"]] + [
        point["cells"] for panel in layout["panels"] for point in panel["points"]
    ]
    for row in cells:
        for cell in row.values():
            cell["file"] = workflow.pathvars.apply(cell["file"])
    return layout


def figure_layout_of(wildcards):
    return figure_layout(wildcards.figure)


def figure_inputs(wildcards):
    layout = figure_layout(wildcards.figure)
    cells = [layout["baseline"]["cells"]] + [
        point["cells"] for panel in layout["panels"] for point in panel["points"]
    ]
    return sorted({cell["file"] for row in cells for cell in row.values()})


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


# ---------------------------------------------------------------------------------------------------------------
# Compared methods (workflow/rules/methods.smk)
def method_label(wildcards):
    return METHOD_OF_SLUG[wildcards.method]


def method_inputs(wildcards):
    label = METHOD_OF_SLUG[wildcards.method]
    inputs = {
        **descriptor_files(wildcards),
        "knn": f"<results>/knn/{wildcards.testset}/{wildcards.network}.h5",
    }
    if label in FITTED_BY:
        inputs["weights"] = (
            f"<results>/methods/{FITTED_BY[label]}/{wildcards.network}.pt"
        )
    if label == "DSM":  # the images and the network, at re-ranking time
        data = raw_data_of(base_testset(wildcards.testset))
        inputs.update(images=data["images"], gnd=data["listing"])
        spec = NETWORKS[wildcards.network]
        for key in ("checkpoint", "body_checkpoint"):
            if spec.get(key):
                inputs[key] = spec[key]
        if "+" in wildcards.testset:
            distractors = raw_data_of(DISTRACTORS)
            inputs.update(
                distractor_images=distractors["images"],
                distractor_list=distractors["listing"],
            )
    return inputs


def dsm_settings(wildcards):
    """What DSM needs besides descriptors: the network's spec and the image size (other methods: nothing)."""
    if METHOD_OF_SLUG[wildcards.method] != "DSM":
        return {}
    return {
        "network": NETWORKS[wildcards.network],
        "image_size": config["extraction"]["image_size"],
    }
