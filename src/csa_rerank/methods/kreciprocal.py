"""k-reciprocal re-ranking (Zhong et al., CVPR 2017): an extra row of Table 5, not in the CSA paper.

Follows the authors' released ``re_ranking`` (github.com/zhunzhong07/person-re-ranking, python version), whose
"probe" and "gallery" are here the queries and the database; the graph is built over both, U = queries ∪ db
(M = Q + N items), as that code does.  With N(p, k) the k + 1 nearest items of p in U (p itself first):

1. Distance: d(p, g) = ‖p - g‖² / max_{u ∈ U} ‖p - u‖², i.e. (2 - 2 p · g) / (2 - 2 min_u p · u) for unit
   vectors (the squared Euclidean distance, each row scaled by its maximum, as the code does).
2. k-reciprocal set R(p, k) = {g ∈ N(p, k) : p ∈ N(g, k)}  (p itself included).
3. Expansion: R*(p) = R(p, k1) ∪ R(c, ⌊k1/2⌉) for every c ∈ R(p, k1) with
   |R(c, ⌊k1/2⌉) ∩ R(p, k1)| > 2/3 |R(c, ⌊k1/2⌉)|  (⌊k1/2⌉ rounds half to even, as numpy's ``around``).
4. Encoding: V_p,g = exp(-d(p, g)) / Σ_{g' ∈ R*(p)} exp(-d(p, g')) for g ∈ R*(p), else 0 (rows sum to 1).
5. Local query expansion: V_p <- mean of V_g over the k2 nearest items g of p (p itself included).
6. Jaccard distance d_J(p, g) = 1 - Σ_u min(V_p,u, V_g,u) / Σ_u max(V_p,u, V_g,u)
                              = 1 - m / (2 - m),  m = Σ_u min(V_p,u, V_g,u)  (rows sum to 1).
7. Final distance d*(p, g) = (1 - λ) d_J(p, g) + λ d(p, g); each list is sorted by ascending d* (ties keep
   the list order).

Defaults k1 = 20, k2 = 6, λ = 0.3: Zhong et al.'s paper and code.

Storage: U [M, D] (one copy of the queries and the database), V and its expansion as sparse CSR triplets, at
most (k1 + 1)(⌊k1/2⌉ + 2) entries per row of V and k2 times that per expanded row; the neighbour lists come from
the database's neighbour graph (:mod:`csa_rerank.graph`) merged with the queries (:func:`universe_lists`) and
the rest is done ``BLOCK_ROWS`` rows at a time.

Shapes: query [Q, D], db [N, D] float32 L2-normalised; ranks [Q, N'] int64; returns [Q, N'].
"""

from __future__ import annotations

import numpy as np
import torch

from csa_rerank import graph as db_graph
from csa_rerank import knn
from csa_rerank.methods._common import as_tensor, list_scores, sort_list

BLOCK_ROWS = 512  # rows of U processed at a time


def reciprocal_mask(neighbours: torch.Tensor, k: int) -> torch.Tensor:
    """Which of each row's first k + 1 neighbours are k-reciprocal: [M, k + 1] bool.

    ``neighbours`` [M, >= k + 1] lists each item's nearest items, the item itself first; entry (p, c) is True
    when p is among the first k + 1 neighbours of ``neighbours[p, c]``.
    """
    heads = neighbours[:, : k + 1]
    out = torch.empty(heads.shape, dtype=torch.bool)
    for start in range(0, len(heads), BLOCK_ROWS):
        block = heads[start : start + BLOCK_ROWS]  # [b, k + 1]
        rows = torch.arange(start, start + len(block))[:, None, None]
        out[start : start + BLOCK_ROWS] = (heads[block] == rows).any(dim=2)
    return out


