"""Re-ranking of the top-K block of first-round rankings (paper Sec. 3.3), and its training-free baseline.

Arrays in, arrays out: scorers map affinity sequences [Q, K+1, L] (row 0 = the query, see
:func:`csa_rerank.affinity.test_affinity`) to scores [Q, K]; :func:`rerank_topk` reorders the first K columns
of a ranking [Q, N] by those scores and leaves the rest in first-round order, as in the authors' ``test.py``
(no fusion with the first-round similarity, no query expansion).  :func:`rerank_by_affinity` is the whole
composition, descriptors -> affinity sequences -> scores -> new ranking, of every affinity-based re-ranker:
CSA (:func:`csa_scores`, :mod:`csa_rerank.methods.csa`), CRL (:mod:`csa_rerank.methods.crl`) and the validation
split (:mod:`csa_rerank.validation`).  Rankings here are query-major [Q, N], the transpose of cirtorch's [N, Q].
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from csa_rerank.affinity import test_affinity
from csa_rerank.inference import forward_bf16, precision_autocast_dtype
from csa_rerank.jobs import peak_rss_bytes
from csa_rerank.model import CSAReranker, cosine_to_query
from csa_rerank.onednn_graph import fused_cpu_encoder


def csa_scores(
    model: CSAReranker,
    affinity: torch.Tensor | np.ndarray,
    batch_size: int = 8,
    precision: str = "auto",
    device: torch.device | str | None = None,
    onednn_graph: bool = True,
) -> np.ndarray:
    """CSA re-ranking scores cos(z_0, z_j) (Eq. 10) of the K candidates of each query.

    Runs in eval mode (no dropout) without gradients, ``batch_size`` queries at a time; the model's train/eval
    mode is restored afterwards.

    Args:
        model: a :class:`CSAReranker` (moved to ``device`` if one is given, else used where it is).
        affinity: [Q, K+1, L] affinity sequences, row 0 = the query.
        precision: "auto" (fp16 autocast on CUDA, as the authors ran; bf16 on CPU), "bf16", "fp16" or "fp32".
            bf16 runs :func:`csa_rerank.inference.forward_bf16` (input projection and residual stream in fp32).
        onednn_graph: bf16 on the CPU runs the model as fused oneDNN Graph partitions
            (:mod:`csa_rerank.onednn_graph`, ~1.2x faster) where it can, else eagerly.
    Returns:
        [Q, K] float32 scores.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    autocast_dtype = precision_autocast_dtype(precision, device)
    affinity = torch.as_tensor(affinity, dtype=torch.float32)
    Q, T, _ = affinity.shape
    scores = np.empty((Q, T - 1), dtype=np.float32)
    fused = fused_cpu_encoder(model, precision, device, onednn_graph)
    was_training = model.training
    model.eval()
    try:
        # One autocast region for all batches: autocast caches the low-precision copies of the weights
        # inside a region, so they are cast once, not once per batch.
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            for start in range(0, Q, batch_size):
                chunk = affinity[start : start + batch_size].to(device, non_blocking=True)
                if fused is not None:
                    z = fused(chunk)  # [b, K+1, d]
                elif autocast_dtype is torch.bfloat16:
                    z = forward_bf16(model, chunk)
                else:  # fp32, or fp16 autocast as the authors ran it
                    z = model(chunk)
                scores[start : start + batch_size] = cosine_to_query(z)[:, 1:].cpu().numpy()  # [b, K] float32
    finally:
        model.train(was_training)
    return scores


def affinity_feature_scores(affinity: torch.Tensor | np.ndarray) -> np.ndarray:
    """The training-free "Affinity Feature" baseline (Table 5): cosine between the raw affinity vectors of the
    query (row 0) and of each candidate.

    Args:
        affinity: [Q, K+1, L] affinity sequences, row 0 = the query.
    Returns:
        [Q, K] float32 scores.
    """
    affinity = F.normalize(torch.as_tensor(affinity, dtype=torch.float32), dim=-1)
    return (affinity[:, 1:] * affinity[:, :1]).sum(dim=-1).numpy()


