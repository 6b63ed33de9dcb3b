"""GSS: Guided Similarity Separation (Liu et al., NeurIPS 2019), unsupervised graph re-ranking (Table 5 "GSS").

A residual graph convolutional network (GCN) is trained, without labels, on the k-nearest-neighbour graph of the
database so that pairwise similarities of its output embeddings move away from a threshold beta; queries and
database images are then compared by the inner product of their embeddings.  Everything is fitted at re-ranking
time (transductive): there is no training-set step.  Sources: the paper and the authors' released TensorFlow
code (layer6ai-labs/GSS: ``model.py``, ``train.py``, ``utils/helper.py`` and the README's commands), restated.

Graph ("descriptor" mode of the code, i.e. without the optional spatially verified graph).  Nodes are the N
database images, then the Q queries::

    database edges   A_ij = A_ji = x_i . x_j  for j among the k nearest neighbours of i (i itself counted among
                     the k, as the code's top-k of X^T X does; the diagonal is then zeroed): k - 1 others per row
    query edges      A_qj = q . x_j          for the kq first-round neighbours j of q; no edge from the database
                     to a query, so queries do not change database embeddings
    normalisation    A_hat = D^-1/2 (A + I) D^-1/2,  D = diag(row sums of A + I)

A_hat is a sparse [N + Q, N + Q] matrix (torch sparse COO, nnz <= 2 N (k - 1) + Q (kq + 1) + N), so memory is
O((N + Q)(k + D)) apart from the loss, which is taken over row tiles (below).

Network (hidden width = D: weights are square and initialised at the identity)::

    P_1 = A_hat X W_1 + b_1                    H_1 = ELU(P_1)
    P_l = A_hat H_(l-1) W_l + b_l              H_l = P_(l-1) + gamma ELU(P_l)      (l = 2 .. layers)
    Z   = rows of H_layers L2-normalised       [N + Q, D]

with W_l [D, D] = I plus N(0, init_std^2) off the diagonal, b_l = 0, gamma the "layer decay".

Loss (the paper's similarity separation, code ``GSS_loss``), on the database graph only, mean over all ordered
pairs (i, j), diagonal included::

    L = mean_ij [ -alpha / 2 (relu(z_i . z_j) - beta)^2 ]  +  lambda sum_l ||W_l||^2 / 2

Its gradient -alpha (s_ij - beta) pushes similarities above beta up and those below it down.  beta is the
``beta_percentile``-th percentile of the similarities z_i . z_j of the untrained network's database embeddings
(the code's ``--beta-percentile``).  Full-batch Adam.

Defaults (the README's ROxf commands and ``train.py``): k = 5, kq = 5 (the README uses kq = 15 for RPar),
alpha = 1, beta percentile 98, 2 layers, layer decay 0.3, Adam lr 1e-4, 200 epochs, init_std 1e-5, L2 scale
lambda = 1e-5 on the weights (TensorFlow's ``l2_regularizer``: lambda sum w^2 / 2).

Differences from the released code:

- the code evaluates the mAP on the test ground truth after every epoch and reports the best epoch; here the
  embeddings of the last epoch are used (no test-set model selection);
- the all-pairs loss is exact but O(N^2 D) per epoch, hopeless for R1M: ``loss_columns`` replaces the N columns
  by that many random ones per epoch (an unbiased estimate of the same loss).  Pairs are scored in row tiles
  of at most :data:`LOSS_TILE_ENTRIES` similarities whose gradients are accumulated, so memory is bounded
  either way;
- beta is the percentile of at most :data:`PERCENTILE_ENTRIES` similarities (random rows against all columns)
  instead of the full N x N matrix; the same value up to sampling error.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from csa_rerank import graph as db_graph
from csa_rerank.methods._common import list_scores
from csa_rerank.rerank import rerank_topk

LOSS_TILE_ENTRIES = 2**22  # similarities scored at once in the loss (16 MB of float32)
EDGE_BLOCK = 2**14  # edges whose two descriptors are gathered at once
PERCENTILE_ENTRIES = 2**24  # similarities the percentile of beta is taken from (64 MB of float32)


def graph_edges(db: torch.Tensor, db_neighbours: torch.Tensor, query: torch.Tensor, query_neighbours: torch.Tensor):
    """Weighted edges of the GSS graph, nodes = the N database images then the Q queries.

    Args:
        db: [N, D] database descriptors; db_neighbours: [N, k] their neighbour lists, the image itself first.
        query: [Q, D]; query_neighbours: [Q, kq] database indices of each query's kq nearest images.
    Returns:
        rows, cols [E] int64 and weights [E] float32: the symmetrised database edges (no self loops, each
        unordered pair once per direction) followed by the query -> database edges.
    """
    n = db.shape[0]
    source = torch.arange(n).repeat_interleave(db_neighbours.shape[1] - 1)
    target = db_neighbours[:, 1:].reshape(-1)
    keep = source != target  # an exact duplicate may have displaced the image from column 0
    source, target = source[keep], target[keep]
    # both directions, each pair once: a pair found from both ends would otherwise be summed by the sparse matrix
    keys = torch.unique(torch.cat([source * n + target, target * n + source]))
    rows, cols = keys // n, keys % n
    q_rows = (n + torch.arange(query.shape[0])).repeat_interleave(query_neighbours.shape[1])
    q_cols = query_neighbours.reshape(-1)
    weights = torch.cat([_dots(db, rows, db, cols), _dots(query, q_rows - n, db, q_cols)])
    return torch.cat([rows, q_rows]), torch.cat([cols, q_cols]), weights


def _dots(a: torch.Tensor, a_rows: torch.Tensor, b: torch.Tensor, b_rows: torch.Tensor) -> torch.Tensor:
    """a[a_rows[e]] . b[b_rows[e]] for every e, EDGE_BLOCK at a time: [E]."""
    return torch.cat(
        [
            (a[a_rows[i : i + EDGE_BLOCK]] * b[b_rows[i : i + EDGE_BLOCK]]).sum(dim=1)
            for i in range(0, len(a_rows), EDGE_BLOCK)
        ]
        + [torch.zeros(0)]
    )


def normalised_adjacency(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, n: int) -> torch.Tensor:
    """A_hat = D^-1/2 (A + I) D^-1/2 with D = diag(row sums of A + I), as a sparse COO [n, n] float32 tensor.

    Args:
        rows, cols, weights: [E] the entries of A (no duplicates, no diagonal), node indices < n.
    """
    loops = torch.arange(n)
    rows, cols = torch.cat([rows, loops]), torch.cat([cols, loops])
    weights = torch.cat([weights.float(), torch.ones(n)])
    degree = torch.zeros(n).index_add_(0, rows, weights)
    values = weights * degree[rows].rsqrt() * degree[cols].rsqrt()
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=True).coalesce()


class ResidualGCN(nn.Module):
    """The GSS encoder: node features [M, D] and A_hat [M, M] (sparse) -> unit embeddings [M, D]."""

    def __init__(self, dim: int, layers: int = 2, layer_decay: float = 0.3, init_std: float = 1e-5, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        eye = torch.eye(dim)
        self.weights = nn.ParameterList(
            nn.Parameter(eye + torch.randn(dim, dim, generator=generator) * init_std * (1 - eye)) for _ in range(layers)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(layers))
        self.layer_decay = layer_decay

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        residual = None
        for weight, bias in zip(self.weights, self.biases, strict=True):
            pre = torch.sparse.mm(adjacency, x) @ weight + bias  # [M, D]
            x = F.elu(pre) if residual is None else residual + self.layer_decay * F.elu(pre)
            residual = pre
        return F.normalize(x, dim=1)


def separation_loss(similarity: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Sum over the entries of a similarity block [r, c] of -alpha / 2 (relu(s) - beta)^2 (a scalar)."""
    return (-0.5 * alpha * (similarity.relu() - beta).pow(2)).sum()


