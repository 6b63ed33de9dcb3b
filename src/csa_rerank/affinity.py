"""Affinity sequences (the paper's Eq. 1): each candidate described by its similarities to L anchor images.

With unit-norm descriptors every dot product is a cosine.  Two layouts, both the authors':

- test (``test.py``): tokens = [query; top-K db images], anchors = [query; top-(L-1) db images], so the query is
  token 0 and anchor 0 and the affinity has shape [K+1, L];
- training (``RerankDataset_TopKSIM``): the neighbour list of a training image starts with the image itself, tokens
  = its first K neighbours, anchors = its first L neighbours, shape [K, L].
"""

from __future__ import annotations

import torch


def test_affinity(query: torch.Tensor, db: torch.Tensor, ranks: torch.Tensor, K: int, L: int) -> torch.Tensor:
    """Affinity sequences of Q queries.

    Args:
        query: [Q, D] query descriptors.
        db: [N, D] database descriptors.
        ranks: [Q, >= max(K, L-1)] first-round ranking (db row indices, best first).
    Returns:
        [Q, K+1, L]: row 0 is the query, row j the j-th ranked candidate; column 0 is the query, column c the
        c-th ranked db image.
    """
    if ranks.shape[1] < max(K, L - 1):
        raise ValueError(f"ranking has {ranks.shape[1]} columns, fewer than K={K} / L-1={L - 1}")
    tokens = torch.cat([query[:, None, :], db[ranks[:, :K]]], dim=1)  # [Q, K+1, D]
    anchors = torch.cat([query[:, None, :], db[ranks[:, : L - 1]]], dim=1)  # [Q, L, D]
    return torch.bmm(tokens, anchors.transpose(1, 2))


def train_affinity(features: torch.Tensor, neighbours: torch.Tensor, K: int, L: int) -> torch.Tensor:
    """Affinity sequences of training samples.

    Args:
        features: [N, D] descriptors of the training images.
        neighbours: [B, >= max(K, L)] neighbour lists (row indices into ``features``), position 0 = the image.
    Returns:
        [B, K, L].
    """
    tokens = features[neighbours[:, :K]]  # [B, K, D]
    anchors = features[neighbours[:, :L]]  # [B, L, D]
    return torch.bmm(tokens, anchors.transpose(1, 2))