def rerank_topk(ranks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Reorder the first K entries of each ranking by descending score; entries K.. keep their order.

    Ties keep their first-round order (stable sort).  When the requested K exceeds the ranking length N, the
    scorer saw only N candidates and ``scores`` has N columns.

    Args:
        ranks: [Q, N] int first-round rankings (db indices, best first).
        scores: [Q, K] scores of ``ranks[:, :K]``, K <= N.
    Returns:
        [Q, N] new rankings (a new array).
    """
    ranks, scores = np.asarray(ranks), np.asarray(scores)
    Q, K = scores.shape
    if ranks.ndim != 2 or ranks.shape[0] != Q or K > ranks.shape[1]:
        raise ValueError(f"scores {scores.shape} do not fit rankings {ranks.shape} (need [Q, K <= N])")
    order = np.argsort(-scores, axis=1, kind="stable")  # negating keeps the stable sort's tie order
    reranked = ranks.copy()
    reranked[:, :K] = np.take_along_axis(ranks[:, :K], order, axis=1)
    return reranked


Scorer = Callable[[torch.Tensor], np.ndarray]  # affinity [B, K+1, L] (row 0 = the query) -> scores [B, K]


def affinity_scores(
    query: torch.Tensor,
    db: torch.Tensor,
    ranks: np.ndarray | torch.Tensor,
    K: int,
    L: int,
    scorer: Scorer,
    batch_size: int,
) -> np.ndarray:
    """Scores of every query's top-K candidates by ``scorer`` on their affinity sequences (Eq. 1).

    The sequences are built ``batch_size`` queries at a time, on the device of the descriptors, and handed to
    ``scorer`` as they are (a scorer that runs elsewhere moves them).

    Args:
        query: [Q, D], db: [N, D] float32 descriptors (unit rows).
        ranks: [Q, >= max(K, L-1)] first-round rankings (db indices, best first).
    Returns:
        [Q, K] float32 scores of ``ranks[:, :K]``, in that order.
    """
    width = max(K, L - 1)
    scores = np.empty((len(query), K), dtype=np.float32)
    for start in range(0, len(query), batch_size):
        rows = slice(start, start + batch_size)
        candidates = torch.as_tensor(ranks[rows, :width]).to(query.device, torch.int64)
        scores[rows] = np.asarray(scorer(test_affinity(query[rows], db, candidates, K, L)))
    return scores


def rerank_by_affinity(
    query: torch.Tensor,
    db: torch.Tensor,
    ranks: np.ndarray,
    K: int,
    L: int,
    scorer: Scorer,
    batch_size: int,
) -> np.ndarray:
    """Rankings [Q, N'] with each top-K block reordered by ``scorer``'s scores (:func:`affinity_scores`,
    :func:`rerank_topk`); ``ranks`` [Q, N'] with N' >= max(K, L-1), the other arguments as there."""
    return rerank_topk(ranks, affinity_scores(query, db, ranks, K, L, scorer, batch_size))


def measure_latency(
    model: CSAReranker,
    K: int,
    L: int,
    device: torch.device | str,
    precision: str = "auto",
    repeats: int = 20,
    warmup: int = 3,
    onednn_graph: bool = True,
) -> dict[str, float]:
    """Per-query latency of the re-ranker (Table 1 / 6): one random affinity [1, K+1, L] at a time, from the
    host tensor to the scores back on the host, after ``warmup`` untimed runs; ``precision`` and
    ``onednn_graph`` as in :func:`csa_scores`.

    Returns:
        ``median_ms`` and ``p90_ms`` over ``repeats`` runs, and ``peak_mem_mb`` over the warm-up and timed
        runs: on CUDA the peak of allocated device memory (model weights included); on CPU the growth of the
        process's peak RSS, an underestimate (0 at worst) when an earlier phase of the process used more
        memory, because that high-water mark cannot be reset.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    affinity = torch.rand(1, K + 1, L, generator=generator) * 2 - 1  # cosines in [-1, 1]
    model.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_bytes()

    def score_one_query(_: int) -> None:  # ends with the scores' copy to the host
        csa_scores(model, affinity, batch_size=1, precision=precision, device=device, onednn_graph=onednn_graph)

    times_ms = time_calls(score_one_query, repeats, warmup, device, precision)
    if device.type == "cuda":
        peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mem_mb = (peak_rss_bytes() - rss_before) / 2**20
    return {
        "median_ms": float(np.median(times_ms)),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "peak_mem_mb": float(peak_mem_mb),
    }


def time_calls(
    call: Callable[[int], object], repeats: int, warmup: int, device: torch.device | str, precision: str = "auto"
) -> list[float]:
    """Wall-clock milliseconds of ``call(i)`` for i = 0 .. repeats-1, after untimed ``call(i)`` for
    i = 0 .. warmup-1: the one timing loop of the re-ranking latencies.

    All calls run in one enclosing autocast region of ``precision`` on ``device``, which keeps the low-precision
    copies of the weights made in the warm-up for the timed calls (the region of :func:`csa_scores` nests inside
    it), as in a run over many queries.  On CUDA every timed call starts on an idle device; ``call`` should end
    with its result on the host.
    """
    device = torch.device(device)
    autocast_dtype = precision_autocast_dtype(precision, device)
    times_ms = []
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for i in range(warmup):
            call(i)
        for i in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            call(i)
            times_ms.append((time.perf_counter() - started) * 1000)
    return times_ms
