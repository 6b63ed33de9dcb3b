"""Database-side augmentation (DBA) followed by query expansion: the third block of Table 5.

DBA replaces every database vector by an expansion of it over its own database neighbours, with the same
aggregation as the QE method it is paired with (Gordo et al., ECCV 2020, "LAttQE", whose numbers CSA's Table 5
copies; Arandjelović & Zisserman, CVPR 2012 for DBA itself).  With d the vector, d_{ν_1} ... d_{ν_n} its n
most similar other database vectors (the database graph, :mod:`csa_rerank.graph`, d_{ν_0} := d)::

    ADBA    d̃ = normalise( Σ_{i=0..n} d_{ν_i} )
    ADBAwD  d̃ = normalise( Σ_{i=0..n} (n - i)/n · d_{ν_i} )
    αDBA    d̃ = normalise( Σ_{i=0..n} max(d · d_{ν_i}, 0)^α · d_{ν_i} )
    DDBA    d̃ = normalise(w_d),  w_d the weights of DQE's linear SVM trained for d: positives d and its n
            neighbours, negatives its ``n_negatives`` least similar database vectors (the bottom of d's ranking,
            the graph's ``far`` columns)

The query side then works in the augmented space, as those papers do: the list is first re-sorted by q · d̃
(the first-round search against the augmented database), then the paired QE method (:mod:`.qe`) expands q with
the augmented vectors of that list's top and rescores the list against the augmented database.

Defaults: n_dba and n_qe as the QE method's own default (:mod:`.qe`: AQE 2, AQEwD 3, αQE 2, DQE 2, with
α = 3 and DQE's 50 negatives and C = 1), for the same reason: LAttQE chose them on a validation set whose
values are not in this project's reference material.

Memory: the augmented database [N, D] float32 and the neighbour lists [N, n + 1] int64 (DDBA: also the
negatives' ids and scores [N, n_negatives]), plus one block at a time: ``BLOCK_ROWS`` rows ([b, n + 1, D]
gathered vectors) or, for DDBA, ``SVM_BLOCK`` SVMs of n + 1 + n_negatives samples in float64.

Shapes: query [Q, D], db [N, D] float32 L2-normalised; ranks [Q, N'] int64; every method returns [Q, N'].
``graph``: the database's neighbour graph (:mod:`csa_rerank.graph`), built once for every method that reads
it; without it each method builds the columns it reads, with the same lists.
"""

from __future__ import annotations

import numpy as np
import torch

from csa_rerank import graph as db_graph
from csa_rerank.methods._common import as_tensor, l2_normalise, list_scores, sort_list
from csa_rerank.methods.qe import (
    aggregate,
    alpha_weights,
    average_expansion,
    average_weights,
    decay_weights,
    discriminative_expansion,
    linear_svm,
)

BLOCK_ROWS = 4096  # database rows augmented at a time
SVM_BLOCK = 1024  # DDBA: SVMs trained at a time


def augment(db: np.ndarray, n: int, weighting: str, alpha: float = 3.0, graph=None) -> np.ndarray:
    """ADBA ("average"), ADBAwD ("decay") or αDBA ("alpha") of a database [N, D] -> [N, D] float32.

    ``graph``: the database's neighbour graph (csa_rerank.graph), else built here."""
    db_t = as_tensor(db)
    neighbours = torch.from_numpy(db_graph.columns(db, graph, n + 1).near_ids)  # [N, n + 1], the row itself first
    out = torch.empty_like(db_t)
    for start in range(0, len(db_t), BLOCK_ROWS):
        vectors = db_t[neighbours[start : start + BLOCK_ROWS]]  # [b, n + 1, D]
        if weighting == "average":
            weights = average_weights(n)
        elif weighting == "decay":
            weights = decay_weights(n)
        elif weighting == "alpha":
            weights = alpha_weights(torch.einsum("bd,bnd->bn", vectors[:, 0], vectors), alpha)
        else:
            raise ValueError(f"weighting={weighting!r}; choose average, decay or alpha")
        out[start : start + BLOCK_ROWS] = aggregate(vectors, weights)
    return out.numpy()


