"""The database's neighbour graph, built once per (test set, network) and read by every method that needs it.

The DBA variants, DFS, GSS, k-reciprocal and LAttDBA all start from the same lists: every database row's most
similar rows, itself first (DDBA and k-reciprocal also its least similar ones).  Rule db_graph computes them
once, at the widest any configured method reads (:attr:`csa_rerank.plan.core.Plan.graph_widths`), with
:func:`csa_rerank.knn.self_graph` (on the GPU when the job has one), and each method reads its first columns.
Without a graph (API use) a method builds its own with the same function.  Up to
``knn.GRAPH_TILE_WIDTH`` columns every graph is tiled alike, so the first k columns of a wide graph are exactly
the k-wide graph a method would build: the rankings do not depend on whether the graph was shared.

File: HDF5 with ``near_ids`` [N, near] int32 (the row itself first), ``near_scores`` [N, near] float32 (+inf
for the row itself), ``far_ids`` and ``far_scores`` [N, far] (least similar first); attributes ``near``, ``far``.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from . import h5io

log = logging.getLogger("csa_rerank")


def build(testset_file: str, distractors_file: str | None, near: int, far: int, memory_gb: float, device):
    """The graph of a test set's database (the distractors appended).

    On the CPU the rows are read a tile at a time from the files (memory stays bounded by ``memory_gb``); on a GPU
    the database is put on the device once (R1M: 8.2 GB), so that no tile crosses the bus twice.
    """
    import torch

    from .knn import RowStack, self_graph

    with contextlib.ExitStack() as files:
        parts = [files.enter_context(h5io.open_array(path, "db")) for path in (testset_file, distractors_file) if path]
        db = RowStack(parts)
        if torch.device(device).type != "cpu":
            db = torch.from_numpy(np.ascontiguousarray(db[0 : db.shape[0]], dtype=np.float32)).to(device)
        start = time.perf_counter()
        graph = self_graph(db, near, far, memory_bytes=int(memory_gb * 2**30), device=device)
    log.info("graph of %d rows (%d near, %d far) on %s in %.2f s", len(graph.near_ids), near, far, device,
             time.perf_counter() - start)  # fmt: skip
    return graph


def write(path: str, graph) -> None:
    """Write a :class:`csa_rerank.knn.SelfGraph` (ids as int32: R1M's 1M rows fit)."""
    arrays = {
        "near_ids": graph.near_ids.astype(np.int32),
        "near_scores": graph.near_scores,
        "far_ids": graph.far_ids.astype(np.int32),
        "far_scores": graph.far_scores,
    }
    h5io.write_arrays(path, arrays, {"near": graph.near_ids.shape[1], "far": graph.far_ids.shape[1]})


def read(path: str):
    """A graph file as a :class:`csa_rerank.knn.SelfGraph` (ids as int64)."""
    from .knn import SelfGraph

    return SelfGraph(
        h5io.read_array(path, "near_scores"),
        h5io.read_array(path, "near_ids").astype(np.int64),
        h5io.read_array(path, "far_scores"),
        h5io.read_array(path, "far_ids").astype(np.int64),
    )


def columns(db: np.ndarray, graph, near: int, far: int = 0):
    """What a method reads: the first ``near`` and ``far`` columns of ``graph``, or, without one, the graph of
    ``db`` [N, D] built here (:func:`csa_rerank.knn.self_graph`)."""
    from .knn import SelfGraph, self_graph

    if graph is None:
        return self_graph(db, near, far)
    near, far = min(near, len(db)), min(far, len(db))
    have = (graph.near_ids.shape[1], graph.far_ids.shape[1])
    if len(graph.near_ids) != len(db) or have[0] < near or have[1] < far:
        raise ValueError(
            f"the graph has {len(graph.near_ids)} rows, {have[0]} near and {have[1]} far columns; this method "
            f"reads {len(db)} rows, {near} near and {far} far: build it for these widths (knn.self_graph)"
        )
    first = (graph.near_scores[:, :near], graph.near_ids[:, :near], graph.far_scores[:, :far], graph.far_ids[:, :far])
    return SelfGraph(*(np.ascontiguousarray(part) for part in first))
