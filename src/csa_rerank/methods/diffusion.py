"""DFS: diffusion on a kNN graph of the database, solved by conjugate gradient (Iscen et al., CVPR 2017).

The authors' MATLAB code (github.com/ahmetius/diffusion-retrieval, ``run_test.m``, global descriptors), step by
step, with d_1 ... d_N the database (rows L2-normalised) and q the query:

1. Offline graph (``knngraph.m``): ν(i) the k nearest neighbours of d_i, the item itself included
   (the database graph, :mod:`csa_rerank.graph`).  The affinity matrix keeps the mutual neighbours only::

       W_ij = max(d_i · d_j, 0)^γ   if j ∈ ν(i) and i ∈ ν(j) and i ≠ j,   else 0      (symmetric)

2. Truncation (``findtrunc.m`` / ``trunclap.m``): the query's first ``truncate`` list items R; the graph is
   restricted to them, W_R = W[R, R], and normalised there (``transition_matrix.m``)::

       S = D^{-1/2} W_R D^{-1/2},   D = diag(W_R 1)   (an isolated item gets D^{-1/2} = 0)

   The authors truncate only at large scale (10,000 items at 105k); with the default here the whole list is
   used whenever it is shorter than 10,000 (ROxf, RPar), as CSA's Table 6 describes DFS on the top 10,000.
3. The query's vector (``ymake.m``): y_j = max(q · d_j, 0)^γ for the ``k_query`` items of R most similar to q,
   0 elsewhere.
4. Diffusion (``dfs.m``, MATLAB ``pcg``): f solves (I - α S) f = y by conjugate gradient from f = 0, stopped when
   ‖y - (I - α S) f‖ <= tol ‖y‖ or after ``maxiter`` iterations.  I - α S is symmetric positive definite for
   α < 1 (S's eigenvalues lie in [-1, 1]), so CG applies.
5. R is sorted by f (descending; equal values, e.g. items the diffusion does not reach, keep their list order);
   the list items after R keep their order.

Defaults, all from ``run_test.m`` for global descriptors (the CSA paper re-ran the released code with its
descriptors and gives no other setting): k = 50, k_query = 10, γ = 3, α = 0.99, tol = 1e-6, maxiter = 20;
truncate = 10,000 (the authors' large-scale setting, and CSA's Table 6).  The regional variant (k = 200,
regional descriptors, pooling of region scores) needs region descriptors that this project does not extract.

Graph storage: padded neighbour lists, ``neighbours`` [N, k] int64 and ``weights`` [N, k] float32 (0 where the
edge is not mutual or is the self-loop); a query's S is a sparse tensor of its nonzero entries, so a product
with S costs O(nnz) <= O(T·k) for T list items.

Shapes: query [Q, D], db [N, D] float32 L2-normalised; ranks [Q, N'] int64; returns [Q, N'].
"""

from __future__ import annotations

import numpy as np
import torch

from csa_rerank import graph as db_graph
from csa_rerank.methods._common import as_tensor

BLOCK_ROWS = 4096  # graph rows processed at a time when checking mutuality
QUERY_BLOCK = 64  # queries diffused together on a shared graph