def discriminative_augment(db: np.ndarray, n: int, n_negatives: int, c: float = 1.0, graph=None) -> np.ndarray:
    """DDBA of a database [N, D] -> [N, D] float32: each vector replaced by its normalised DQE SVM weights.

    ``graph``: the database's neighbour graph (csa_rerank.graph), else built here."""
    db_t = as_tensor(db)
    lists = db_graph.columns(db, graph, n + 1, n_negatives)
    neighbours = torch.from_numpy(lists.near_ids)  # [N, n + 1], the row itself first
    farthest = lists.far_ids  # [N, n_neg], the least similar rows
    labels = torch.cat([torch.ones(n + 1), -torch.ones(n_negatives)])
    out = torch.empty_like(db_t)
    for start in range(0, len(db_t), SVM_BLOCK):
        stop = min(start + SVM_BLOCK, len(db_t))
        samples = db_t[torch.cat([neighbours[start:stop], torch.from_numpy(farthest[start:stop])], dim=1)]
        w, _ = linear_svm(samples, labels.expand(stop - start, -1), c)  # samples [b, n + 1 + n_neg, D]
        out[start:stop] = l2_normalise(w)
    return out.numpy()


def _first_round(query: torch.Tensor, db_aug: torch.Tensor, ranks: np.ndarray) -> np.ndarray:
    """The list re-sorted by similarity to the augmented database (the first search after DBA)."""
    return sort_list(ranks, list_scores(query, db_aug, ranks))


def _averaging_pair(
    query: np.ndarray,
    db: np.ndarray,
    ranks: np.ndarray,
    n_dba: int,
    n_qe: int,
    weighting: str,
    alpha: float = 3.0,
    graph=None,
) -> np.ndarray:
    """DBA with ``weighting``, then the same-weighted QE in the augmented space.  [Q, N'] -> [Q, N']."""
    db_aug = as_tensor(augment(db, n_dba, weighting, alpha, graph))
    query_t = as_tensor(query)
    first = _first_round(query_t, db_aug, ranks)
    expanded = average_expansion(query_t, db_aug, first, n_qe, weighting, alpha)
    return sort_list(first, list_scores(expanded, db_aug, first))


def adba_aqe(
    query: np.ndarray, db: np.ndarray, ranks: np.ndarray, n_dba: int = 2, n_qe: int = 2, graph=None
) -> np.ndarray:
    """ADBA + AQE.  [Q, N'] -> [Q, N']."""
    return _averaging_pair(query, db, ranks, n_dba, n_qe, "average", graph=graph)


def adbawd_aqewd(
    query: np.ndarray, db: np.ndarray, ranks: np.ndarray, n_dba: int = 3, n_qe: int = 3, graph=None
) -> np.ndarray:
    """ADBAwD + AQEwD.  [Q, N'] -> [Q, N']."""
    return _averaging_pair(query, db, ranks, n_dba, n_qe, "decay", graph=graph)


def alpha_dba_alpha_qe(
    query: np.ndarray,
    db: np.ndarray,
    ranks: np.ndarray,
    n_dba: int = 2,
    n_qe: int = 2,
    alpha: float = 3.0,
    graph=None,
) -> np.ndarray:
    """αDBA + αQE.  [Q, N'] -> [Q, N']."""
    return _averaging_pair(query, db, ranks, n_dba, n_qe, "alpha", alpha, graph)


def ddba_dqe(
    query: np.ndarray,
    db: np.ndarray,
    ranks: np.ndarray,
    n_dba: int = 2,
    n_qe: int = 2,
    n_negatives: int = 50,
    c: float = 1.0,
    graph=None,
) -> np.ndarray:
    """DDBA + DQE: the list sorted by the decision value of DQE's SVM trained on augmented vectors."""
    db_aug = as_tensor(discriminative_augment(db, n_dba, n_negatives, c, graph))
    query_t = as_tensor(query)
    first = _first_round(query_t, db_aug, ranks)
    w, b = discriminative_expansion(query_t, db_aug, first, n_qe, n_negatives, c)
    return sort_list(first, list_scores(w, db_aug, first) + b[:, None])
