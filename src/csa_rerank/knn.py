"""Exact first-round ranking by inner product, computed in blocks so memory stays bounded.

Narrow, faiss-like interface: float32 arrays in, (scores, ids) arrays out.  Never materialises an N x N matrix:
at most ``block`` query rows x all database rows of scores exist at a time.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)


def _top_k_lowest_index_first(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row, equal scores ordered by column index, also across the k-th position.

    ``torch.topk`` is fast but keeps an arbitrary subset of a tie group cut by the k-th position.  Rows where
    more than k scores reach the k-th value (ties at the boundary, rare with real descriptors) are therefore
    redone with a stable full sort; the others only need their kept items put in (score, index) order.
    """
    if k == sims.shape[1]:
        return torch.sort(sims, dim=1, descending=True, stable=True)
    s, i = torch.topk(sims, k, dim=1)
    order = torch.as_tensor(np.lexsort((i.cpu().numpy(), -s.cpu().numpy()), axis=1), device=s.device)
    s, i = torch.gather(s, 1, order), torch.gather(i, 1, order)
    tied = ((sims >= s[:, -1:]).sum(dim=1) > k).nonzero().flatten()
    if len(tied):
        s_tied, i_tied = torch.sort(sims[tied], dim=1, descending=True, stable=True)
        s[tied], i[tied] = s_tied[:, :k], i_tied[:, :k]
    return s, i


def search(
    queries: np.ndarray, db: np.ndarray, k: int, block: int = 1024, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows by inner product for every query.

    Args:
        queries: [Q, D]; db: [N, D].
    Returns:
        scores [Q, k] float32 (descending) and ids [Q, k] int64.  With k >= N this is the full ranking.
        Ties are broken by the lower database index, so results do not depend on ``block``.
    """
    k = min(k, db.shape[0])
    db_t = _as_tensor(db, device)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], block):
        sims = _as_tensor(queries[start : start + block], device) @ db_t.T  # [b, N]
        s, i = _top_k_lowest_index_first(sims, k)
        scores[start : start + block] = s.cpu().numpy()
        ids[start : start + block] = i.cpu().numpy()
    return scores, ids


def self_neighbours(features: np.ndarray, k: int, block: int = 1024, device: str | torch.device = "cpu") -> np.ndarray:
    """Top-``k`` neighbour lists of every row of ``features`` among all rows, the row itself at position 0.

    The authors rely on self-similarity 1 putting the image first; an exact duplicate could displace it, so the
    image is placed first explicitly and its other occurrence, if any, removed.
    Returns ids [N, k] int64.
    """
    n = features.shape[0]
    k = min(k, n)
    _, ids = search(features, features, k + 1, block=block, device=device)
    out = np.empty((n, k), dtype=np.int64)
    for row in range(n):
        others = ids[row][ids[row] != row]
        out[row, 0] = row
        out[row, 1:] = others[: k - 1]
    return out