def expanded_sets(neighbours: torch.Tensor, k1: int) -> torch.Tensor:
    """R*(p) of every item as padded rows [M, L] of item ids, sorted, -1 = empty slot (step 3 of the module)."""
    half = int(np.around(k1 / 2.0))
    mask_k1 = reciprocal_mask(neighbours, k1)  # [M, k1 + 1]
    mask_half = reciprocal_mask(neighbours, half)  # [M, half + 1]
    heads = neighbours[:, : k1 + 1]
    half_sets = torch.where(mask_half, neighbours[:, : half + 1], -1)  # R(c, half), [M, half + 1]
    blocks = []
    for start in range(0, len(heads), BLOCK_ROWS):
        members = torch.where(mask_k1[start : start + BLOCK_ROWS], heads[start : start + BLOCK_ROWS], -1)  # [b, k1+1]
        candidates = half_sets[heads[start : start + BLOCK_ROWS]]  # [b, k1 + 1, half + 1], R(c, half) per c
        valid = candidates >= 0
        shared = ((candidates[..., None] == members[:, None, None, :]).any(dim=3) & valid).sum(dim=2)
        accepted = mask_k1[start : start + BLOCK_ROWS] & (shared > 2.0 / 3.0 * valid.sum(dim=2))  # [b, k1 + 1]
        added = torch.where(accepted[..., None], candidates, -1).flatten(1)
        ids = torch.sort(torch.cat([members, added], dim=1), dim=1).values  # [b, L]
        repeated = torch.cat([torch.zeros(len(ids), 1, dtype=torch.bool), ids[:, 1:] == ids[:, :-1]], dim=1)
        blocks.append(torch.sort(torch.where(repeated, -1, ids), dim=1).values)
    return torch.cat(blocks)


