"""The revisitop evaluation protocol (Radenović et al., CVPR 2018), as ``revisitop/python/evaluate.py``.

- ``ranks`` is [N_db, N_q] in revisitop (column = ranked db indices); here it is [N_q, N_db] (row = one query),
  the layout every other stage uses.
- Junk items are removed from the ranking before scoring (each positive moves up by the number of junk items
  ranked above it).
- AP is the trapezoidal rule over the recall steps; positives absent from the ranking contribute nothing.
- mP@k counts positives among the first ``min(k, position of the last positive)`` items, as revisitop does (so a
  query with fewer than k positives all ranked first is not penalised).
- Queries without positives are left out of every mean.
- Protocols: Easy = easy vs junk+hard; Medium = easy+hard vs junk; Hard = hard vs junk+easy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KAPPAS = (1, 5, 10)
TOP_SHOWN = 20  # first results of each query kept in an evaluation file, for the pictures (csa_rerank.per_query)
PROTOCOLS = ("easy", "medium", "hard")


def average_precision(positive_positions: np.ndarray, n_positives: int) -> float:
    """Trapezoidal AP of sorted 0-based positions (junk already removed) of ``n_positives`` positives."""
    ap = 0.0
    for j, r in enumerate(positive_positions):
        precision_before = 1.0 if r == 0 else j / r
        precision_at = (j + 1) / (r + 1)
        ap += (precision_before + precision_at) / 2.0 / n_positives
    return ap


def _positions(ranking: np.ndarray, items) -> np.ndarray:
    return np.flatnonzero(np.isin(ranking, np.asarray(list(items), dtype=np.int64)))


def query_metrics(ranking: np.ndarray, ok: Sequence[int], junk: Sequence[int], kappas=KAPPAS):
    """AP and P@k of one ranked list; None when the query has no positives."""
    if len(ok) == 0:
        return None
    pos = _positions(ranking, ok)
    junkpos = _positions(ranking, junk)
    # shift every positive up by the number of junk items ranked before it
    pos = pos - np.searchsorted(junkpos, pos)
    ap = average_precision(pos, len(ok))
    precisions = []
    pos1 = pos + 1
    for k in kappas:
        if len(pos1) == 0:
            precisions.append(0.0)
            continue
        kq = min(int(pos1.max()), k)
        precisions.append(float((pos1 <= kq).sum()) / kq)
    return ap, precisions


def protocol_lists(gnd_entry: dict, protocol: str) -> tuple[list[int], list[int]]:
    """(ok, junk) index lists of one query under ``protocol``."""
    easy, hard = list(gnd_entry.get("easy", [])), list(gnd_entry.get("hard", []))
    junk = list(gnd_entry.get("junk", []))
    if protocol == "easy":
        return easy, junk + hard
    if protocol == "medium":
        return easy + hard, junk
    if protocol == "hard":
        return hard, junk + easy
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def per_query(ranks: np.ndarray, gnd: Sequence[dict], kappas=KAPPAS) -> dict[str, list]:
    """Per-query metrics for the three protocols: ``{protocol: [(AP, [P@k, ...]) or None, ...]}``, one entry per
    query in ``gnd`` order, fractions in [0, 1]; None for a query without positives under that protocol.

    Args:
        ranks: [N_q, N_db] ranked db indices per query (a whole-database ranking for exact AP).
        gnd: the ``gnd`` list of a revisitop ground-truth file (one dict per query).
    """
    if len(ranks) != len(gnd):
        raise ValueError(f"ranking has {len(ranks)} queries, ground truth {len(gnd)}")
    return {
        protocol: [
            query_metrics(np.asarray(ranking), *protocol_lists(entry, protocol), kappas)
            for ranking, entry in zip(ranks, gnd, strict=True)
        ]
        for protocol in PROTOCOLS
    }


def evaluate(ranks: np.ndarray, gnd: Sequence[dict], kappas=KAPPAS) -> dict:
    """mAP and mP@k (both in %) for the three protocols: the means of :func:`per_query` over the queries with
    positives.

    Args:
        ranks: [N_q, N_db] ranked db indices per query (a whole-database ranking for exact AP).
        gnd: the ``gnd`` list of a revisitop ground-truth file (one dict per query).
    Returns:
        {"easy": {"mAP": float, "mP@1": float, ...}, "medium": {...}, "hard": {...}}
    """
    out = {}
    for protocol, metrics in per_query(ranks, gnd, kappas).items():
        kept = [m for m in metrics if m is not None]
        aps, precisions = [m[0] for m in kept], [m[1] for m in kept]
        result = {"mAP": 100.0 * float(np.mean(aps)) if aps else float("nan")}
        mean_p = np.mean(precisions, axis=0) if precisions else [float("nan")] * len(kappas)
        for k, p in zip(kappas, mean_p, strict=True):
            result[f"mP@{k}"] = 100.0 * float(p)
        out[protocol] = result
    return out


def per_query_table(ranks: np.ndarray, gnd: Sequence[dict], kappas=KAPPAS) -> dict[str, dict[str, list]]:
    """:func:`per_query` as JSON-ready columns in %: ``{protocol: {"AP": [...], "P@1": [...], ...}}``, None where
    a query has no positives; the mean of a column's numbers is the protocol's mAP / mP@k."""
    table = {}
    for protocol, metrics in per_query(ranks, gnd, kappas).items():
        columns = {"AP": [None if m is None else 100.0 * m[0] for m in metrics]}
        for i, k in enumerate(kappas):
            columns[f"P@{k}"] = [None if m is None else 100.0 * m[1][i] for m in metrics]
        table[protocol] = columns
    return table
