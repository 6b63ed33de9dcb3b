"""CRL: collaborative image relevance learning (Ouyang, Zhou, Wang, Tian, Li, IEEE TMM 2020), Table 5 "CRL".

CRL learns the relevance of each top-ranked candidate to the query from *contextual* similarities: how the
candidate and the query relate to the same top-ranked images, rather than from their direct similarity alone.
The CSA paper re-implemented it on its own features ("we re-implement it with our features by our own") and
released no code, so this is our re-implementation of that idea on the interface the rest of the project uses.

Context vectors are CSA's affinity rows (:mod:`csa_rerank.affinity`): with the L anchors = the query and its top
L - 1 database images, the query's context is a_0 = [q . q, q . d_1, ..., q . d_(L-1)] and candidate j's is
a_j = [d_j . q, d_j . d_1, ..., d_j . d_(L-1)].  The relevance network scores each (query, candidate) pair::

    x_j      = [a_j ; a_0 * a_j]                     (concatenation; * elementwise)     [B, K, 2L]
    r_j      = MLP(x_j) = W_3 relu(W_2 relu(W_1 x_j + b_1) + b_2) + b_3                 [B, K]

and the top-K candidates are re-ranked by r_j (the rest keep their order), as CSA re-ranks its top K.
Training (:func:`fit`) uses CSA's training samples (:class:`csa_rerank.training.TrainingSamples`): every training
image is a query, its neighbours 1 .. K_train - 1 are the candidates, labelled relevant (y_j = 1) when they share
its cluster.  The loss is listwise, the softmax cross-entropy of each query's list (the form of CSA's Eq. 6 with
r_j as logits), over the queries with at least one relevant candidate::

    loss = -log( sum_j y_j exp(r_j) / sum_j exp(r_j) )

Adam.  K at test should not exceed K_train much: the network never sees candidates ranked beyond K_train (on the
real 128-D ROxf descriptors, trained with K_train = 64, re-ranking the top 1024 loses 5 to 6 mAP points (Easy,
Medium) to the first round, while re-ranking the top 64 gains 1 to 2).

What is CRL's and what is ours: the relevance learned from the similarities of the query and of each candidate to
the top-ranked images, trained on labelled data and used to re-rank the top of the list, is CRL's.  The original
network is "a lightweight CNN" over such a relevance matrix whose exact layers, context length and training
settings were not available to us: the two-hidden-layer MLP on [a_j ; a_0 * a_j] (the product lets it compare the
two contexts entry by entry, our reading of "collaborative"), the widths, L, K and the optimiser settings are our
choices, all parameters (defaults: L = 64, hidden 128, K_train = K = 64, 20 epochs, batches of 64 queries, Adam
lr 1e-3).  So is the listwise loss: a pointwise binary cross-entropy on the same labels learned little more than
the base rate and ranked below the first round, even on its training queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from csa_rerank.methods._common import as_tensor, fitted_weights, train_minibatches
from csa_rerank.rerank import rerank_by_affinity
from csa_rerank.training import TrainingSamples


@dataclass(frozen=True)
class CRLConfig:
    """Architecture (our choices, see the module docstring)."""

    anchors: int = 64  # L: context length (the query + its top L - 1 images)
    hidden: int = 128  # width of the two hidden layers


def pair_inputs(affinity: torch.Tensor) -> torch.Tensor:
    """Network inputs of the candidates: affinity [B, T, L] (row 0 = the query) -> [a_j ; a_0 * a_j], [B, T-1, 2L]."""
    candidates = affinity[:, 1:]
    return torch.cat([candidates, affinity[:, :1] * candidates], dim=-1)


class RelevanceNet(nn.Module):
    """affinity [B, T, L] -> relevance logits [B, T-1] of tokens 1 .. T-1 to token 0."""

    def __init__(self, config: CRLConfig):
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.anchors, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        return self.mlp(pair_inputs(affinity)).squeeze(-1)


def listwise_loss(logits: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Mean over lists with a relevant item of -log(sum_relevant exp(r) / sum_all exp(r)): logits, relevant
    [B, C] -> scalar (0, still attached to the graph, when no list has a relevant item)."""
    has_relevant = relevant.any(dim=1)
    if not has_relevant.any():
        return logits.sum() * 0.0
    logits, relevant = logits[has_relevant], relevant[has_relevant]
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~relevant, -math.inf), dim=1)).mean()


def fit(
    features: np.ndarray | torch.Tensor,
    neighbours: np.ndarray | torch.Tensor,
    clusters: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor | None = None,
    K_train: int = 64,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    **architecture,
) -> dict:
    """Train the relevance network (see the module docstring).

    Args:
        features: [N, D] unit descriptors; neighbours: [N, >= max(K_train, L)] neighbour lists, the image itself
            first; clusters: [N] cluster ids; queries: indices of the images used as queries (None = all).
        architecture: fields of :class:`CRLConfig`.
    Returns:
        ``{"config": dict, "state_dict": {name: tensor}, "losses": [epochs] float64 tensor}`` (mean loss of every
        epoch); loadable with ``torch.load(weights_only=True)``.
    """
    config = CRLConfig(**architecture)
    samples = TrainingSamples([features], [neighbours], [clusters], None if queries is None else [queries])
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the initialisation leaves the caller's random stream alone
        torch.manual_seed(seed)
        model = RelevanceNet(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)

        def batch_loss(ids: torch.Tensor) -> torch.Tensor:
            affinity, labels = samples.batch(ids, K_train, config.anchors, "cpu")  # [B, K, L], [B, K]
            return listwise_loss(model(affinity), labels[:, 1:])

        losses = train_minibatches(model, optimizer, batch_loss, len(samples), batch_size, epochs, generator)
    return fitted_weights(config, model, losses)


def load(weights: dict) -> RelevanceNet:
    """The network of :func:`fit`'s output (or of its ``torch.load``-ed file), in eval mode."""
    model = RelevanceNet(CRLConfig(**weights["config"]))
    model.load_state_dict(weights["state_dict"])
    return model.eval()


@torch.no_grad()
def rerank(
    query: np.ndarray, db: np.ndarray, ranks: np.ndarray, weights: dict, K: int = 64, batch_size: int = 16
) -> np.ndarray:
    """CRL re-ranking of the top K of every list by the learned relevance (positions K.. keep their order).

    Args:
        query: [Q, D], db: [N, D] unit descriptors; ranks: [Q, N'] first-round rankings (N' >= L - 1).
        weights: the output of :func:`fit` (or its saved file).
        K: candidates re-ranked (at most N'); keep it near the K_train of :func:`fit`.
    Returns:
        [Q, N'] re-ranked lists.
    """
    model = load(weights)
    ranks = np.asarray(ranks)
    K = min(K, ranks.shape[1])

    def relevance(affinity: torch.Tensor) -> np.ndarray:  # [B, K+1, L] -> [B, K]
        return model(affinity).numpy()

    return rerank_by_affinity(as_tensor(query), as_tensor(db), ranks, K, model.config.anchors, relevance, batch_size)
