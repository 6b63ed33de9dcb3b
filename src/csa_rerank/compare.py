"""Pipeline stages of the compared re-ranking methods (Table 5): fit a learned method, re-rank with any method.

A method's output has the layout of a first-round ranking file (``ranks`` [Q, N], the whole list, best first),
so everything downstream of the first round treats it as one: it is evaluated like a first round (the method's
own row) and CSA can re-rank it (the "GSS+Ours" and "DFS+Ours" rows).  Its attributes record the method, its
parameters, the re-ranking latency per query and the memory (Table 6).
"""

from __future__ import annotations

import importlib
import json
import logging
import time

import numpy as np

from . import datasets, graph, h5io, registry
from .atomic import atomic_path
from .jobs import peak_rss_bytes

log = logging.getLogger("csa_rerank")

# Methods whose ``fit`` learns weights on the training set, and the module that has it (csa_rerank.registry).
LEARNED = registry.learned()
# The method that needs the images and the network at re-ranking time (DSM).
(SPATIAL,) = [m.label for m in registry.METHODS if m.needs_images]


def fit_method(method: str, db_file: str, features_file: str, neighbours_file: str, params: dict, out_path: str):
    """Train a learned method on the training split (descriptors, neighbour lists, cluster labels)."""
    import torch

    if method not in LEARNED:
        raise ValueError(f"{method!r} has nothing to fit; learned methods: {', '.join(LEARNED)}")
    module = importlib.import_module(f"csa_rerank.methods.{LEARNED[method]}")
    clusters = np.asarray(datasets.load_training_db(db_file)["train"]["cluster"])
    features = h5io.read_descriptors(features_file, "train")
    neighbours = h5io.read_array(neighbours_file, "train")
    started = time.perf_counter()
    weights = module.fit(features, neighbours, clusters, **params)
    log.info("%s fitted on %d images in %.1f s", method, len(features), time.perf_counter() - started)
    with atomic_path(out_path) as temporary:
        torch.save(weights, temporary)


def rerank_method(
    method: str,
    params: dict,
    testset_file: str,
    distractors_file: str | None,
    knn_file: str,
    out_path: str,
    weights_file: str | None = None,
    images: dict | None = None,
    graph_file: str | None = None,
    use_gpu: bool = False,
) -> dict:
    """Re-rank every query's first-round list with one compared method; writes a ranking file.

    Args:
        params: the method's keyword parameters (config ``methods.<label>``), over its module's defaults.
        weights_file: the fitted weights of a learned method (:data:`LEARNED`).
        images: for DSM, ``{"network": spec, "checkpoint": path or None, "body_checkpoint": path or None, "gnd":
            path, "distractors": list file or None, "image_size": int, "use_gpu": bool}``: DSM matches activations
            of the images themselves.
        graph_file: the database's neighbour graph (rule db_graph), given to the methods that read one
            (:mod:`csa_rerank.graph`); without it they build their own.
        use_gpu: run a method that can (registry ``gpu``: GSS; DSM through ``images``) on the GPU, if there is one.
    """
    import torch

    from .methods import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    query, db = h5io.load_test_descriptors(testset_file, distractors_file)
    ranks = h5io.read_array(knn_file, "ranks").astype(np.int64)
    kwargs = dict(params)
    if method in LEARNED:
        if not weights_file:
            raise ValueError(f"{method} needs the weights fitted on the training set")
        kwargs["weights"] = torch.load(weights_file, map_location="cpu", weights_only=True)
    if registry.method(method).gpu and method != SPATIAL:
        from .extract import pick_device

        kwargs["device"] = str(pick_device(use_gpu))
    held = db.nbytes + query.nbytes  # what the method holds before it starts
    if graph_file:
        kwargs["graph"] = graph.read(graph_file)
        held += sum(part.nbytes for part in kwargs["graph"])
    rss_before = peak_rss_bytes()
    started = time.perf_counter()
    if method == SPATIAL:
        new_ranks = _rerank_dsm(ranks, images, kwargs)
    else:
        new_ranks = METHODS[method](query, db, ranks, **kwargs)
    seconds = time.perf_counter() - started
    new_ranks = np.asarray(new_ranks)
    if new_ranks.shape != ranks.shape or not np.array_equal(np.sort(new_ranks, axis=1), np.sort(ranks, axis=1)):
        raise RuntimeError(f"{method} returned rankings that are not permutations of the first-round lists")
    attrs = {
        "method": method,
        "params": json.dumps(params, sort_keys=True),
        "latency_ms": 1000.0 * seconds / len(query),  # all queries in one call: the mean per query
        "memory_gb": (held + max(0, peak_rss_bytes() - rss_before)) / 2**30,
    }
    h5io.write_arrays(out_path, {"ranks": new_ranks.astype(np.int32)}, attrs)
    log.info("%s: %d queries in %.1f s (%.2f ms per query)", method, len(query), seconds, attrs["latency_ms"])
    return attrs


def _rerank_dsm(ranks: np.ndarray, images: dict, kwargs: dict) -> np.ndarray:
    from .extract import pick_device
    from .networks import build_configured_network

    # imported by the registry's name, like every method, so that DSM's code is in DSM's jobs' digest only
    dsm = importlib.import_module(registry.method(SPATIAL).module)

    _, db_paths, query_paths, bbxs = datasets.searched_image_paths(images["gnd"], images.get("distractors"))
    net = build_configured_network(images["network"], images.get("checkpoint"), images.get("body_checkpoint"))[0]
    return dsm.rerank_with_network(
        net,
        query_paths,
        db_paths,
        ranks,
        image_size=images["image_size"],
        query_bbxs=bbxs,
        device=pick_device(images.get("use_gpu", True)),
        **kwargs,
    )
