"""SuperGlobal's training-free re-ranking (Shao et al., ICCV 2023): an extra row of Table 5, not in the CSA paper.

Only the re-ranking half of SuperGlobal is implemented (its other half, GeM+/regional-GeM/scale-GeM pooling,
changes the descriptors and belongs to extraction).  It follows the authors' released code
(github.com/ShihaoShao-GH/SuperGlobal, ``modules/reranking/MDescAug.py`` and ``RerankwMDA.py``), per query, with
x_1 ... x_M the top-M database vectors of its list (rows L2-normalised):

1. Refined database descriptors (MDescAug), a weighted average (GeM with p = 1) over the top-M only::

       x̃_j = (x_j + Σ_{i ∈ ν(j)} β (x_j · x_i) x_i) / (1 + Σ_{i ∈ ν(j)} β (x_j · x_i))

   ν(j): the K nearest other items of x_j among the M (the code takes the top K + 1 by similarity, x_j itself
   first; here x_j is put first explicitly, which only differs for exact duplicates).  x̃_j is not re-normalised.
2. First score s1_j = q · x̃_j; the M items sorted by s1.
3. Refined query (RerankwMDA): q̃ = the element-wise maximum (GeM with p = ∞) of the K + 1 refined vectors
   ranked first by s1 (the query itself is not among them, as in the code).
4. Final score s_j = (s1_j + q̃ · x̃_j) / 2; the top-M are sorted by s (descending; ties keep the s1 order) and
   the rest of the list keeps its order.

Defaults M = 400, K = 9, β = 0.15: the constructor defaults of ``MDescAug`` and ``RerankwMDA``, which the
authors' ``test_model.py`` uses for ROxf and RPar.

Memory: one block of ``QUERY_BLOCK`` queries at a time: [b, M, D] vectors and [b, M, M] similarities.

Shapes: query [Q, D], db [N, D] float32 L2-normalised; ranks [Q, N'] int64; returns [Q, N'].
"""

from __future__ import annotations

import numpy as np
import torch

from csa_rerank.methods._common import as_tensor, sort_list

QUERY_BLOCK = 32


def refine_database(top: torch.Tensor, k: int, beta: float) -> torch.Tensor:
    """Step 1: refined vectors [b, M, D] of the top-M vectors ``top`` [b, M, D] of each query."""
    sims = top @ top.transpose(1, 2)  # [b, M, M]
    eye = torch.eye(top.shape[1], dtype=torch.bool)
    others = torch.topk(sims.masked_fill(eye, -torch.inf), min(k, top.shape[1] - 1), dim=2)  # [b, M, K]
    weights = torch.zeros_like(sims).scatter(2, others.indices, beta * others.values)  # [b, M, M], row j: ν(j)
    return (top + weights @ top) / (1.0 + weights.sum(dim=2, keepdim=True))


def superglobal_scores(
    query: torch.Tensor, top: torch.Tensor, k: int, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-4 for a block: (s1 [b, M], s [b, M]) from queries [b, D] and their top-M vectors [b, M, D]."""
    refined = refine_database(top, k, beta)  # [b, M, D]
    first = torch.einsum("bd,bmd->bm", query, refined)  # s1
    best = torch.sort(first, dim=1, descending=True, stable=True).indices[:, : k + 1]  # [b, K + 1]
    expanded = torch.gather(refined, 1, best[..., None].expand(-1, -1, refined.shape[2])).amax(dim=1)  # q̃ [b, D]
    return first, (first + torch.einsum("bd,bmd->bm", expanded, refined)) / 2.0


def superglobal(
    query: np.ndarray, db: np.ndarray, ranks: np.ndarray, m: int = 400, k: int = 9, beta: float = 0.15
) -> np.ndarray:
    """SuperGlobal re-ranking of the top-M of each list.  [Q, N'] -> [Q, N']."""
    query_t, db_t = as_tensor(query), as_tensor(db)
    ranks = np.asarray(ranks)
    m = min(m, ranks.shape[1])
    out = ranks.copy()
    for start in range(0, len(ranks), QUERY_BLOCK):
        heads = ranks[start : start + QUERY_BLOCK, :m]  # [b, M]
        first, final = superglobal_scores(
            query_t[start : start + QUERY_BLOCK], db_t[torch.as_tensor(heads, dtype=torch.int64)], k, beta
        )
        by_first = torch.sort(first, dim=1, descending=True, stable=True).indices  # s1 order breaks ties of s
        out[start : start + QUERY_BLOCK, :m] = sort_list(
            np.take_along_axis(heads, by_first.numpy(), axis=1), torch.gather(final, 1, by_first)
        )
    return out
