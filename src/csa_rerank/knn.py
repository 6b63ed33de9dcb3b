"""Exact first-round ranking by inner product, computed in blocks so memory stays bounded.

Narrow, faiss-like interface: float32 arrays in, (scores, ids) arrays out.  Never materialises an N x N matrix:
at most ``block`` query rows x all database rows of scores exist at a time.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)


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
        if k == db.shape[0]:
            # a stable sort breaks ties by index; topk does not promise that
            s, i = torch.sort(sims, dim=1, descending=True, stable=True)
        else:
            s, i = torch.topk(sims, k, dim=1)
            # order equal scores by index so the result is deterministic
            order = np.lexsort((i.cpu().numpy(), -s.cpu().numpy()), axis=1)
            s = torch.gather(s, 1, torch.as_tensor(order, device=s.device))
            i = torch.gather(i, 1, torch.as_tensor(order, device=i.device))
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
