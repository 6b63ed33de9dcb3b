"""Post-hoc learned whitening ("Lw", Radenović et al. TPAMI 2018), as cirtorch's ``whitenlearn``/``whitenapply``.

Learning, from descriptors X [N, D] and matching pairs (q_i, p_i):
    m  = mean of the query-side descriptors X[q]
    S  = covariance of the pair differences X[q] - X[p]
    P1 = inverse of the Cholesky factor of S (1e-10, 1e-9, ... added to the diagonal until S is positive definite)
    E  = eigenvectors of the scatter of P1 (X - m)^T over all N descriptors, by decreasing eigenvalue
    P  = E^T P1
Applying: x <- P[:dims] (x - m), then L2-normalised (cirtorch adds 1e-6 to the norm).
"""

from __future__ import annotations

import numpy as np


def _cholesky_with_jitter(S: np.ndarray) -> np.ndarray:
    alpha = 0.0
    while True:
        try:
            return np.linalg.cholesky(S + alpha * np.eye(S.shape[0]))
        except np.linalg.LinAlgError:
            alpha = 1e-10 if alpha == 0 else alpha * 10


def learn_whitening(X: np.ndarray, qidxs, pidxs) -> tuple[np.ndarray, np.ndarray]:
    """Learn (m [D], P [D, D]) from descriptors X [N, D] and index pairs; computed in float64."""
    X = np.asarray(X, dtype=np.float64)
    qidxs, pidxs = np.asarray(qidxs), np.asarray(pidxs)
    if len(qidxs) == 0 or len(qidxs) != len(pidxs):
        raise ValueError(f"whitening needs matching, non-empty pair lists (got {len(qidxs)} and {len(pidxs)})")
    m = X[qidxs].mean(axis=0)
    diff = X[qidxs] - X[pidxs]
    S = diff.T @ diff / len(diff)
    P1 = np.linalg.inv(_cholesky_with_jitter(S))
    Y = (X - m) @ P1.T
    eigval, eigvec = np.linalg.eigh(Y.T @ Y)
    order = np.argsort(eigval)[::-1]
    return m, eigvec[:, order].T @ P1


def apply_whitening(X: np.ndarray, m: np.ndarray, P: np.ndarray | None = None, dims: int | None = None) -> np.ndarray:
    """Whitened, L2-normalised descriptors [N, dims or D] as float32; ``P=None`` only centres on ``m``."""
    Y = np.asarray(X, dtype=np.float64) - m
    if P is not None:
        Y = Y @ (P if dims is None else P[:dims]).T
    Y /= np.linalg.norm(Y, axis=1, keepdims=True) + 1e-6
    return Y.astype(np.float32)


POST_WHITENING = ("none", "centre", "learned", "checkpoint")
# cirtorch's name of the whitening set its checkpoints' precomputed Lw was learnt on (test.py --whitening)
LW_DATASET = "retrieval-SfM-120k"


def precomputed_whitening(meta: dict, multiscale: bool, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The precomputed Lw an old cirtorch checkpoint keeps in ``meta['Lw']`` as post-whitening parameters.

    ``meta['Lw'][<whitening set>]['ms' or 'ss'] = {'m': [D, 1], 'P': [D', D]}``: the multi-scale entry for
    multi-scale extraction, the single-scale one otherwise, as cirtorch's test.py picks it.  The set is
    ``retrieval-SfM-120k`` (or the only one present).  Returns ``{"mean": [D], "projection": [D', D]}``.
    """
    lw = meta.get("Lw") if isinstance(meta, dict) else None
    if not isinstance(lw, dict) or not lw:
        raise ValueError(
            f"{source}: the checkpoint has no precomputed whitening (meta['Lw']); use post_whitening: learned"
        )
    if LW_DATASET in lw:
        entry = lw[LW_DATASET]
    elif len(lw) == 1:
        entry = next(iter(lw.values()))
    else:
        raise ValueError(f"{source}: meta['Lw'] has no '{LW_DATASET}' entry and several others ({', '.join(lw)})")
    scale = "ms" if multiscale else "ss"
    if not isinstance(entry, dict) or scale not in entry or not {"m", "P"} <= set(entry[scale]):
        raise ValueError(f"{source}: meta['Lw'] lacks the '{scale}' whitening ({{'m', 'P'}}) for this extraction")
    m = np.asarray(entry[scale]["m"], dtype=np.float64).reshape(-1)
    P = np.asarray(entry[scale]["P"], dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != m.size:
        raise ValueError(f"{source}: meta['Lw'] holds m of {m.size} values but P of shape {P.shape}")
    return {"mean": m, "projection": P}


def fit_post_whitening(method: str, X: np.ndarray, qidxs=None, pidxs=None) -> dict[str, np.ndarray]:
    """Post-processing parameters learnt from training descriptors X [N, D].

    ``learned`` is cirtorch's Lw above (needs the matching pairs); ``centre`` keeps only its first step, the
    subtraction of the mean, which is what randomly initialised networks (the demo) need: their descriptors share
    one dominant direction (pairwise cosines ~0.999), so their affinity vectors are nearly constant until it is
    removed.  Returns ``{"mean": [D]}`` and, for ``learned``, ``{"projection": [D, D]}``.
    """
    if method == "centre":
        return {"mean": np.asarray(X, dtype=np.float64).mean(axis=0)}
    if method == "learned":
        if qidxs is None or pidxs is None:
            raise ValueError("learned whitening needs the training set's matching pairs (qidxs, pidxs)")
        m, P = learn_whitening(X, qidxs, pidxs)
        return {"mean": m, "projection": P}
    raise ValueError(f"unknown post-whitening {method!r}; choose one of {', '.join(POST_WHITENING)}")
