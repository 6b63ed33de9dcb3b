"""The revisitop evaluation protocol: AP, mP@k, junk handling, protocols, and the real ROxf numbers."""

from __future__ import annotations

import numpy as np
import pytest

from csa_rerank import evaluate

# ----------------------------------------------------------------------------------------------------------------
# An independent transcription of revisitop's python/evaluate.py (compute_ap / compute_map), np.in1d -> np.isin.
# It works on revisitop's layout ranks [N_db, N_q] and gnd entries with 'ok' / 'junk'.


def _revisitop_compute_ap(ranks, nres):
    ap = 0.0
    recall_step = 1.0 / nres
    for j in np.arange(len(ranks)):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def _revisitop_compute_map(ranks, gnd, kappas):
    total = 0.0
    nq = len(gnd)
    pr = np.zeros(len(kappas))
    prs = np.zeros((nq, len(kappas)))
    nempty = 0
    for i in np.arange(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", []))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        total += _revisitop_compute_ap(pos, len(qgnd))
        pos += 1
        for j in np.arange(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    return total / (nq - nempty), pr / (nq - nempty)


def _revisitop_protocols(ranks_q_by_db, gnd, kappas=(1, 5, 10)):
    """compute_map_and_print's three ground truths -> {protocol: {"mAP": %, "mP@k": %}}."""
    ranks = np.asarray(ranks_q_by_db).T
    lists = {
        "easy": [{"ok": g["easy"], "junk": g["junk"] + g["hard"]} for g in gnd],
        "medium": [{"ok": g["easy"] + g["hard"], "junk": g["junk"]} for g in gnd],
        "hard": [{"ok": g["hard"], "junk": g["junk"] + g["easy"]} for g in gnd],
    }
    out = {}
    for protocol, g in lists.items():
        m, pr = _revisitop_compute_map(ranks, g, list(kappas))
        out[protocol] = {"mAP": 100 * m, **{f"mP@{k}": 100 * p for k, p in zip(kappas, pr, strict=True)}}
    return out


# ----------------------------------------------------------------------------------------------------------------
# average precision


def test_ap_trapezoid_by_hand():
    # positives at 0-based positions 0 and 2, two positives:
    # j=0, r=0: p0 = 1, p1 = 1/1 = 1          -> (1 + 1)/2     = 1
    # j=1, r=2: p0 = 1/2, p1 = 2/3            -> (1/2 + 2/3)/2 = 7/12
    # AP = (1 + 7/12) / 2 = 19/24
    assert evaluate.average_precision(np.array([0, 2]), 2) == pytest.approx(19 / 24, abs=1e-12)
    # positives at 1 and 3, but three positives (one never ranked):
    # j=0, r=1: p0 = 0/1 = 0, p1 = 1/2        -> 1/4
    # j=1, r=3: p0 = 1/3, p1 = 2/4            -> (1/3 + 1/2)/2 = 5/12
    # AP = (1/4 + 5/12) / 3 = (2/3) / 3 = 2/9
    assert evaluate.average_precision(np.array([1, 3]), 3) == pytest.approx(2 / 9, abs=1e-12)
    # a single positive last of four: r=3: p0 = 0/3, p1 = 1/4 -> 1/8
    assert evaluate.average_precision(np.array([3]), 1) == pytest.approx(1 / 8, abs=1e-12)
    # every positive first: AP = 1
    assert evaluate.average_precision(np.arange(5), 5) == pytest.approx(1.0, abs=1e-12)
    assert evaluate.average_precision(np.array([], dtype=np.int64), 4) == 0.0


def test_query_ap_with_junk_before_and_after_positives():
    # ranking: 5(junk) 0(ok) 6 1(ok) 7(junk) 2(ok)
    # raw 0-based positive positions 1, 3, 5; junk at 0 and 4.
    # shifted: 1-1 = 0, 3-1 = 2, 5-2 = 3  (the junk item at 4 precedes only the last positive)
    # j=0, r=0: 1
    # j=1, r=2: (1/2 + 2/3)/2 = 7/12
    # j=2, r=3: (2/3 + 3/4)/2 = 17/24
    # AP = (1 + 14/24 + 17/24) / 3 = 55/72
    ranking = np.array([5, 0, 6, 1, 7, 2])
    ap, _ = evaluate.query_metrics(ranking, ok=[0, 1, 2], junk=[5, 7])
    assert ap == pytest.approx(55 / 72, abs=1e-12)
    # the same as deleting the junk items from the list
    ap_deleted, _ = evaluate.query_metrics(np.array([0, 6, 1, 2]), ok=[0, 1, 2], junk=[])
    assert ap_deleted == pytest.approx(ap, abs=1e-12)
    # without junk removal the positions would be 1, 3, 5 -> a different (lower) AP
    ap_no_junk, _ = evaluate.query_metrics(ranking, ok=[0, 1, 2], junk=[])
    assert ap_no_junk < ap - 0.1


def test_junk_ranked_after_every_positive_changes_nothing():
    ap_a, pr_a = evaluate.query_metrics(np.array([0, 3, 1, 8, 9]), ok=[0, 1], junk=[8, 9])
    ap_b, pr_b = evaluate.query_metrics(np.array([0, 3, 1, 8, 9]), ok=[0, 1], junk=[])
    # positions 0 and 2: AP = 19/24 as in test_ap_trapezoid_by_hand
    assert ap_a == ap_b == pytest.approx(19 / 24, abs=1e-12)
    assert pr_a == pr_b


def test_positives_missing_from_the_ranking_contribute_nothing():
    # ranking holds only one of the two positives, at position 1:
    # j=0, r=1: (0 + 1/2)/2 = 1/4, divided by n_ok = 2 -> 1/8
    ap, precisions = evaluate.query_metrics(np.array([3, 0, 4]), ok=[0, 9], junk=[])
    assert ap == pytest.approx(1 / 8, abs=1e-12)
    # 1-based position 2: P@1: kq = min(2, 1) = 1 -> 0/1; P@5 and P@10: kq = min(2, k) = 2 -> 1/2
    assert precisions == pytest.approx([0.0, 0.5, 0.5])
    # no positive ranked at all
    ap, precisions = evaluate.query_metrics(np.array([3, 4]), ok=[0, 9], junk=[])
    assert ap == 0.0
    assert precisions == [0.0, 0.0, 0.0]


def test_precision_at_k_uses_the_revisitop_kq_rule():
    # positives at 1-based positions 1 and 3
    # k=1: kq = min(3, 1) = 1, #(pos <= 1) = 1 -> 1
    # k=5: kq = min(3, 5) = 3, #(pos <= 3) = 2 -> 2/3   (textbook P@5 would be 2/5)
    # k=10: kq = 3 -> 2/3
    _, precisions = evaluate.query_metrics(np.array([0, 8, 2, 9, 7, 6]), ok=[0, 2], junk=[])
    assert precisions == pytest.approx([1.0, 2 / 3, 2 / 3])
    # positives at 1-based positions 2 and 7
    # k=1: kq = 1 -> 0; k=5: kq = 5 -> 1/5; k=10: kq = min(7, 10) = 7 -> 2/7
    ranking = np.array([9, 0, 10, 11, 12, 13, 1, 14])
    _, precisions = evaluate.query_metrics(ranking, ok=[0, 1], junk=[], kappas=(1, 5, 10))
    assert precisions == pytest.approx([0.0, 1 / 5, 2 / 7])
    # junk shifts the positions used for P@k: junk at 0 moves the positives to 1-based 1 and 6
    # k=1 -> 1; k=5: kq = 5, one positive <= 5 -> 1/5; k=10: kq = 6 -> 2/6
    ranking = np.array([9, 0, 10, 11, 12, 13, 1, 14])
    _, precisions = evaluate.query_metrics(ranking, ok=[0, 1], junk=[9])
    assert precisions == pytest.approx([1.0, 1 / 5, 2 / 6])


def test_query_without_positives_is_none():
    assert evaluate.query_metrics(np.array([0, 1, 2]), ok=[], junk=[1]) is None


# ----------------------------------------------------------------------------------------------------------------
# protocols and the full evaluation


def test_protocol_lists():
    entry = {"easy": [1, 2], "hard": [3], "junk": [4], "bbx": [0, 0, 1, 1]}
    ok, junk = evaluate.protocol_lists(entry, "easy")
    assert sorted(ok) == [1, 2] and sorted(junk) == [3, 4]
    ok, junk = evaluate.protocol_lists(entry, "medium")
    assert sorted(ok) == [1, 2, 3] and sorted(junk) == [4]
    ok, junk = evaluate.protocol_lists(entry, "hard")
    assert sorted(ok) == [3] and sorted(junk) == [1, 2, 4]
    # a missing 'junk' key means no junk
    ok, junk = evaluate.protocol_lists({"easy": [1], "hard": [2]}, "medium")
    assert sorted(ok) == [1, 2] and junk == []
    with pytest.raises(ValueError, match="unknown protocol 'extreme'"):
        evaluate.protocol_lists(entry, "extreme")


def test_evaluate_by_hand_with_queries_lacking_positives():
    gnd = [
        {"easy": [0], "hard": [2], "junk": [1]},
        {"easy": [], "hard": [3], "junk": []},  # no easy positive: left out of Easy
        {"easy": [4], "hard": [], "junk": [0]},  # no hard positive: left out of Hard
    ]
    ranks = np.array(
        [
            [1, 2, 0, 3, 4],
            [3, 0, 1, 2, 4],
            [0, 1, 4, 2, 3],
        ]
    )
    result = evaluate.evaluate(ranks, gnd)
    # Easy   q0: ok {0}, junk {1, 2}: 0 at position 2, two junk before -> 0 -> AP 1, P@k 1
    #        q2: ok {4}, junk {0}: 4 at 2, one junk before -> 1 -> AP (0 + 1/2)/2 = 1/4;
    #            1-based 2: P@1 = 0, P@5 = P@10 = 1/2   (kq = 2)
    #        mAP = (1 + 1/4)/2 = 62.5 %, mP@1 = 50 %, mP@5 = mP@10 = 75 %
    assert result["easy"] == pytest.approx({"mAP": 62.5, "mP@1": 50.0, "mP@5": 75.0, "mP@10": 75.0})
    # Medium q0: ok {0, 2}, junk {1}: positions 1, 2 -> 0, 1 -> AP 1, P@k 1
    #        q1: ok {3} first -> AP 1; q2 as in Easy: 1/4
    #        mAP = 2.25/3 = 75 %, mP@1 = 2/3, mP@5 = mP@10 = 2.5/3
    assert result["medium"] == pytest.approx({"mAP": 75.0, "mP@1": 200 / 3, "mP@5": 250 / 3, "mP@10": 250 / 3})
    # Hard   q0: ok {2}, junk {1, 0}: 2 at 1, junk 1 before, junk 0 after -> 0 -> AP 1
    #        q1: AP 1; q2 left out -> everything 100 %
    assert result["hard"] == pytest.approx({"mAP": 100.0, "mP@1": 100.0, "mP@5": 100.0, "mP@10": 100.0})


def test_evaluate_with_no_positive_anywhere_gives_nan():
    result = evaluate.evaluate(np.array([[0, 1]]), [{"easy": [], "hard": [], "junk": [0]}])
    for protocol in evaluate.PROTOCOLS:
        assert all(np.isnan(v) for v in result[protocol].values())


def test_evaluate_rejects_query_count_mismatch():
    with pytest.raises(ValueError, match="2 queries, ground truth 1"):
        evaluate.evaluate(np.array([[0, 1], [1, 0]]), [{"easy": [0], "hard": [], "junk": []}])


def test_evaluate_matches_revisitop_on_random_rankings():
    rng = np.random.default_rng(7)
    n_db, n_q = 60, 12
    gnd = []
    for _ in range(n_q):
        chosen = rng.permutation(n_db)[: rng.integers(0, 20)]
        cut1, cut2 = sorted(rng.integers(0, len(chosen) + 1, size=2))
        gnd.append({"easy": chosen[:cut1].tolist(), "hard": chosen[cut1:cut2].tolist(), "junk": chosen[cut2:].tolist()})
    gnd[0] = {"easy": [], "hard": [5], "junk": [1, 2]}  # at least one query without easy positives
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    ours = evaluate.evaluate(ranks, gnd)
    reference = _revisitop_protocols(ranks, gnd)
    for protocol in evaluate.PROTOCOLS:
        assert ours[protocol] == pytest.approx(reference[protocol], abs=1e-9)


def test_first_round_on_real_roxford_descriptors(lopq_descriptors, roxford_gnd):
    query, db = lopq_descriptors
    ranks = np.argsort(-(query.astype(np.float64) @ db.T.astype(np.float64)), axis=1, kind="stable")
    result = evaluate.evaluate(ranks, roxford_gnd["gnd"])
    # published in ../shared/data/README.md for these descriptors
    assert round(result["easy"]["mAP"], 2) == 28.89
    assert round(result["medium"]["mAP"], 2) == 21.13
    assert round(result["hard"]["mAP"], 2) == 4.60
    reference = _revisitop_protocols(ranks, roxford_gnd["gnd"])
    for protocol in evaluate.PROTOCOLS:
        assert result[protocol] == pytest.approx(reference[protocol], abs=1e-9)