def _percentile(z: torch.Tensor, percentile: float, generator: torch.Generator) -> float:
    """The ``percentile``-th percentile (nearest rank) of z z^T [M, M], from at most PERCENTILE_ENTRIES entries
    (random rows against all columns)."""
    rows = min(len(z), max(1, PERCENTILE_ENTRIES // len(z)))
    sample = z if rows == len(z) else z[torch.randperm(len(z), generator=generator)[:rows]]
    similarities = (sample @ z.T).flatten()
    rank = round(percentile / 100 * (len(similarities) - 1)) + 1  # 1-based
    return torch.kthvalue(similarities, rank).values.item()


def _loss_and_gradient(z: torch.Tensor, columns: torch.Tensor, alpha: float, beta: float) -> tuple[float, torch.Tensor]:
    """Mean separation loss over the pairs (all rows) x ``columns`` of z [M, D] and its gradient dL/dz [M, D].

    The pairs are scored ``LOSS_TILE_ENTRIES`` at a time, each tile's gradient accumulated into one leaf.
    """
    leaf = z.detach().requires_grad_()
    tile = max(1, LOSS_TILE_ENTRIES // len(columns))
    pairs = len(z) * len(columns)
    total = 0.0
    for start in range(0, len(z), tile):
        loss = separation_loss(leaf[start : start + tile] @ leaf[columns].T, alpha, beta) / pairs
        loss.backward()
        total += loss.item()
    return total, leaf.grad


def fit_embeddings(
    query: np.ndarray,
    db: np.ndarray,
    query_neighbours: np.ndarray,
    k: int = 5,
    alpha: float = 1.0,
    beta_percentile: float = 98.0,
    layers: int = 2,
    layer_decay: float = 0.3,
    lr: float = 1e-4,
    epochs: int = 200,
    init_std: float = 1e-5,
    weight_l2: float = 1e-5,
    loss_columns: int | None = None,
    seed: int = 0,
    graph=None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train the GCN on the database graph and embed queries and database (see the module docstring).

    Args:
        query: [Q, D], db: [N, D] unit descriptors.
        query_neighbours: [Q, kq] database indices of each query's kq nearest images (best first).
        loss_columns: None = all N columns of the loss (the code); else that many random columns per epoch.
        graph: the database's neighbour graph (csa_rerank.graph), else built here.
        device: where the network is trained and applied ("cuda": the GPU); the graph is built on the CPU.
    Returns:
        query embeddings [Q, D], database embeddings [N, D] (unit rows, float32) and the loss of every epoch
        [epochs] (float64, the value before that epoch's update).
    """
    generator = torch.Generator().manual_seed(seed)
    db_t = torch.as_tensor(db, dtype=torch.float32)
    query_t = torch.as_tensor(query, dtype=torch.float32)
    n = len(db_t)
    db_neighbours = torch.as_tensor(db_graph.columns(db, graph, k).near_ids)
    edges = graph_edges(db_t, db_neighbours, query_t, torch.as_tensor(query_neighbours))
    db_edges = edges[0] < n  # the first rows: database -> database
    db_adjacency = normalised_adjacency(*(e[db_edges] for e in edges), n).to(device)
    model = ResidualGCN(db_t.shape[1], layers, layer_decay, init_std, seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    db_t = db_t.to(device)
    with torch.no_grad():
        beta = _percentile(model(db_t, db_adjacency), beta_percentile, generator)
    losses = np.empty(epochs)
    for epoch in range(epochs):
        z = model(db_t, db_adjacency)
        columns = torch.arange(n) if loss_columns is None else torch.randperm(n, generator=generator)[:loss_columns]
        separation, z_grad = _loss_and_gradient(z, columns.to(device), alpha, beta)
        regulariser = weight_l2 * sum(w.pow(2).sum() for w in model.weights) / 2
        optimizer.zero_grad(set_to_none=True)
        z.backward(z_grad)
        regulariser.backward()
        optimizer.step()
        losses[epoch] = separation + regulariser.item()
    with torch.no_grad():
        everything = torch.cat([db_t, query_t.to(device)])
        z = model(everything, normalised_adjacency(*edges, n + len(query_t)).to(device)).cpu()
    return z[n:].numpy(), z[:n].numpy(), losses


def rerank(query: np.ndarray, db: np.ndarray, ranks: np.ndarray, kq: int = 5, **params) -> np.ndarray:
    """GSS re-ranking: every row of ``ranks`` sorted by the inner product of GCN embeddings.

    Args:
        query: [Q, D], db: [N, D] unit descriptors; ranks: [Q, N'] first-round rankings (its first kq columns
        are each query's graph neighbours).
        kq: query graph neighbours; params: the other arguments of :func:`fit_embeddings`.
    Returns:
        [Q, N'] re-ranked lists (ties keep their first-round order).
    """
    ranks = np.asarray(ranks)
    z_query, z_db, _ = fit_embeddings(query, db, ranks[:, :kq], **params)
    return rerank_topk(ranks, list_scores(torch.as_tensor(z_query), torch.as_tensor(z_db), ranks).numpy())
