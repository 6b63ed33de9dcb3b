"""The re-ranking models to train: one per training set, one per anchor length of table 2, and the figures'
variants of the default model (Fig. 2, supplementary Figs. 1 and 2).

A model is ``name -> {"training_set": ..., "anchors": L, [section: {key: value}]}``: the sections are the
variant's changes to ``config["reranker"]`` or ``config["training"]`` (rule train's params).
"""

from __future__ import annotations

from .checks import config_error

# Swept parameter -> (config section, key there, tag in the model name, type, axis label), in the panel order
# of the figures.
SWEEPS = {
    "depth": ("reranker", "depth", "depth", int, "transformer depth n"),
    "hidden": ("reranker", "hidden", "hidden", int, "hidden size L'"),
    "lambda": ("training", "recon_weight", "lambda", float, "weight λ of the MSE loss"),
    "temperature": ("reranker", "temperature", "tau", float, "temperature τ"),
    "seed": ("training", "seed", "seed", int, "random seed"),
}
# The figures whose sweeps are keys of experiments.<figure> (supplementary Fig. 2: experiments.seeds).
SWEPT_FIGURES = ("fig2", "supp_fig1")


def table_models(config: dict) -> dict[str, dict]:
    """The models of the tables: one per training set, plus table 2's anchor lengths (the input projection of the
    model is L -> d, so every L needs its own model)."""
    experiments = config["experiments"]
    default, L = experiments["default_training_set"], experiments["L"]
    models = {name: {"training_set": name, "anchors": L} for name in experiments["training_sets"]}
    for anchors in experiments["table2_L"]:
        if anchors != L:
            models[f"{default}-L{anchors}"] = {"training_set": default, "anchors": anchors}
    return models


def head_width(config: dict) -> int:
    """The width of an attention head of the default model (768 / 12 = 64 in the paper).  The hidden-size sweep
    keeps it and scales the number of heads with the width: the paper's best size, 1024, is no multiple of 12."""
    return max(1, config["reranker"]["hidden"] // config["reranker"]["heads"])


def sweep_model(config: dict, parameter: str, value, key: str) -> tuple[str, dict | None]:
    """The model of one sweep point, (name, spec); (the default model, None) where the value is the configured
    one.  ``key`` is the config key the value comes from (for errors)."""
    section, name, tag, kind, _ = SWEEPS[parameter]
    default = config["experiments"]["default_training_set"]
    value = kind(value)
    if value == config[section][name]:
        return default, None
    overrides = {name: value}
    if parameter == "hidden":
        width = head_width(config)
        if value % width:
            config_error(
                key, f"hidden size {value} is no multiple of the head width {width} (reranker.hidden / reranker.heads)"
            )
        overrides["heads"] = value // width
    model = f"{default}-{tag}{value:g}" if kind is float else f"{default}-{tag}{value}"
    spec = {"training_set": default, "anchors": config["experiments"]["L"], section: overrides}
    return model, spec


def figure_sweeps(config: dict) -> tuple[dict[str, dict[str, list]], dict[str, dict]]:
    """(figure -> {swept parameter: [(value, model), ...]}, the variant models they need).

    Panels in the order of SWEEPS; only the configured figures."""
    experiments = config["experiments"]
    sweeps: dict[str, dict[str, list]] = {}
    variants: dict[str, dict] = {}

    def point(parameter, value, key):
        model, spec = sweep_model(config, parameter, value, key)
        if spec is not None:
            variants[model] = spec
        return value, model

    for figure in SWEPT_FIGURES:
        for parameter in SWEEPS:
            for value in experiments.get(figure, {}).get(parameter, []):
                key = f"experiments.{figure}.{parameter}"
                sweeps.setdefault(figure, {}).setdefault(parameter, []).append(point(parameter, value, key))
    if experiments.get("seeds"):
        sweeps["supp_fig2"] = {"seed": [point("seed", seed, "experiments.seeds") for seed in experiments["seeds"]]}
    return sweeps, variants


def train_topk(config: dict, models: dict[str, dict]) -> int:
    """Neighbours kept per training image: enough for the longest token list and the longest anchor list."""
    return max([config["training"]["K_train"]] + [m["anchors"] for m in models.values()])
