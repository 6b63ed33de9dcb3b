"""Table layouts: which evaluation file and which value fills each cell of a paper table, one function per table.

A layout is ``{"label_header": ..., "rows": [{"label": ..., "cells": {column: {"file": ..., "key": [...]}},
"text": {column: ...}}]}`` (csa_rerank.tables reads it).  Row labels and column headers are the paper's, so
csa_rerank.tables can put the published values beside them; rows that cannot be computed with the configured
experiments are left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from csa_rerank import registry
from csa_rerank.tables import PAPER

from .paths import csa, evaluation, method_lists, model_summary

if TYPE_CHECKING:
    from .core import Plan

PROTOCOL_LABELS = {"medium": "Medium", "hard": "Hard"}
FIRST_ROUND_LABEL = "R-GeM"
# Table 6's compared methods and their complexities as the paper gives them, in its row order.
TABLE6_METHODS = {
    "DFS": {"Space Cplx.": "O(Nd + Nk)", "Time Cplx.": "O(tK^2)"},
    "GSS": {"Space Cplx.": "O(Nd + Nk)", "Time Cplx.": "O(Nd + k^2d^2)"},
    "αQE": {"Space Cplx.": "O(Nd)", "Time Cplx.": "O(Nd + kd)"},
}
OURS_COMPLEXITY = {"Space Cplx.": "O(Nd)", "Time Cplx.": "O(KLd + K^2)"}


def paper_order(table: str, labels) -> list[str]:
    """Row labels (a table's training sets or cross features) in the order of the paper's rows of ``table``, those
    the paper does not show after them by name: the rows' order is the paper's whatever the order of the
    configuration's mapping (csa_rerank.plan.canonical)."""
    paper_rows = list(PAPER[table])

    def position(label: str) -> tuple[int, str]:
        return (paper_rows.index(label), "") if label in paper_rows else (len(paper_rows), label)

    return sorted(labels, key=position)


def map_cells(plan: Plan, sets: list[str], reranker=None, K=None, L=None, network=None) -> dict:
    """Cells '<set> <protocol>' -> (evaluation file, [protocol, 'mAP']) for the given sets, Medium then Hard;
    none on a set where the network's ranking cannot be computed (:meth:`Plan.evaluable`)."""
    network = network or plan.first_round
    cells = {}
    for protocol, protocol_label in PROTOCOL_LABELS.items():
        for testset in filter(lambda testset: plan.evaluable(testset, network), sets):
            cells[f"{plan.set_label(testset)} {protocol_label}"] = {
                "file": evaluation(testset, network, reranker, K, L),
                "key": [protocol, "mAP"],
            }
    return cells


def _first_round_row(plan: Plan) -> dict:
    return {"label": FIRST_ROUND_LABEL, "cells": map_cells(plan, plan.test_sets)}


def table1(plan: Plan) -> dict:
    """mAP and latency of the default model against the number K of re-ranked candidates."""
    first = _first_round_row(plan)
    first["text"] = {"Re-ranking latency (ms)": "0.0"}
    rows = [first]
    for k in plan.experiments["table1_K"]:
        cells = map_cells(plan, plan.test_sets, csa(plan.default_training_set), k, plan.L)
        cells["Re-ranking latency (ms)"] = {
            "file": evaluation(plan.test_sets[0], plan.first_round, csa(plan.default_training_set), k, plan.L),
            "key": ["latency_ms"],
        }
        rows.append({"label": f"R-GeM+Ours(K={k})", "cells": cells})
    return {"label_header": "Method", "rows": rows}


def table2(plan: Plan) -> dict:
    """mAP against the anchor length L: one model per L (plan.models)."""
    rows = [_first_round_row(plan)]
    for anchors in plan.experiments["table2_L"]:
        model = plan.anchor_model(anchors)
        cells = map_cells(plan, plan.test_sets, csa(model), plan.K, anchors)
        rows.append({"label": f"R-GeM+Ours(L={anchors})", "cells": cells})
    return {"label_header": "Method", "rows": rows}


def table3(plan: Plan) -> dict:
    """mAP and sample count of the model of each training set."""
    rows = []
    for name in plan.training_sets:
        cells = map_cells(plan, plan.test_sets, csa(name), plan.K, plan.L)
        cells["Training nums"] = {"file": model_summary(name), "key": ["n_samples"]}
        rows.append({"label": name, "cells": cells})
    return {"label_header": "Training Dataset", "rows": rows}


def _cross_feature_rows(plan: Plan, features: dict[str, str]) -> list[dict]:
    """Each network's first round, then re-ranked by the model trained on the first-round network's samples."""
    rows = []
    for label, network in features.items():
        cells = map_cells(plan, plan.test_sets, network=network)
        rows.append({"label": label, "cells": cells, "text": {"Training feature": "-"}})
        cells = map_cells(plan, plan.test_sets, csa(plan.default_training_set), plan.K, plan.L, network=network)
        rows.append({"label": f"{label}+Ours", "cells": cells, "text": {"Training feature": FIRST_ROUND_LABEL}})
    return rows


def table4(plan: Plan) -> dict:
    """Cross-feature testing with the whitened features of supplementary table 1, labelled without "-W"."""
    return {"label_header": "Method", "rows": _cross_feature_rows(plan, plan.cross_features_table4)}


def supp_table1(plan: Plan) -> dict:
    """Cross-feature testing, raw and whitened ("-W") features."""
    return {"label_header": "Method", "rows": _cross_feature_rows(plan, plan.cross_features)}


def _ours_rows(plan: Plan) -> list[dict]:
    """CSA with each training set's model, alone and re-ranking the lists of the methods marked plus_ours."""
    rows = []
    for name in plan.training_sets:
        rows.append({"label": f"Ours({name})", "cells": map_cells(plan, plan.eval_sets, csa(name), plan.K, plan.L)})
        for entry in registry.METHODS:
            if entry.plus_ours and entry.label in plan.methods:
                lists = method_lists(plan.first_round, entry.label)
                cells = map_cells(plan, plan.eval_sets, csa(name), plan.K, plan.L, lists)
                rows.append({"label": f"{entry.label}+Ours({name})", "cells": cells})
    return rows


def table5(plan: Plan) -> dict:
    """Every configured method on every evaluation set, in the registry's order (rows not in the paper marked)."""
    rows = [
        {"label": "R-GeM(No re-ranking)", "cells": map_cells(plan, plan.eval_sets)},
        {"label": "Affinity Feature", "cells": map_cells(plan, plan.eval_sets, "affinity_feature", plan.K, plan.L)},
    ]
    for entry in registry.METHODS:
        if entry.kind == registry.CSA:
            rows += _ours_rows(plan)
        elif entry.label in plan.methods:
            label = entry.label if entry.in_paper else f"{entry.label} (not in the paper)"
            cells = map_cells(plan, plan.eval_sets, network=method_lists(plan.first_round, entry.label))
            rows.append({"label": label, "cells": cells})
    return {"label_header": "Method", "rows": rows}


def _cost_cells(plan: Plan, large: list[str], network: str, reranker=None, K=None, L=None) -> dict:
    """Latency (on the first large set) and memory (on each) of one method."""
    cells = {"Re-ranking latency (ms)": {"file": evaluation(large[0], network, reranker, K, L), "key": ["latency_ms"]}}
    for testset in large:
        cells[f"Memory (GB) {plan.set_label(testset)}"] = {
            "file": evaluation(testset, network, reranker, K, L),
            "key": ["memory_gb"],
        }
    return cells


def table6(plan: Plan) -> dict:
    """Latency and memory on the test sets with distractors (none without distractors)."""
    rows = []
    if plan.distractors:
        large = [plan.with_distractors(t) for t in plan.test_sets]
        for label, text in TABLE6_METHODS.items():
            if label in plan.methods:
                cells = _cost_cells(plan, large, method_lists(plan.first_round, label))
                rows.append({"label": label, "cells": cells, "text": text})
        for k in plan.experiments["table6_K"]:
            cells = _cost_cells(plan, large, plan.first_round, csa(plan.default_training_set), k, plan.L)
            rows.append({"label": f"Ours(K={k})", "cells": cells, "text": dict(OURS_COMPLEXITY)})
    return {"label_header": "Method", "rows": rows}


# Every table the workflow writes, in the order of its targets.
TABLES = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "table5": table5,
    "table6": table6,
    "supp_table1": supp_table1,
}


def table_layout(plan: Plan, table: str) -> dict:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    return TABLES[table](plan)
