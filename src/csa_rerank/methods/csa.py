"""Ours: CSA re-ranking (the paper's method) behind the interface of the compared methods (:mod:`csa_rerank.methods`).

Every query's top-K candidates are described by their affinity sequences (Eq. 1: cosines to the query and its
top L - 1 images), refined by the trained transformer (:class:`csa_rerank.model.CSAReranker`) and re-ordered by
the cosine of each refined candidate with the refined query (Eq. 10); positions K.. keep their first-round order.
The composition, descriptors -> affinity sequences -> scores -> new ranking, is
:func:`csa_rerank.rerank.rerank_by_affinity`, shared with CRL; the model's side is :func:`scorer`
(:func:`csa_rerank.rerank.csa_scores` with its precision and batch settings).

- :func:`rerank` ``(query, db, ranks, model=..., K=1024, L=512, ...)`` -> new rankings [Q, N'];
- :func:`scores`, same arguments -> the [Q, K] scores of ``ranks[:, :K]`` in first-round order (what the
  pipeline's re-ranking files keep beside the new order);
- :func:`scorer` -> the model as a function of affinity sequences, for callers that hold them already (the
  pipeline's affinity files, the validation split).

The defaults K = 1024 and L = 512 are the paper's; L must be the one the model was trained with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from csa_rerank.model import CSAReranker, load_model
from csa_rerank.rerank import Scorer, affinity_scores, csa_scores, rerank_topk


def load(model: CSAReranker | str | Path, L: int, device: torch.device | str | None = None) -> CSAReranker:
    """The re-ranker: ``model`` itself or the model file at that path (on ``device``, default the CPU), checked to
    take affinity sequences of ``L`` anchors."""
    if isinstance(model, str | Path):
        name, model = str(model), load_model(model, device if device is not None else "cpu")
    elif isinstance(model, CSAReranker):
        name = "the model"
    else:
        raise TypeError(f"model must be a CSAReranker or the path of a model file, not {type(model).__name__}")
    if model.config.anchors != L:
        raise ValueError(f"{name} was trained with L={model.config.anchors} anchors, not L={L}")
    return model


def scorer(
    model: CSAReranker,
    precision: str = "auto",
    batch_size: int = 8,
    onednn_graph: bool = True,
    device: torch.device | str | None = None,
) -> Scorer:
    """The model as a scorer of affinity sequences: [B, K+1, L] (row 0 = the query) -> [B, K] float32 scores
    (:func:`csa_rerank.rerank.csa_scores`: eval mode, ``batch_size`` sequences at a time, on ``device``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; it must be at least 1")

    def score(affinity: torch.Tensor | np.ndarray) -> np.ndarray:
        return csa_scores(
            model, affinity, batch_size=batch_size, precision=precision, device=device, onednn_graph=onednn_graph
        )

    return score


def scores(
    query: np.ndarray | torch.Tensor,
    db: np.ndarray | torch.Tensor,
    ranks: np.ndarray,
    model: CSAReranker | str | Path,
    K: int = 1024,
    L: int = 512,
    precision: str = "auto",
    batch_size: int = 8,
    onednn_graph: bool = True,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """CSA scores [Q, K] float32 of every query's top K candidates ``ranks[:, :K]``, in that order.

    Arguments as :func:`rerank`.  The affinity sequences are built ``batch_size`` queries at a time where the
    descriptors are (the CPU for arrays) and scored on ``device``.
    """
    model = load(model, L, device)
    query, db = _descriptors(query, db)
    ranks = _rankings(ranks, len(query), K, L, db.shape[0])
    score = scorer(model, precision, batch_size, onednn_graph, device)
    return affinity_scores(query, db, ranks, K, L, score, batch_size)


def rerank(
    query: np.ndarray | torch.Tensor,
    db: np.ndarray | torch.Tensor,
    ranks: np.ndarray,
    model: CSAReranker | str | Path,
    K: int = 1024,
    L: int = 512,
    precision: str = "auto",
    batch_size: int = 8,
    onednn_graph: bool = True,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """CSA re-ranking of the top K of every first-round list (positions K.. keep their order).

    Args:
        query: [Q, D], db: [N, D] float32 unit descriptors (arrays, or tensors on the device to build the
            affinity sequences on).
        ranks: [Q, N'] integer first-round rankings (db indices, best first), N' >= max(K, L - 1).
        model: a :class:`~csa_rerank.model.CSAReranker`, or the path of its model file (``model.pt``).
        K: candidates re-ranked; L: anchors, the model's input width.
        precision, onednn_graph: as in :func:`csa_rerank.rerank.csa_scores` ("auto": fp16 autocast on CUDA,
            bf16 on the CPU).
        batch_size: queries per forward pass.
        device: where the model runs; None = where it is (the CPU for a model file).
    Returns:
        [Q, N'] re-ranked lists, of the dtype of ``ranks``.
    """
    new_scores = scores(query, db, ranks, model, K, L, precision, batch_size, onednn_graph, device)
    return rerank_topk(ranks, new_scores)


def _descriptors(query, db) -> tuple[torch.Tensor, torch.Tensor]:
    """The descriptors as float32 tensors (arrays: on the CPU, sharing memory where possible), checked."""
    out = []
    for name, x in (("query", query), ("db", db)):
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)
            if not np.issubdtype(x.dtype, np.floating):
                raise TypeError(f"{name} must hold float descriptors, not {x.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        elif not x.is_floating_point():
            raise TypeError(f"{name} must hold float descriptors, not {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be [rows, D], got shape {tuple(x.shape)}")
        out.append(x.float())
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"query descriptors are {out[0].shape[1]}-d, database descriptors {out[1].shape[1]}-d")
    return out[0], out[1]


def _rankings(ranks, n_queries: int, K: int, L: int, n_db: int) -> np.ndarray:
    """``ranks`` as an integer array, checked against the queries, K, L and the database size."""
    ranks = np.asarray(ranks)
    if not np.issubdtype(ranks.dtype, np.integer):
        raise TypeError(f"ranks must hold database indices (integers), not {ranks.dtype}")
    if ranks.ndim != 2 or len(ranks) != n_queries:
        raise ValueError(f"ranks must be [Q={n_queries}, N'], got shape {ranks.shape}")
    if K < 1 or L < 1:
        raise ValueError(f"K={K} and L={L} must be at least 1")
    if max(K, L - 1) > min(ranks.shape[1], n_db):
        raise ValueError(
            f"K={K} candidates and L-1={L - 1} anchor images need that many ranked database images; the rankings "
            f"hold {ranks.shape[1]} of the {n_db} database images"
        )
    return ranks