def mutual_knn_graph(db: np.ndarray, k: int = 50, gamma: float = 3.0, graph=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mutual kNN affinity graph of a database [N, D]: (neighbours [N, k] int64, weights [N, k] float32).

    ``weights[i, c]`` = max(d_i · d_j, 0)^γ for j = ``neighbours[i, c]`` when j ≠ i and i is among j's k
    neighbours, else 0.  The similarity is recomputed from the vectors, so W_ij = W_ji exactly.
    """
    db_t = as_tensor(db)
    neighbours = torch.from_numpy(db_graph.columns(db, graph, k).near_ids)  # [N, k], row i starts with i
    weights = torch.empty(neighbours.shape)
    for start in range(0, len(neighbours), BLOCK_ROWS):
        block = neighbours[start : start + BLOCK_ROWS]  # [b, k]
        rows = torch.arange(start, start + len(block))[:, None]  # [b, 1]
        mutual = (neighbours[block] == rows[..., None]).any(dim=2) & (block != rows)  # [b, k]
        sims = torch.einsum("bd,bkd->bk", db_t[start : start + len(block)], db_t[block])
        weights[start : start + len(block)] = torch.where(mutual, sims.clamp(min=0) ** gamma, 0.0)
    return neighbours, weights


def normalised_subgraph(neighbours: torch.Tensor, weights: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """S = D^{-1/2} W[R, R] D^{-1/2} on the items R [T]: a sparse (COO) float64 [T, T] tensor, rows/columns = R."""
    position = torch.full((len(neighbours),), -1, dtype=torch.int64)
    position[items] = torch.arange(len(items))
    columns = position[neighbours[items]]  # [T, k], -1 outside R
    kept = (columns >= 0) & (weights[items] > 0)  # [T, k]
    rows = torch.arange(len(items))[:, None].expand_as(columns)[kept]
    columns, values = columns[kept], weights[items][kept].double()
    degree = torch.zeros(len(items), dtype=torch.float64).index_add_(0, rows, values)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=1e-300).rsqrt(), 0.0)  # [T]
    values = inv_sqrt[rows] * values * inv_sqrt[columns]
    size = (len(items), len(items))
    return torch.sparse_coo_tensor(torch.stack([rows, columns]), values, size, check_invariants=True).coalesce()


def conjugate_gradient(s: torch.Tensor, y: torch.Tensor, alpha: float, tol: float, maxiter: int) -> torch.Tensor:
    """F [T, b] solving (I - α S) f = y for each column y of ``y`` [T, b] by CG from f = 0 (MATLAB ``pcg``).

    S [T, T] is a sparse float64 tensor.  The columns are independent systems: each stops on its own when
    ‖y - (I - α S) f‖ <= tol ‖y‖ (its later steps are 0), all stop after ``maxiter`` iterations.
    """
    y = y.double()
    f = torch.zeros_like(y)
    residual = y.clone()
    direction = residual.clone()
    rho = (residual * residual).sum(dim=0)  # [b]
    limit = (tol * torch.linalg.vector_norm(y, dim=0)) ** 2
    for _ in range(maxiter):
        running = rho > limit
        if not bool(running.any()):
            break
        product = direction - alpha * torch.sparse.mm(s, direction)
        step = torch.where(running, rho / (direction * product).sum(dim=0), 0.0)
        f += step * direction
        residual -= step * product
        rho, previous = (residual * residual).sum(dim=0), rho
        direction = residual + torch.where(running, rho / previous, 0.0) * direction
    return f


def dfs(
    query: np.ndarray,
    db: np.ndarray,
    ranks: np.ndarray,
    k: int = 50,
    k_query: int = 10,
    gamma: float = 3.0,
    alpha: float = 0.99,
    tol: float = 1e-6,
    maxiter: int = 20,
    truncate: int = 10_000,
    graph=None,
) -> np.ndarray:
    """DFS re-ranking of the first ``truncate`` items of each list by diffusion scores.  [Q, N'] -> [Q, N'].

    Queries whose first ``truncate`` items are the same set (every query when the lists cover a database of at
    most ``truncate`` images) share one normalised graph and are solved ``QUERY_BLOCK`` at a time.
    """
    neighbours, weights = mutual_knn_graph(db, k, gamma, graph)
    query_t, db_t = as_tensor(query), as_tensor(db)
    ranks = np.asarray(ranks)
    heads = ranks[:, : min(truncate, ranks.shape[1])]  # [Q, T], the lists' truncated part
    groups: dict[bytes, list[int]] = {}
    for i, head in enumerate(heads):
        groups.setdefault(np.sort(head).tobytes(), []).append(i)
    out = ranks.copy()
    for members in groups.values():
        items = torch.from_numpy(np.sort(heads[members[0]])).to(torch.int64)  # R [T], by database index
        graph = normalised_subgraph(neighbours, weights, items)
        for start in range(0, len(members), QUERY_BLOCK):
            block = members[start : start + QUERY_BLOCK]
            sims = query_t[block] @ db_t[items].T  # [b, T]
            top = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k_query]  # ties: lower index
            y = torch.zeros_like(sims).scatter(1, top, torch.gather(sims, 1, top).clamp(min=0) ** gamma)
            f = conjugate_gradient(graph, y.T, alpha, tol, maxiter).T  # [b, T]
            for row, i in enumerate(block):
                scores = f[row, torch.searchsorted(items, torch.as_tensor(heads[i], dtype=torch.int64))]  # list order
                out[i, : heads.shape[1]] = heads[i][torch.sort(scores, descending=True, stable=True).indices.numpy()]
    return out