def _csr_rows(
    indptr: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of the given rows [P] of a CSR matrix: (which of the P rows [E], column [E], value [E])."""
    lengths = indptr[rows + 1] - indptr[rows]
    owner = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    offsets = torch.cumsum(lengths, 0) - lengths
    entries = indptr[rows][owner] + torch.arange(len(owner)) - offsets[owner]
    return owner, columns[entries], values[entries]


def _to_csr(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int):
    """(indptr [n_rows + 1], columns, values) of triplets, duplicate (row, column) entries summed."""
    keys, inverse = torch.unique(rows * n_cols + columns, return_inverse=True)  # sorted: row-major order
    summed = torch.zeros(len(keys), dtype=values.dtype).index_add_(0, inverse, values)
    indptr = torch.zeros(n_rows + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(keys // n_cols, minlength=n_rows), 0)
    return indptr, keys % n_cols, summed


def encoded_neighbourhoods(
    universe: torch.Tensor, neighbours: torch.Tensor, k1: int, k2: int, max_distance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V after local query expansion (steps 4-5) as CSR (indptr [M + 1], columns, values), float64."""
    sets = expanded_sets(neighbours, k1)  # [M, L]
    rows, columns, values = [], [], []
    for start in range(0, len(sets), BLOCK_ROWS):
        block = sets[start : start + BLOCK_ROWS]  # [b, L]
        valid = block >= 0
        own = universe[start : start + len(block)]  # [b, D]
        cosine = torch.einsum("bd,bld->bl", own, universe[block.clamp(min=0)]).double()
        distance = (2.0 - 2.0 * cosine) / max_distance[start : start + len(block), None]
        weights = torch.where(valid, torch.exp(-distance), 0.0)
        weights = weights / weights.sum(dim=1, keepdim=True)
        rows.append(torch.arange(start, start + len(block))[:, None].expand_as(block)[valid])
        columns.append(block[valid])
        values.append(weights[valid])
    indptr, v_columns, v_values = _to_csr(torch.cat(rows), torch.cat(columns), torch.cat(values), len(sets), len(sets))
    parts = []
    for start in range(0, len(sets), BLOCK_ROWS):
        near = neighbours[start : start + BLOCK_ROWS, :k2]  # [b, k2]
        owner, cols, vals = _csr_rows(indptr, v_columns, v_values, near.flatten())
        parts.append((start + owner // k2, cols, vals / k2))
    return _to_csr(*(torch.cat(part) for part in zip(*parts, strict=True)), len(sets), len(sets))


def universe_lists(universe: torch.Tensor, n_query: int, k: int, graph=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest items of every item of U = queries ∪ db ([M, D], the ``n_query`` queries first), itself first
    ([M, k] int64, rows of U), and its least similarity min_u p · u ([M] float64), from the database's graph and
    one [Q, M] product.

    A database row's k - 1 nearest others in U are among its k - 1 nearest in the database and the Q queries;
    merged by score, equal scores by the lower index of U, they are the lists of a search over U itself.
    """
    query, db = universe[:n_query], universe[n_query:]
    strip = query @ universe.T  # [Q, M]: the queries' rows of U's scores against itself
    ranked = torch.sort(strip, dim=1, descending=True, stable=True)  # equal scores: the lower index first
    query_rows = knn.self_first(ranked.values[:, :k], ranked.indices[:, :k], 0)[1]  # [Q, k]
    lists = db_graph.columns(db.numpy(), graph, k, 1)
    to_queries = strip[:, n_query:].T  # [N, Q]: p · q for every database row p
    db_ids = torch.from_numpy(lists.near_ids[:, 1:]) + n_query
    candidates = torch.cat([torch.arange(n_query).expand(len(db), -1), db_ids], dim=1)  # [N, Q + k - 1]
    candidate_scores = torch.cat([to_queries, torch.from_numpy(lists.near_scores[:, 1:])], dim=1)
    by_index = torch.sort(candidates, dim=1, stable=True)
    by_score = torch.sort(torch.gather(candidate_scores, 1, by_index.indices), dim=1, descending=True, stable=True)
    db_rows = torch.gather(by_index.values, 1, by_score.indices)[:, : k - 1]
    itself = torch.arange(n_query, len(universe))[:, None]
    neighbours = torch.cat([query_rows, torch.cat([itself, db_rows], dim=1)])
    lowest_db = torch.minimum(to_queries.min(dim=1).values, torch.from_numpy(lists.far_scores[:, 0]))
    return neighbours, torch.cat([strip.min(dim=1).values, lowest_db]).double()


def k_reciprocal(
    query: np.ndarray,
    db: np.ndarray,
    ranks: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_: float = 0.3,
    graph=None,
) -> np.ndarray:
    """k-reciprocal re-ranking of every list by the final distance d* (ascending).  [Q, N'] -> [Q, N'].

    ``graph``: the database's neighbour graph (csa_rerank.graph), else built here."""
    query_t, db_t = as_tensor(query), as_tensor(db)
    universe = torch.cat([query_t, db_t])  # [M, D]
    neighbours, lowest = universe_lists(universe, len(query_t), k1 + 1, graph)  # [M, k1 + 1], [M]: min p·u
    max_distance = 2.0 - 2.0 * lowest
    indptr, columns, values = encoded_neighbourhoods(universe, neighbours, k1, k2, max_distance)
    order = torch.sort(columns, stable=True).indices  # column-major view for the Jaccard sums
    col_ptr = torch.zeros(len(universe) + 1, dtype=torch.int64)
    col_ptr[1:] = torch.cumsum(torch.bincount(columns, minlength=len(universe)), 0)
    by_column_rows = torch.repeat_interleave(torch.arange(len(universe)), indptr[1:] - indptr[:-1])[order]
    by_column_values = values[order]
    cosine = list_scores(query_t, db_t, ranks).double()  # [Q, N']
    final = torch.empty(cosine.shape, dtype=torch.float64)
    gallery = torch.as_tensor(ranks, dtype=torch.int64) + len(query_t)  # list items as rows of U
    for i in range(len(query_t)):
        own_columns = columns[indptr[i] : indptr[i + 1]]
        own_values = values[indptr[i] : indptr[i + 1]]
        owner, other_rows, other_values = _csr_rows(col_ptr, by_column_rows, by_column_values, own_columns)
        shared = torch.zeros(len(universe), dtype=torch.float64).index_add_(
            0, other_rows, torch.minimum(other_values, own_values[owner])
        )
        jaccard = 1.0 - shared / (2.0 - shared)
        distance = (2.0 - 2.0 * cosine[i]) / max_distance[i]
        final[i] = (1.0 - lambda_) * jaccard[gallery[i]] + lambda_ * distance
    return sort_list(ranks, -final)
