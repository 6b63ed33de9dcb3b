"""Figure layouts (csa_rerank.figures): a first-round baseline and one panel per swept parameter, each point the
evaluation of one model variant (csa_rerank.plan.models) at the configured K and L.

Fig. 2 and supplementary Fig. 2 are evaluated on the test sets (Fig. 2: the first one, ROxf, as in the paper),
supplementary Fig. 1 on the training set's val split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .models import SWEEPS
from .paths import csa
from .tables import FIRST_ROUND_LABEL, map_cells

if TYPE_CHECKING:
    from .core import Plan

FIGURE_TITLES = {
    "fig2": "Fig. 2: model variants and the weight of the MSE loss",
    "supp_fig1": "Supplementary Fig. 1: model variants, MSE weight and temperature on the validation split",
    "supp_fig2": "Supplementary Fig. 2: random seeds",
}


def figure_cells(plan: Plan, figure: str, model: str | None = None) -> dict:
    """The cells of one point of a figure: the first round (model None) or one model re-ranking."""
    if figure == "supp_fig1":
        key = "first_round" if model is None else "rerank"
        return {"mAP": {"file": plan.val_evaluation(model or plan.default_training_set), "key": [key, "mAP"]}}
    sets = plan.test_sets[:1] if figure == "fig2" else plan.test_sets
    if model is None:
        return map_cells(plan, sets)
    return map_cells(plan, sets, csa(model), plan.K, plan.L)


def figure_layout(plan: Plan, figure: str) -> dict:
    if figure == "supp_fig1":
        metric, ylabel = "mAP", f"mAP (%), {plan.training_set} val split"
    else:
        metric = f"{plan.set_label(plan.test_sets[0])} Hard"
        ylabel = "mAP (%)" if figure == "supp_fig2" else f"mAP (%), {metric}"
    panels = [
        {
            "parameter": parameter,
            "label": SWEEPS[parameter][4],
            "points": [
                {"value": value, "model": model, "cells": figure_cells(plan, figure, model)} for value, model in values
            ],
        }
        for parameter, values in plan.figure_sweeps[figure].items()
    ]
    return {
        "title": f"{FIGURE_TITLES[figure]} (K={plan.K}, L={plan.L})",
        "metric": metric,
        "ylabel": ylabel,
        # the paper's numbers are drawn for the real data only: beside the demo's they would flatten its curves
        "paper_in_plot": not plan.config.get("demo"),
        "baseline": {"label": f"first round ({FIRST_ROUND_LABEL})", "cells": figure_cells(plan, figure)},
        "panels": panels,
    }
