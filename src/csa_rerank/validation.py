"""Evaluation on a held-out split of the training set (supplementary Fig. 1): queries and database are its images.

The supplementary material validates the hyperparameters on a split of the training data held out by 3D model.
Here that split is rSfM120k's own ``val`` (whole clusters = 3D models the training never sees): every val image
is a query against the *other* val images (itself left out, as a test query is not part of its database), and
its positives are the images of its cluster.  The first round ranks by inner product of the descriptors; CSA then
re-orders the top-K block exactly as at test time (affinity sequences of Eq. 1 with the query as token and anchor
0, :func:`csa_rerank.rerank.rerank_by_affinity`).  AP is exact: each query's whole ranking is scored, with revisitop's
trapezoidal AP (:func:`csa_rerank.evaluate.query_metrics`) and no junk images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .evaluate import KAPPAS, query_metrics
from .rerank import rerank_by_affinity


def rank_others(features: torch.Tensor, rows: torch.Tensor | np.ndarray) -> np.ndarray:
    """Whole rankings of the images ``rows`` against every other image of ``features``.

    Args:
        features: [N, D] descriptors (unit norm: inner product = cosine).
        rows: [B] indices of the query images.
    Returns:
        [B, N-1] int64 image indices, best first; row b leaves out ``rows[b]`` itself.  Ties keep index order.
    """
    rows = torch.as_tensor(rows, dtype=torch.long, device=features.device)
    scores = features[rows] @ features.T  # [B, N]
    scores[torch.arange(len(rows), device=features.device), rows] = -torch.inf  # the query itself goes last
    order = torch.sort(-scores, dim=1, stable=True).indices
    return order[:, :-1].cpu().numpy()


def cluster_positives(clusters: np.ndarray, row: int) -> np.ndarray:
    """The positives of image ``row``: the other images of its cluster."""
    same = np.flatnonzero(clusters == clusters[row])
    return same[same != row]


def cluster_metrics(ranks: np.ndarray, rows: np.ndarray, clusters: np.ndarray) -> list[tuple[float, list[float]]]:
    """(AP, [P@k for k in KAPPAS]) of each ranked query that has positives (queries without any are left out)."""
    out = []
    for ranking, row in zip(ranks, rows, strict=True):
        metrics = query_metrics(ranking, cluster_positives(clusters, int(row)), [], KAPPAS)
        if metrics is not None:
            out.append(metrics)
    return out


def summarise(metrics: list[tuple[float, list[float]]]) -> dict[str, float]:
    """mAP and mP@k in %, over the queries with positives."""
    if not metrics:
        return {"mAP": float("nan"), **{f"mP@{k}": float("nan") for k in KAPPAS}}
    precisions = np.mean([m[1] for m in metrics], axis=0)
    out = {"mAP": 100.0 * float(np.mean([m[0] for m in metrics]))}
    out.update({f"mP@{k}": 100.0 * float(p) for k, p in zip(KAPPAS, precisions, strict=True)})
    return out


def evaluate_split(
    features: np.ndarray | torch.Tensor,
    clusters: np.ndarray,
    K: int,
    L: int,
    scorer: Callable[[torch.Tensor], np.ndarray],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict:
    """First-round and re-ranked metrics of a split whose images are both the queries and the database.

    Args:
        features: [N, D] unit-norm descriptors of the split.
        clusters: [N] cluster (3D model) of every image: the ground truth.
        K: candidates re-ranked (capped at N-1, the size of each query's database).
        L: anchors (query + top L-1); must not exceed N, since the model's input width is L.
        scorer: maps affinity sequences [B, K+1, L] (row 0 = the query) to scores [B, K] of the candidates.
    Returns:
        {"first_round": {"mAP", "mP@1", "mP@5", "mP@10"}, "rerank": {...}, "K": K used, "L", "n_queries",
        "n_images", "n_clusters"}; metrics in %, over the queries with at least one positive.
    """
    device = torch.device(device)
    features = torch.as_tensor(features, dtype=torch.float32, device=device)
    clusters = np.asarray(clusters)
    n = features.shape[0]
    if len(clusters) != n:
        raise ValueError(f"{n} descriptors but {len(clusters)} cluster labels")
    if L > n:
        raise ValueError(f"L={L} anchors need at least {L} images in the split, it has {n}")
    K = min(K, n - 1)
    first_round, reranked = [], []
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        ranks = rank_others(features, rows)  # [B, N-1]
        first_round += cluster_metrics(ranks, rows, clusters)
        query = features[torch.as_tensor(rows, device=device)]
        reranked += cluster_metrics(rerank_by_affinity(query, features, ranks, K, L, scorer, len(rows)), rows, clusters)
    return {
        "first_round": summarise(first_round),
        "rerank": summarise(reranked),
        "K": K,
        "L": L,
        "n_queries": len(reranked),
        "n_images": n,
        "n_clusters": len(np.unique(clusters)),
    }
