"""The per-query analysis and Figure 3: which evaluation files each of their outputs reads.

Every row of table 5 but the first round is a method whose per-query results are compared with the first round's
on each evaluation set, by one job per set (<results>/per_query/<set>/methods/<row>.csv, a scatter plot and the
most helped and hurt queries).  Figure 3 and the gallery show one method (``experiments.fig3.method``, CSA by
default) on one test set (``experiments.fig3.testset``, the first one by default) and on every test set
respectively.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .canonical import canonical
from .tables import PROTOCOL_LABELS, table5

if TYPE_CHECKING:
    from .core import Plan

BASELINE_ROW = "R-GeM(No re-ranking)"
FIG3_DEFAULTS = {"successes": 2, "failures": 2, "protocol": "medium", "method": "Ours"}


def row_slug(label: str) -> str:
    """A table-5 row label as a file name: 'αDBA + αQE' -> 'alphadba-alphaqe', 'Ours(rSfM120k)' -> 'ours-rsfm120k'."""
    label = label.removesuffix(" (not in the paper)").replace("α", "alpha")
    return re.sub(r"[^0-9a-z]+", "-", label.lower()).strip("-")


def _evaluation_files(plan: Plan, testset: str) -> dict[str, str]:
    """Table-5 row label -> the evaluation file of its Medium cell on ``testset`` (the file has every protocol), for
    the rows with a cell there."""
    column = f"{plan.set_label(testset)} {PROTOCOL_LABELS['medium']}"
    return {row["label"]: row["cells"][column]["file"] for row in table5(plan)["rows"] if column in row["cells"]}


def compared_rows(plan: Plan) -> dict[str, str]:
    """Row slug -> label of every table-5 row compared with the first round."""
    labels = [row["label"] for row in table5(plan)["rows"] if row["label"] != BASELINE_ROW]
    return {row_slug(label): label for label in labels}


def per_query_rows(plan: Plan, testset: str) -> dict[str, str]:
    """Row slug -> label of the table-5 rows with a cell on ``testset``: one per-query CSV each."""
    files = _evaluation_files(plan, testset)
    return {slug: label for slug, label in compared_rows(plan).items() if label in files}


def per_query_inputs(plan: Plan, testset: str) -> dict[str, str | list[str]]:
    """The first round's evaluation file, those of the rows of :func:`per_query_rows` (in its order) and the
    ground truth: what the per-query analysis of ``testset`` reads."""
    files = _evaluation_files(plan, testset)
    return {
        "before": files[BASELINE_ROW],
        "after": [files[label] for label in per_query_rows(plan, testset).values()],
        "gnd": plan.ground_truth(testset),
    }


def fig3_settings(plan: Plan) -> dict:
    """``experiments.fig3`` with its defaults; the test set defaults to the first one (ROxf in the paper)."""
    settings = canonical({**FIG3_DEFAULTS, "testset": plan.test_sets[0], **plan.experiments.get("fig3", {})})
    if settings["testset"] not in plan.test_sets:
        raise ValueError(
            f"config key experiments.fig3.testset: {settings['testset']!r} is not one of datasets.test "
            f"({', '.join(plan.test_sets)})"
        )
    if not plan.has_images(settings["testset"]):
        raise ValueError(
            f"config key experiments.fig3.testset: {settings['testset']!r} is given as descriptors; Figure 3 shows "
            "images: name a test set with images"
        )
    fig3_row(plan, settings["method"])  # fails early, naming the key
    return settings


def fig3_row(plan: Plan, method: str) -> str:
    """The table-5 row of ``experiments.fig3.method``: 'Ours' and 'GSS+Ours' with the default training set's
    model, a compared method by its label."""
    if method == "Ours" or method.endswith("+Ours"):
        method = f"{method}({plan.default_training_set})"
    labels = {row["label"].removesuffix(" (not in the paper)"): row["label"] for row in table5(plan)["rows"]}
    if method not in labels or method == BASELINE_ROW:
        known = ", ".join(sorted({re.sub(r"\(.*\)$", "", label) for label in labels if label != BASELINE_ROW}))
        raise ValueError(f"config key experiments.fig3.method: {method!r} is not a row of table 5 (known: {known})")
    return labels[method]


def qualitative_inputs(plan: Plan, testset: str) -> dict[str, str]:
    """What Figure 3 and the gallery of ``testset`` read: the first round's and the method's evaluation files
    (per-query AP and top lists), the ground truth and the images."""
    files = _evaluation_files(plan, testset)
    data = plan.raw_data(testset)
    return {
        "before": files[BASELINE_ROW],
        "after": files[fig3_row(plan, fig3_settings(plan)["method"])],
        "gnd": data["listing"],
        "images": data["images"],
    }


def method_label(plan: Plan) -> str:
    """The method's name in the pictures: the table-5 row ('Ours(rSfM120k)'), and the first round's."""
    return fig3_row(plan, fig3_settings(plan)["method"])


def outputs(plan: Plan) -> list[str]:
    """Everything the analysis adds to the report: Figure 3, per set the scatter plot and the most helped and
    hurt queries, per test set with images the gallery (one HTML file each: the report embeds files)."""
    files = ["<results>/fig3.png", "<results>/fig3.csv"]
    for testset in plan.eval_sets:
        files += [f"<results>/per_query/{testset}/scatter.png", f"<results>/per_query/{testset}/help_hurt.csv"]
    files += [f"<results>/gallery/{testset}.html" for testset in plan.test_sets if plan.has_images(testset)]
    return files
