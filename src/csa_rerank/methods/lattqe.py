"""LAttQE and LAttDBA + LAttQE (Gordo, Radenović, Berg, "Attention-based query expansion learning", ECCV 2020).

Query expansion (QE) replaces a query q by an aggregate of q and its top-k database images d_1 .. d_k and searches
again.  LAttQE learns the aggregation: a transformer encoder reads the query and its neighbours (their
descriptors, a positional encoding of their rank and an encoding of their similarity to the query) and outputs
attention weights w_0 .. w_k; the expanded query is the weighted sum of the *original* descriptors, so it stays in
the database's descriptor space::

    tokens   t_i = d_i  (i = 0 .. k, d_0 = q)                                           [B, k+1, D]
    s_i      = t_0 . t_i  (s_0 = 1)                                                     [B, k+1]
    x_i      = W_e t_i + PE(i) + PE(sigma s_i)                                          [B, k+1, width]
    o        = TransformerEncoder(x)   (pre-LN layers, final LayerNorm, no mask)        [B, k+1, width]
    w        = softmax_i( (W_q o_0) . (W_k o_i) / sqrt(width) )                         [B, k+1]
    q_hat    = normalize( sum_i w_i t_i )                                               [B, D]

with PE the sinusoidal encoding of Vaswani et al. applied to a (real-valued) position.  LAttDBA applies the same
model to every database image x (tokens = x and its k nearest other database images) and replaces x by its
aggregate x_hat; LAttQE then runs on the augmented database (neighbours and scores from x_hat).

Training (:func:`fit`), on a training set with cluster labels (rSfM120k in the paper), arranged as CSA's
training samples (:class:`csa_rerank.training.TrainingSamples`): every training image is a query, its tokens are
its first k + 1 neighbours (itself first), and the candidates ranked against its expansion are its neighbours
1 .. K_train - 1, positive when they share its cluster.  The loss is the contrastive loss of the descriptor
networks LAttQE builds on (Radenović et al.'s, with margin m), averaged over all (query, candidate) pairs::

    d_j = || q_hat - x_j ||,    loss_j = 1/2 d_j^2  (positive)   or   1/2 max(0, m - d_j)^2  (negative)

AdamW, shuffled batches of queries.

What is known from the paper and what is ours:

- from the paper: a transformer encoder over the query and its top-k neighbours; rank (positional) encodings and
  the similarity to the query as inputs; the output weights aggregate the original descriptors; the same model
  applied to database items gives LAttDBA; supervised training on rSfM120k with a ranking objective;
- ours (the paper's values were not available to us; every one is a parameter): the layer count, width, heads
  and feed-forward size; the form of the similarity encoding (the sinusoid of sigma s, sigma = 100, i.e. one
  "position" per 0.01 of cosine); the read-out of the weights as one extra single-head attention of the query
  token over all tokens; the contrastive margin (0.85, cirtorch's for ResNet-101 GeM); k; the optimiser
  settings; and the candidate lists taken from the neighbour lists (as for CSA) instead of mined tuples.
  Defaults: k = 16, width 256, 3 layers, 8 heads, feed-forward 4 x width, dropout 0.1, margin 0.85,
  K_train = 64, 20 epochs, batches of 64 queries, AdamW lr 1e-4, weight decay 1e-4.

Weights start near-uniform (the untrained model is close to average query expansion over the k + 1 tokens);
on the real 128-D ROxf descriptors with k = 4, training changed LAttQE little (Medium 22.56 untrained, 22.68
trained) but LAttDBA + LAttQE clearly (21.20 -> 23.04).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from csa_rerank import graph as db_graph
from csa_rerank.methods._common import as_tensor, fitted_weights, list_scores, train_minibatches
from csa_rerank.rerank import rerank_topk
from csa_rerank.training import TrainingSamples


@dataclass(frozen=True)
class LAttQEConfig:
    """Architecture; ``dim`` is the descriptor dimension D, the rest are our defaults (see the module docstring)."""

    dim: int
    k: int = 16  # neighbours aggregated with the query
    width: int = 256  # transformer width
    layers: int = 3
    heads: int = 8
    ffn_ratio: int = 4  # feed-forward width = ffn_ratio * width
    dropout: float = 0.1
    similarity_scale: float = 100.0  # sigma: the similarity encoding is PE(sigma * s)


def sinusoidal_encoding(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Vaswani et al.'s encoding of real positions: [...] -> [..., width].

    Column 2i is sin(p / 10000^(2i / width)), column 2i + 1 is cos of the same angle (width even).
    """
    frequencies = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    angles = positions[..., None].float() * frequencies  # [..., width / 2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class LAttQE(nn.Module):
    """Tokens [B, T, D] (token 0 = the query, then its neighbours by rank) -> expanded query [B, D] (unit)."""

    def __init__(self, config: LAttQEConfig):
        super().__init__()
        if config.width % 2 or config.width % config.heads:
            raise ValueError(f"width={config.width} must be even and divisible by heads={config.heads}")
        self.config = config
        self.embed = nn.Linear(config.dim, config.width)
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            config.ffn_ratio * config.width,
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, config.layers, norm=nn.LayerNorm(config.width), enable_nested_tensor=False
        )
        self.read_query = nn.Linear(config.width, config.width)
        self.read_key = nn.Linear(config.width, config.width)

    def aggregation_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """Weights w [B, T] (rows sum to 1) of the T tokens [B, T, D]."""
        T, width = tokens.shape[1], self.config.width
        similarity = (tokens * tokens[:, :1]).sum(dim=-1)  # [B, T], similarity to the query
        x = (
            self.embed(tokens)
            + sinusoidal_encoding(torch.arange(T, device=tokens.device), width)  # [T, width], the rank
            + sinusoidal_encoding(self.config.similarity_scale * similarity, width)  # [B, T, width]
        )
        o = self.encoder(x)  # [B, T, width]
        logits = (self.read_query(o[:, :1]) * self.read_key(o)).sum(dim=-1) / math.sqrt(width)  # [B, T]
        return logits.softmax(dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.aggregation_weights(tokens)
        return F.normalize((weights[..., None] * tokens).sum(dim=1), dim=-1)


def contrastive_loss(expanded: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor, margin: float):
    """Mean contrastive loss of expanded queries [B, D] against candidates [B, C, D] with labels [B, C] (bool):
    1/2 d^2 for positives, 1/2 max(0, margin - d)^2 for negatives, d the Euclidean distance (a scalar)."""
    distance = (candidates - expanded[:, None]).pow(2).sum(dim=-1).clamp_min(1e-12).sqrt()  # [B, C]
    return torch.where(positive, 0.5 * distance.pow(2), 0.5 * (margin - distance).relu().pow(2)).mean()


def fit(
    features: np.ndarray | torch.Tensor,
    neighbours: np.ndarray | torch.Tensor,
    clusters: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor | None = None,
    K_train: int = 64,
    margin: float = 0.85,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    seed: int = 0,
    **architecture,
) -> dict:
    """Train LAttQE on a training set (see the module docstring).

    Args:
        features: [N, D] unit descriptors; neighbours: [N, >= max(k + 1, K_train)] neighbour lists, the image
            itself first; clusters: [N] cluster ids; queries: indices of the images used as queries (None = all).
        architecture: fields of :class:`LAttQEConfig` other than ``dim`` (``k``, ``width``, ...).
    Returns:
        ``{"config": dict, "state_dict": {name: tensor}, "losses": [epochs] float64 tensor}`` (the mean loss of
        every epoch); loadable with ``torch.load(weights_only=True)``.
    """
    samples = TrainingSamples([features], [neighbours], [clusters], None if queries is None else [queries])
    config = LAttQEConfig(dim=samples.features.shape[1], **architecture)
    if samples.neighbours.shape[1] < max(config.k + 1, K_train):
        raise ValueError(f"neighbour lists have {samples.neighbours.shape[1]} columns, need {config.k + 1}, {K_train}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # initialisation and dropout draws leave the caller's stream alone
        torch.manual_seed(seed)
        model = LAttQE(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

        def batch_loss(ids: torch.Tensor) -> torch.Tensor:
            rows = samples.neighbours[samples.queries[ids]]
            expanded = model(samples.features[rows[:, : config.k + 1]])  # [B, D]
            candidates = rows[:, 1:K_train]  # [B, K_train - 1]
            positive = samples.clusters[candidates] == samples.clusters[rows[:, :1]]
            return contrastive_loss(expanded, samples.features[candidates], positive, margin)

        losses = train_minibatches(model, optimizer, batch_loss, len(samples), batch_size, epochs, generator)
    return fitted_weights(config, model, losses)


def load(weights: dict) -> LAttQE:
    """The model of :func:`fit`'s output (or of its ``torch.load``-ed file), in eval mode."""
    model = LAttQE(LAttQEConfig(**weights["config"]))
    model.load_state_dict(weights["state_dict"])
    return model.eval()


@torch.no_grad()
def _expanded_ranking(model: LAttQE, query: torch.Tensor, db: torch.Tensor, ranks: torch.Tensor, batch_size: int):
    """LAttQE with the neighbours taken from ``ranks``: every row sorted by its expanded query's scores."""
    tokens = torch.cat([query[:, None], db[ranks[:, : model.config.k]]], dim=1)  # [Q, k + 1, D]
    expanded = torch.cat([model(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)])
    scores = list_scores(expanded, db, ranks)
    return rerank_topk(ranks.numpy(), scores.numpy())


def rerank(query: np.ndarray, db: np.ndarray, ranks: np.ndarray, weights: dict, batch_size: int = 256) -> np.ndarray:
    """LAttQE: expand each query with its first-round top k, then sort its ranking by the expanded query's scores.

    Args:
        query: [Q, D], db: [N, D] unit descriptors; ranks: [Q, N'] first-round rankings (N' >= k).
        weights: the output of :func:`fit` (or its saved file).
    Returns:
        [Q, N'] re-ranked lists.
    """
    model = load(weights)
    return _expanded_ranking(model, as_tensor(query), as_tensor(db), torch.as_tensor(ranks), batch_size)


def augment_database(db: np.ndarray, weights: dict, batch_size: int = 256) -> np.ndarray:
    """LAttDBA: every database row replaced by the model's aggregate of itself and its k nearest other rows.

    Returns:
        [N, D] float32 unit rows.
    """
    return _augment(load(weights), as_tensor(db), batch_size).numpy()


@torch.no_grad()
def _augment(model: LAttQE, db: torch.Tensor, batch_size: int, graph=None) -> torch.Tensor:
    """LAttDBA on db [N, D] -> [N, D], the tokens of ``batch_size`` rows gathered at a time; ``graph``: the
    database's neighbour graph (csa_rerank.graph), else built here."""
    neighbours = torch.as_tensor(db_graph.columns(db.numpy(), graph, model.config.k + 1).near_ids)  # [N, k + 1]
    return torch.cat([model(db[neighbours[i : i + batch_size]]) for i in range(0, len(db), batch_size)])


def rerank_dba(
    query: np.ndarray, db: np.ndarray, ranks: np.ndarray, weights: dict, batch_size: int = 256, graph=None
) -> np.ndarray:
    """LAttDBA + LAttQE: augment the database, rank each list by the query's scores on the augmented rows, expand
    the query with its new top k (augmented descriptors) and sort the list by the expanded query's scores.

    Args and returns as :func:`rerank`; ``graph``: the database's neighbour graph (csa_rerank.graph).
    """
    model = load(weights)
    augmented = _augment(model, as_tensor(db), batch_size, graph)
    query, ranks = as_tensor(query), torch.as_tensor(ranks)
    dba_ranks = torch.as_tensor(rerank_topk(ranks.numpy(), list_scores(query, augmented, ranks).numpy()))
    return _expanded_ranking(model, query, augmented, dba_ranks, batch_size)
