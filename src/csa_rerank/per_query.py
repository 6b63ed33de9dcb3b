"""Per-query analysis: which queries a re-ranking method helps and hurts, and the pictures of what it changed.

Every evaluation file (:func:`csa_rerank.stages.evaluate`) holds, beside the means, the AP and P@k of every query
under each protocol (``per_query``, None for a query without positives) and the ids of its first
:data:`csa_rerank.evaluate.TOP_SHOWN` results (``top``).  From the first round's file and a method's file of the
same test set:

- :func:`method_table`: one row per query, AP and P@k before and after (the CSV per method; the mean of a column
  is the mAP of the method's row in the tables);
- :func:`help_hurt`: the queries each method helps and hurts most;
- :func:`scatter`: AP after vs AP before, one panel per method, the diagonal drawn;
- :func:`figure3` and :func:`gallery`: the paper's Figure 3 and a picture of every query
  (:mod:`csa_rerank.qualitative`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from . import datasets, qualitative
from .atomic import atomic_path, save_figure

PROTOCOL_LABELS = {"easy": "Easy", "medium": "Medium", "hard": "Hard"}


def read_evaluation(path: str | Path) -> dict:
    result = json.loads(Path(path).read_text())
    if "per_query" not in result or "top" not in result:
        raise ValueError(f"{path}: no per-query results; rerun its evaluation job")
    return result


def method_table(before: dict, after: dict, names: list[str], protocols=("medium", "hard")) -> pd.DataFrame:
    """One row per query: ``query`` (index), ``name``, and ``<metric> <protocol> before/after`` in %."""
    table = pd.DataFrame({"query": range(len(names)), "name": names})
    for protocol in protocols:
        for metric in before["per_query"][protocol]:
            for when, result in (("before", before), ("after", after)):
                values = result["per_query"][protocol][metric]
                if len(values) != len(names):
                    raise ValueError(f"{len(values)} per-query values for {len(names)} queries")
                table[f"{metric} {PROTOCOL_LABELS[protocol]} {when}"] = pd.array(values, dtype="Float64")
    return table


def help_hurt(tables: dict[str, pd.DataFrame], n: int = 3, protocol: str = "medium") -> pd.DataFrame:
    """Per method, the ``n`` queries it helps most and the ``n`` it hurts most (AP change under ``protocol``,
    ties broken by query index)."""
    column = PROTOCOL_LABELS[protocol]
    rows = []
    for method, table in tables.items():
        change = (table[f"AP {column} after"] - table[f"AP {column} before"]).dropna()
        order = sorted(change.index, key=lambda i: (-change[i], i))
        helped = [i for i in order[:n] if change[i] > 0]
        hurt = [i for i in reversed(order[-n:]) if change[i] < 0]
        rows.append(
            {
                "method": method,
                "queries helped": sum(change > 0),
                "queries hurt": sum(change < 0),
                "most helped": ", ".join(f"{table.name[i]} ({change[i]:+.1f})" for i in helped),
                "most hurt": ", ".join(f"{table.name[i]} ({change[i]:+.1f})" for i in hurt),
            }
        )
    return pd.DataFrame(rows)


def scatter(tables: dict[str, pd.DataFrame], png: str | Path, title: str, protocol: str = "medium") -> None:
    """AP after vs before under ``protocol``, one panel per method, the diagonal drawn."""
    from matplotlib.figure import Figure

    column = PROTOCOL_LABELS[protocol]
    columns = min(5, len(tables))
    rows = math.ceil(len(tables) / columns)
    figure = Figure(figsize=(2.6 * columns, 2.6 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (method, table) in zip(axes.flat, tables.items(), strict=False):
        before, after = table[f"AP {column} before"], table[f"AP {column} after"]
        ax.plot([0, 100], [0, 100], color="grey", linewidth=0.8)
        ax.scatter(before, after, s=9, c=["tab:green" if a > b else "tab:red" if a < b else "tab:grey"
                                          for b, a in zip(before.fillna(0), after.fillna(0), strict=True)])  # fmt: skip
        ax.set(xlim=(0, 100), ylim=(0, 100), aspect="equal", title=method)
        ax.title.set_fontsize(8)
    for ax in list(axes.flat)[len(tables) :]:
        ax.set_visible(False)
    figure.supxlabel(f"AP before (first round), {column} (%)")
    figure.supylabel(f"AP after, {column} (%)")
    figure.suptitle(title)
    save_figure(figure, png, dpi=100)


def _query_group(gnd: dict, paths: dict, q: int, rankings: list[tuple[str, dict]], protocol: str, title: str):
    entry = gnd["gnd"][q]
    rows = []
    for label, result in rankings:
        ap = result["per_query"][protocol]["AP"][q]
        ranked = [(paths["db"][i], qualitative.image_label(i, entry, protocol)) for i in result["top"][q]]
        rows.append({"label": f"{label}\nAP {'–' if ap is None else f'{ap:.1f}'}", "ranked": ranked, "ap": ap})
    return {"title": title, "query": {"image": paths["query"][q], "bbx": entry.get("bbx")}, "rows": rows}


def image_paths(gnd_file: str | Path, distractor_list: str | Path | None = None) -> tuple[dict, dict]:
    """The ground truth and the image path of every database row and query of a test set (distractor rows
    after the test set's own, as in the descriptor files)."""
    gnd, db, queries, _ = datasets.searched_image_paths(gnd_file, distractor_list)
    return gnd, {"db": db, "query": queries}


def figure3(
    first_round_file: str,
    method_file: str,
    gnd_file: str,
    out_png: str,
    out_csv: str,
    method: str = "Ours",
    successes: int = 2,
    failures: int = 2,
    protocol: str = "medium",
    distractor_list: str | None = None,
) -> pd.DataFrame:
    """The paper's Figure 3: groups of the first round's and ``method``'s top-10 for the queries chosen by
    :func:`qualitative.select_queries` (AP change under ``protocol``); the CSV lists each row's query, AP and the
    ten images with their labels."""
    before, after = read_evaluation(first_round_file), read_evaluation(method_file)
    gnd, paths = image_paths(gnd_file, distractor_list)
    chosen = qualitative.select_queries(
        before["per_query"][protocol]["AP"], after["per_query"][protocol]["AP"], successes, failures
    )
    groups, records = [], []
    shown = qualitative.Layout().shown
    for q, kind in chosen:
        name = gnd["qimlist"][q]
        title = f"{kind}: query {name} ({PROTOCOL_LABELS[protocol]})"
        group = _query_group(gnd, paths, q, [("first round", before), (method, after)], protocol, title)
        groups.append(group)
        for row in group["rows"]:
            record = {"kind": kind, "query": q, "name": name, "row": row["label"].split("\n")[0], "AP": row["ap"]}
            for rank, (path, label) in enumerate(row["ranked"][:shown], start=1):
                record[f"image {rank}"], record[f"label {rank}"] = Path(path).stem, label
            records.append(record)
    with atomic_path(out_png) as temporary:
        qualitative.draw_groups(groups).save(temporary, format="PNG")
    table = pd.DataFrame(records)
    _write_csv(table, out_csv, float_format="%.2f")
    return table


def gallery(
    first_round_file: str,
    method_file: str,
    gnd_file: str,
    out_html: str,
    title: str,
    method: str = "Ours",
    protocol: str = "medium",
    distractor_list: str | None = None,
) -> None:
    """One HTML page with a picture of every query (first round and ``method``), grouped by landmark."""
    before, after = read_evaluation(first_round_file), read_evaluation(method_file)
    gnd, paths = image_paths(gnd_file, distractor_list)
    groups, entries = [], []
    for q, name in enumerate(gnd["qimlist"]):
        group = _query_group(gnd, paths, q, [("first round", before), (method, after)], protocol, f"query {name}")
        groups.append(group)
        entries.append({"name": name, "before": group["rows"][0]["ap"], "after": group["rows"][1]["ap"]})
    qualitative.write_gallery(out_html, title, groups, entries)


def write_analysis(
    before_file: str, after_files: dict[str, str], gnd_file: str, out: dict[str, str], title: str
) -> None:
    """The per-query analysis of one evaluation set: a CSV per method (:func:`method_table`; ``after_files``: row
    slug -> (label, evaluation file)) in the folder ``out["methods"]``, then the scatter plot (``out["scatter"]``)
    and the most helped and hurt queries (``out["help_hurt"]``), both from the CSVs as written."""
    names = datasets.load_ground_truth(gnd_file)["qimlist"]
    before = read_evaluation(before_file)  # read once, compared with every method
    Path(out["methods"]).mkdir(parents=True, exist_ok=True)
    written = {}
    for slug, (label, after_file) in after_files.items():
        written[label] = Path(out["methods"]) / f"{slug}.csv"
        # full precision: the figure's selection can be checked from it
        _write_csv(method_table(before, read_evaluation(after_file), names), str(written[label]))
    tables = {label: pd.read_csv(path, dtype={"name": str}) for label, path in written.items()}
    scatter(tables, out["scatter"], title)
    _write_csv(help_hurt(tables), out["help_hurt"])


def _write_csv(table: pd.DataFrame, path: str, **options) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False, **options)
