"""The paper's figures of model variants (Fig. 2, supplementary Figs. 1 and 2): their points as CSV, and a PNG.

A figure layout (built by the workflow from the configuration, like a table layout in :mod:`csa_rerank.tables`)
holds a ``baseline`` (the first round) and ``panels``, one per swept parameter, each with its ``points``: the
swept ``value``, the ``model`` trained with it and its cells ``{column: {"file": evaluation JSON, "key": [path]}}``.
:func:`build` reads them into one frame: columns ``parameter``, ``value``, ``model``, the metric columns and, for
the figures on the test sets, ``paper <column>``.

The text of the paper gives no value of any point of its figures.  What it does state for the same setting
(K = 1024, L = 512, default model) is Table 2's row L = 512 and its first round, so those are the ``paper``
values: on the rows of the default value of each swept parameter (Fig. 2), on the first-round row, and on the
row of the mean over seeds (supplementary Fig. 2, where the paper's number is a single run).  The validation
mAP of supplementary Fig. 1 has no published number.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import tables
from .atomic import atomic_path, save_figure

FIRST_ROUND = "first round"
MEAN, STD = "mean", "std"
# Published values of the setting the figures vary (K = 1024, L = 512): Table 2, rows "L=512" and first round.
PAPER_DEFAULT_MODEL = tables.PAPER["table2"]["R-GeM+Ours(L=512)"]
PAPER_FIRST_ROUND = tables.PAPER["table2"]["R-GeM"]
# The default model of the paper: depth 2, hidden size 768, lambda 0.2, tau 2 (Sec. 4.1 and Fig. 2's caption).
PAPER_DEFAULTS = {"depth": 2, "hidden": 768, "lambda": 0.2, "temperature": 2.0}
# Figures evaluated on the test sets, whose columns the paper's Table 2 shares.
PAPER_FIGURES = ("fig2", "supp_fig2")
SEED_FIGURES = ("supp_fig2",)


def _read(cells: dict, cache: dict) -> dict[str, float]:
    values = {}
    for column, cell in cells.items():
        if cell["file"] not in cache:
            cache[cell["file"]] = json.loads(Path(cell["file"]).read_text())
        value = cache[cell["file"]]
        for part in cell["key"]:
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"{cell['file']}: no value at {'/'.join(cell['key'])}")
            value = value[part]
        values[column] = round(float(value), 2)
    return values


def _paper(figure: str, parameter: str, value) -> dict[str, float]:
    if figure not in PAPER_FIGURES:
        return {}
    if parameter == FIRST_ROUND:
        return PAPER_FIRST_ROUND
    if figure == "fig2" and parameter in PAPER_DEFAULTS and float(value) == PAPER_DEFAULTS[parameter]:
        return PAPER_DEFAULT_MODEL
    if figure in SEED_FIGURES and parameter == MEAN:
        return PAPER_DEFAULT_MODEL
    return {}


def build(figure: str, layout: dict) -> pd.DataFrame:
    """The figure's points: the first-round row, then one row per (panel, value); with seeds, their mean and std.

    The std over seeds is the sample standard deviation (ddof = 1; empty for a single seed).
    """
    cache: dict[str, dict] = {}
    metrics = list(layout["baseline"]["cells"])
    rows = [{"parameter": FIRST_ROUND, "value": None, "model": layout["baseline"]["label"],
             **_read(layout["baseline"]["cells"], cache)}]  # fmt: skip
    for panel in layout["panels"]:
        for point in panel["points"]:
            rows.append({"parameter": panel["parameter"], "value": point["value"], "model": point["model"],
                         **_read(point["cells"], cache)})  # fmt: skip
    if figure in SEED_FIGURES:
        seeds = pd.DataFrame(rows[1:], columns=metrics)
        n = len(seeds)
        rows.append({"parameter": MEAN, "value": None, "model": f"{n} seeds", **seeds.mean().round(2).to_dict()})
        std = seeds.std(ddof=1).round(2) if n > 1 else pd.Series(np.nan, index=metrics)
        rows.append({"parameter": STD, "value": None, "model": f"{n} seeds", **std.to_dict()})
    columns = ["parameter", "value", "model", *metrics]
    if figure in PAPER_FIGURES:
        for row in rows:
            paper = _paper(figure, row["parameter"], row["value"])
            row.update({f"paper {m}": paper.get(m) for m in metrics})
        columns += [f"paper {m}" for m in metrics]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    frame["value"] = pd.Series([row["value"] for row in rows], dtype=object)  # integers stay integers in the CSV
    return frame


def write(frame: pd.DataFrame, csv_path: str | Path) -> None:
    with atomic_path(csv_path) as temporary:
        frame.to_csv(temporary, index=False)


def _paper_points(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    name = f"paper {column}"
    if name not in frame:
        return frame.iloc[:0]
    return frame[frame[name].notna()]


def plot(figure: str, frame: pd.DataFrame, layout: dict, png_path: str | Path) -> None:
    """One panel per swept parameter (matplotlib's object API: no pyplot, no backend)."""
    if figure in SEED_FIGURES:
        canvas = _plot_seeds(frame, layout)
    else:
        canvas = _plot_sweeps(frame, layout)
    save_figure(canvas, png_path, dpi=100)


def _plot_sweeps(frame: pd.DataFrame, layout: dict) -> Figure:
    metric, panels = layout["metric"], layout["panels"]
    paper_in_plot = layout.get("paper_in_plot", False)
    canvas = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    axes = np.atleast_1d(canvas.subplots(1, len(panels), squeeze=False)[0])
    first = frame[frame["parameter"] == FIRST_ROUND].iloc[0]
    paper = _paper_points(frame, metric) if paper_in_plot else frame.iloc[:0]
    for letter, ax, panel in zip("abcdefgh", axes, panels, strict=False):
        points = frame[frame["parameter"] == panel["parameter"]]
        x = points["value"].astype(float).to_numpy()
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], points[metric].to_numpy()[order], "o-", color="C0", label="ours")
        ax.axhline(first[metric], color="C0", linestyle="--", linewidth=1, label=f"ours: {first['model']}")
        published = paper[paper["parameter"] == panel["parameter"]]
        if len(published):
            ax.plot(published["value"].astype(float), published[f"paper {metric}"], "*", color="C3", markersize=12,
                    label="paper: default model (Table 2, L=512)")  # fmt: skip
        if len(paper[paper["parameter"] == FIRST_ROUND]):
            ax.axhline(first[f"paper {metric}"], color="C3", linestyle=":", linewidth=1, label="paper: first round")
        ax.set_xticks(np.unique(x))
        ax.set(xlabel=panel["label"], ylabel=layout["ylabel"], title=f"({letter}) {panel['label']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    canvas.suptitle(layout["title"])
    return canvas


def _plot_seeds(frame: pd.DataFrame, layout: dict) -> Figure:
    metrics = list(layout["baseline"]["cells"])
    paper_in_plot = layout.get("paper_in_plot", False)
    canvas = Figure(figsize=(max(5.0, 1.6 * len(metrics) + 2), 4.0), layout="constrained")
    ax = canvas.subplots()
    x = np.arange(len(metrics))
    seeds = frame[frame["parameter"] == layout["panels"][0]["parameter"]]
    mean = frame[frame["parameter"] == MEAN].iloc[0]
    std = frame[frame["parameter"] == STD].iloc[0]
    first = frame[frame["parameter"] == FIRST_ROUND].iloc[0]
    for i, metric in enumerate(metrics):
        ax.plot(np.full(len(seeds), x[i] - 0.15), seeds[metric], "o", color="C0", alpha=0.5, markersize=4,
                label="ours: one seed" if i == 0 else None)  # fmt: skip
    error = np.nan_to_num(std[metrics].astype(float).to_numpy())
    ax.errorbar(x, mean[metrics].astype(float), yerr=error, fmt="s", color="C0", capsize=4,
                label=f"ours: mean ± std over {len(seeds)} seeds")  # fmt: skip
    ax.plot(x, first[metrics].astype(float), "x", color="gray", markersize=8, label=f"ours: {first['model']}")
    if paper_in_plot and f"paper {metrics[0]}" in frame:
        ax.plot(x + 0.15, mean[[f"paper {m}" for m in metrics]].astype(float), "*", color="C3", markersize=12,
                label="paper: one run (Table 2, L=512)")  # fmt: skip
        ax.plot(x + 0.15, first[[f"paper {m}" for m in metrics]].astype(float), "x", color="C3", markersize=8,
                label="paper: first round")  # fmt: skip
    ax.set_xticks(x, metrics)
    ax.set(xlabel="test set and protocol", ylabel=layout["ylabel"], title=layout["panels"][0]["label"])
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    canvas.suptitle(layout["title"])
    return canvas
