"""One function per pipeline stage: plain paths and parameters in, files out.

The Snakemake scripts in ``workflow/scripts`` only unpack ``snakemake.input/output/params`` and call these, so
every stage can be run and tested without Snakemake.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from pathlib import Path

import numpy as np

from . import datasets, h5io
from .atomic import atomic_path, write_json

log = logging.getLogger("csa_rerank")


# --------------------------------------------------------------------------------------------------------------
# extraction
def extract(
    kind: str,
    listing: str,
    images: str,
    network_name: str,
    network_spec: dict,
    settings: dict,
    out_path: str,
    checkpoint: str | None = None,
    whitening: str | None = None,
    use_gpu: bool = True,
    body_checkpoint: str | None = None,
    shard: tuple[int, int] | None = None,
    n_images: int | None = None,
) -> None:
    """Descriptors of one dataset with one network (HDF5 contract in :mod:`csa_rerank.h5io`).

    ``kind``: ``test``, ``distractors``, ``training`` (rSfM120k's ``train``/``val``) or ``whitening`` (the images of
    cirtorch's ``retrieval-SfM-120k-whiten.pkl``, stored as ``db``).  For the distractors, ``shard = (start, stop)``
    extracts only those rows of the list, which must hold ``n_images`` images (the count the workflow planned with).

    ``post_whitening`` of the network's spec: ``centre``/``learned`` are fitted by the job of the dataset that
    provides them (the training set's ``train`` split or the whitening set, with its ``qidxs``/``pidxs`` pairs for
    ``learned``), which stores the parameters (``whitening_mean``, ``whitening_projection``) beside its whitened
    descriptors; every other job reads them from that file (``whitening``).  ``checkpoint`` applies the
    precomputed ``meta['Lw']`` of the network's checkpoint.
    """
    from .extract import IMAGENET_MEAN, IMAGENET_STD, extract_descriptors, multiscale_power, pick_device
    from .networks import build_configured_network

    net, mean, std, meta = build_configured_network(network_spec, checkpoint, body_checkpoint)
    msp = multiscale_power(net) if settings["msp"] == "auto" else float(settings["msp"])
    device = pick_device(use_gpu)
    common = dict(
        image_size=settings["image_size"],
        scales=settings["scales"],
        msp=msp,
        mean=mean or IMAGENET_MEAN,
        std=std or IMAGENET_STD,
        device=device,
        batch_size=settings["batch_size"],
        num_workers=settings["workers"],
    )
    log.info("network %s on %s, msp=%s, settings %s", network_name, device, msp, settings)
    describe = functools.partial(extract_descriptors, net, **common)
    arrays = _dataset_descriptors(kind, listing, images, describe, shard, n_images)
    method = network_spec.get("post_whitening", "none")
    if method != "none":
        multiscale = len(settings["scales"]) > 1
        params, fitted = _post_whitening_params(method, arrays, kind, listing, whitening, meta, multiscale, checkpoint)
        arrays = _post_whiten(method, network_spec.get("whitening_dims"), arrays, params, fitted)
    attrs = {
        "network": network_name,
        "post_whitening": method,
        "arch": network_spec["arch"],
        "pooling": network_spec.get("pooling", "gem"),
        "image_size": settings["image_size"],
        "scales": list(settings["scales"]),
        "msp": msp,
        "weights": checkpoint or body_checkpoint or f"random(seed={network_spec.get('seed')})",
    }
    if shard is not None:
        attrs.update(start=int(shard[0]), stop=int(shard[1]))
    h5io.write_arrays(out_path, arrays, attrs)
    log.info("wrote %s: %s", out_path, {k: v.shape for k, v in arrays.items()})


def _dataset_descriptors(kind, listing, images, describe, shard, n_images) -> dict[str, np.ndarray]:
    """The descriptor arrays of a dataset of ``kind`` (see :func:`extract`), named as in its file;
    ``describe(paths, desc=..., bbxs=...)`` extracts those of a list of images."""
    if kind == "test":
        gnd = datasets.load_ground_truth(listing)
        db_paths, query_paths, bbxs = datasets.test_image_paths(Path(images).parent, gnd)
        return {"db": describe(db_paths, desc="database"), "query": describe(query_paths, bbxs=bbxs, desc="queries")}
    if kind == "distractors":
        paths = datasets.distractor_image_paths(listing)
        if n_images is not None and len(paths) != n_images:
            raise datasets.DatasetFormatError(
                f"{listing}: lists {len(paths)} images, but the workflow was planned for {n_images} "
                "(datasets.distractor_images in the config): fix the count or the list"
            )
        start, stop = shard if shard is not None else (0, len(paths))
        return {"db": describe(paths[start:stop], desc=f"distractors {start}-{stop}")}
    if kind == "whitening":
        wdb = datasets.load_whitening_db(listing)
        return {"db": describe([datasets.cid_path(images, cid) for cid in wdb["cids"]], desc="whitening set")}
    if kind == "training":
        db = datasets.load_training_db(listing)
        return {
            split: describe([datasets.cid_path(images, cid) for cid in db[split]["cids"]], desc=split)
            for split in ("train", "val")
        }
    raise ValueError(f"unknown dataset kind {kind!r}")


def _post_whitening_params(method, arrays, kind, listing, whitening_file, meta, multiscale, checkpoint):
    """(parameters ``{"mean", "projection"?}``, whether this job fitted them) of a network's post-whitening."""
    from .whitening import fit_post_whitening, precomputed_whitening

    if method == "checkpoint":
        return precomputed_whitening(meta, multiscale, source=checkpoint or "the network"), False
    if whitening_file is not None:
        params = {"mean": h5io.read_array(whitening_file, "whitening_mean")}
        if method == "learned":
            params["projection"] = h5io.read_array(whitening_file, "whitening_projection")
        return params, False
    if kind == "training":
        X, pairs = arrays["train"], datasets.load_training_db(listing)["train"]
    elif kind == "whitening":
        X, pairs = arrays["db"], datasets.load_whitening_db(listing)
    else:
        raise ValueError(f"post-whitening {method!r} of a {kind} set needs the descriptor file holding its parameters")
    log.info("fitting post-whitening %s on %d %s descriptors", method, len(X), kind)
    return fit_post_whitening(method, X, pairs.get("qidxs"), pairs.get("pidxs")), True


def _post_whiten(method, dims, arrays, params, fitted) -> dict[str, np.ndarray]:
    """Whitened descriptors replacing the raw ones (plus the parameters, when this job fitted them)."""
    from .whitening import apply_whitening

    out = {name: apply_whitening(x, params["mean"], params.get("projection"), dims) for name, x in arrays.items()}
    log.info("post-whitening %s (dims %s) applied to %s", method, dims, list(arrays))
    return {**out, **{f"whitening_{k}": v for k, v in params.items()}} if fitted else out


# the arrays of a dataset given as descriptor files, by its kind (csa_rerank.h5io)
IMPORTED_ARRAYS = {"test": ("query", "db"), "training": ("train", "val")}


def import_descriptors(kind: str, source: str, network: str, out_path: str) -> None:
    """The descriptor file of a dataset given as descriptors (extraction skipped): the arrays of its ``kind``
    read from ``source`` (HDF5 ``FILE``, or the authors' pickle layout; :mod:`csa_rerank.formats`), checked to be
    finite and L2-normalised (an error names the file, the array and the row), written in the HDF5 contract."""
    from .api import check_descriptors
    from .formats import read_descriptors

    arrays = {}
    for key in IMPORTED_ARRAYS[kind]:
        spec = f"{source}:{key}"
        arrays[key] = np.ascontiguousarray(check_descriptors(read_descriptors(spec), spec), dtype=np.float32)
    if len({x.shape[1] for x in arrays.values()}) != 1:
        shapes = {key: x.shape for key, x in arrays.items()}
        raise ValueError(f"{source}: arrays of different dimensions: {shapes}")
    h5io.write_arrays(out_path, arrays, {"network": network, "imported_from": source})
    log.info("imported %s: %s", source, {k: x.shape for k, x in arrays.items()})


def merge_shards(shard_files: list[str], out_path: str, n_images: int, block_rows: int = 16384) -> None:
    """The descriptor file of a sharded dataset (the distractors) from its shard files, in order.

    The shards' ``db`` rows are copied into one ``db`` dataset ``block_rows`` at a time (never a whole shard, never
    all of them in memory).  The shards must tile ``0 ... n_images`` without gap or overlap and agree on the
    network and extraction settings, which the merged file keeps as its attributes (without ``start``/``stop``).
    """
    attrs, dims, stop = None, None, 0
    for path in shard_files:
        shard_attrs = h5io.read_attrs(path)
        with h5io.open_array(path, "db") as db:
            rows, dim = db.shape
        if (shard_attrs.get("start"), shard_attrs.get("stop")) != (stop, stop + rows):
            raise ValueError(
                f"{path}: holds rows {shard_attrs.get('start')}-{shard_attrs.get('stop')} ({rows} descriptors), "
                f"but the next shard must start at row {stop}; delete it and rerun its job"
            )
        common = {k: v for k, v in shard_attrs.items() if k not in ("start", "stop")}
        if attrs is not None and (common != attrs or dim != dims):
            raise ValueError(f"{path}: extracted with other settings than {shard_files[0]}; delete it and rerun")
        attrs, dims, stop = common, dim, stop + rows
    if stop != n_images:
        raise ValueError(f"the shards hold {stop} descriptors, expected {n_images}")
    with h5io.atomic_h5(out_path) as out:
        merged = out.create_dataset("db", shape=(n_images, dims), dtype=np.float32)
        start = 0
        for path in shard_files:
            with h5io.open_array(path, "db") as db:
                for first in range(0, len(db), block_rows):
                    block = db[first : first + block_rows]
                    merged[start + first : start + first + len(block)] = block
                start += len(db)
        for key, value in {**attrs, "shards": len(shard_files)}.items():
            out.attrs[key] = value
    log.info("merged %d shards into %s: %d x %d", len(shard_files), out_path, n_images, dims)


# --------------------------------------------------------------------------------------------------------------
# first-round ranking
def knn(
    testset_file: str, distractors_file: str | None, out_path: str, memory_gb: float, top_scores: int = 2048
) -> None:
    """Whole-database first-round ranking of every query (exact AP needs all of it).

    The database (the test set's images, then the distractors, numbered after them) is read from the descriptor
    files one tile at a time and never held whole (R1M is 8 GB); the search allocates at most ``memory_gb`` GiB.
    """
    from .knn import RowStack, search

    query = h5io.read_array(testset_file, "query")
    with contextlib.ExitStack() as files:
        parts = [files.enter_context(h5io.open_array(path, "db")) for path in (testset_file, distractors_file) if path]
        db = RowStack(parts)
        start = time.perf_counter()
        scores, ids = search(query, db, db.shape[0], memory_bytes=int(memory_gb * 2**30))
    log.info("ranked %d queries against %d images in %.2f s", len(query), db.shape[0], time.perf_counter() - start)
    h5io.write_arrays(
        out_path,
        {"ranks": ids.astype(np.int32), "scores": scores[:, :top_scores]},
        {"n_db": int(db.shape[0]), "n_query": int(query.shape[0])},
    )


def train_neighbours(features_file: str, out_path: str, k: int, memory_gb: float) -> None:
    """Top-k neighbour lists of every training image (itself first), for both splits.

    Descriptors are read from the file a tile at a time and each split is written when done; the search of one
    split allocates at most ``memory_gb`` GiB beside its [N, k] lists (:func:`csa_rerank.knn.graph_tiles`).
    """
    from .knn import self_neighbours

    with h5io.atomic_h5(out_path) as out:
        for split in ("train", "val"):
            with h5io.open_array(features_file, split) as features:
                start = time.perf_counter()
                out.create_dataset(split, data=self_neighbours(features, k, memory_bytes=int(memory_gb * 2**30)))
                log.info("%s: %d x top-%d in %.2f s", split, len(features), k, time.perf_counter() - start)
        out.attrs["k"] = k


# --------------------------------------------------------------------------------------------------------------
# affinity sequences
def affinity(testset_file: str, distractors_file: str | None, knn_file: str, K: int, L: int, out_path: str) -> None:
    """Affinity sequences [Q, K+1, L] of every query (Eq. 1), one HDF5 chunk per query."""
    import torch

    from .affinity import test_affinity

    query, db = h5io.load_test_descriptors(testset_file, distractors_file)
    ranks = torch.as_tensor(h5io.read_array(knn_file, "ranks").astype(np.int64))
    if max(K, L - 1) > db.shape[0]:
        raise ValueError(f"K={K} / L={L} exceed the {db.shape[0]} database images of {testset_file}")
    seq = test_affinity(torch.as_tensor(query), torch.as_tensor(db), ranks, K, L).numpy()
    h5io.write_arrays(
        out_path,
        {"affinity": seq, "candidates": ranks[:, :K].numpy()},
        {"K": K, "L": L},
        chunks={"affinity": (1, K + 1, L)},
    )


# --------------------------------------------------------------------------------------------------------------
# evaluation
def evaluate(knn_file: str, gnd_file: str, out_path: str, rerank_file: str | None = None) -> dict:
    """revisitop metrics of the first-round ranking, or of it with its top-K block replaced by a re-ranking.

    The latency and memory of whatever produced the evaluated lists are copied from its file's attributes: the
    re-ranking file, or a compared method's ranking file (:mod:`csa_rerank.compare`).
    """
    from .evaluate import TOP_SHOWN, per_query_table
    from .evaluate import evaluate as revisitop

    ranks = h5io.read_array(knn_file, "ranks").astype(np.int64)
    extra = {k: v for k, v in h5io.read_attrs(knn_file).items() if k in ("latency_ms", "memory_gb")}
    if rerank_file:
        topk = h5io.read_array(rerank_file, "topk")
        K = topk.shape[1]
        if not np.array_equal(np.sort(topk, axis=1), np.sort(ranks[:, :K], axis=1)):
            raise ValueError(f"{rerank_file}: the re-ranked block is not a permutation of the first-round top-{K}")
        ranks[:, :K] = topk
        extra = {k: v for k, v in h5io.read_attrs(rerank_file).items() if k in ("latency_ms", "memory_gb")}
    gnd = datasets.load_ground_truth(gnd_file)["gnd"]
    result = {**revisitop(ranks, gnd), **{k: float(v) for k, v in extra.items()}}
    # per query (csa_rerank.per_query): the metrics and the first results, for the analysis and Figure 3
    result |= {"per_query": per_query_table(ranks, gnd), "top": ranks[:, :TOP_SHOWN].tolist()}
    write_json(out_path, result)
    log.info("%s: %s", out_path, {p: round(result[p]["mAP"], 2) for p in ("easy", "medium", "hard")})
    return result


def evaluate_val(
    features_file: str,
    db_file: str,
    model_file: str,
    out_path: str,
    K: int,
    L: int,
    precision: str = "auto",
    batch_size: int = 8,
    onednn_graph: bool = True,
    use_gpu: bool = True,
) -> dict:
    """First-round and CSA mAP on the training set's ``val`` split (supplementary Fig. 1).

    Every val image is a query against the other val images; its positives are the images of its cluster
    (:mod:`csa_rerank.validation`).  ``K`` is capped at the number of other images.
    """
    from .extract import pick_device
    from .methods import csa
    from .validation import evaluate_split

    device = pick_device(use_gpu)
    model = csa.load(model_file, L, device)
    features = h5io.read_array(features_file, "val")
    clusters = np.asarray(datasets.load_training_db(db_file)["val"]["cluster"])
    scorer = csa.scorer(model, precision, batch_size, onednn_graph, device)
    start = time.perf_counter()
    result = evaluate_split(features, clusters, K, L, scorer, batch_size=batch_size, device=device)
    if result["K"] != K:
        log.warning("K=%d exceeds the %d other images of the val split: K=%d", K, result["n_images"] - 1, result["K"])
    result["model"] = model_file
    write_json(out_path, result)
    log.info(
        "%s: %d queries in %.1f s, mAP first round %.2f, CSA %.2f",
        out_path, result["n_queries"], time.perf_counter() - start,
        result["first_round"]["mAP"], result["rerank"]["mAP"],
    )  # fmt: skip
    return result


# --------------------------------------------------------------------------------------------------------------
# CSA training
def train(
    db_file: str,
    feature_files: list[str],
    neighbour_files: list[str],
    reranker: dict,
    training: dict,
    model_path: str,
    summary_path: str,
    log_csv: str,
    curve_png: str,
    use_gpu: bool = True,
    processes: int = 1,
    threads: int = 1,
    code: str = "",
) -> dict:
    """Train one re-ranker on the training split's samples of one or several backbones.

    With ``processes`` > 1 the training runs data-parallel in that many processes started with ``torchrun``
    (one per GPU on CUDA, gloo processes sharing ``threads`` on the CPU); the result is the same up to float
    rounding.  The resumable state (last-epoch checkpoint, running log) lives in ``<model dir>/run/``, which
    Snakemake does not delete before a rerun, so an interrupted job continues where it stopped; this process holds
    the lock of ``run/`` while it trains (:mod:`csa_rerank.run_lock`).  The checkpoint records ``code`` (the
    digest of the training code, the rule's ``code`` param) and the inputs' sizes and times, beside the settings:
    it is resumed only by the same code on the same files (:func:`csa_rerank.training.train`).
    """
    import shutil

    from .run_lock import exclusive
    from .training import plot_loss_curve

    run_dir = Path(model_path).parent / "run"
    settings = dict(
        db_file=db_file,
        feature_files=feature_files,
        neighbour_files=neighbour_files,
        reranker=reranker,
        training=training,
        run_dir=str(run_dir),
        use_gpu=use_gpu,
        identity={"code": code, "inputs": _file_stamps([db_file, *feature_files, *neighbour_files])},
    )
    start = time.perf_counter()
    from .distributed import launch, train_in_this_process

    with exclusive(run_dir, log=log.warning):
        if processes > 1:
            launch(settings, processes, threads_per_process=max(1, threads // processes), log=log.info)
            final = run_dir / "model.pt"
            facts = json.loads((run_dir / "facts.json").read_text())
        else:
            final, facts = train_in_this_process(**settings)
    seconds = time.perf_counter() - start
    for source, copy in ((final, model_path), (run_dir / "train_log.csv", log_csv)):
        with atomic_path(copy) as temporary:
            shutil.copyfile(source, temporary)
    plot_loss_curve(log_csv, curve_png)
    summary = {**facts, "processes": processes, "seconds_this_run": round(seconds, 2)}
    write_json(summary_path, summary)
    return summary


def _file_stamps(paths: list[str]) -> list[list]:
    """(path, size, modification time in ns) of each file: what tells a checkpoint's inputs from rewritten ones
    without reading gigabytes of descriptors (Snakemake itself compares large inputs by time)."""
    return [[path, Path(path).stat().st_size, Path(path).stat().st_mtime_ns] for path in paths]


# --------------------------------------------------------------------------------------------------------------
# re-ranking
def _write_rerank(out_path: str, candidates: np.ndarray, scores: np.ndarray, attrs: dict) -> None:
    from .rerank import rerank_topk

    # scores stay in the first-round order of the candidates, beside the re-ordered block
    h5io.write_arrays(out_path, {"topk": rerank_topk(candidates, scores), "scores": scores}, attrs)


def rerank_affinity_feature(affinity_file: str, out_path: str) -> None:
    """The training-free "Affinity Feature" row: candidates ordered by cos(a_query, a_candidate)."""
    from .rerank import affinity_feature_scores

    seq = h5io.read_array(affinity_file, "affinity")
    candidates = h5io.read_array(affinity_file, "candidates")
    _write_rerank(out_path, candidates, affinity_feature_scores(seq), {"method": "affinity_feature"})


def rerank_csa(
    affinity_file: str,
    model_file: str,
    testset_file: str,
    distractors_file: str | None,
    knn_file: str,
    out_path: str,
    precision: str = "auto",
    batch_size: int = 8,
    onednn_graph: bool = True,
    latency_queries: int = 70,
    use_gpu: bool = True,
) -> dict:
    """CSA re-ranking of every query's top-K block, plus the per-query latency and memory of Tables 1 and 6.

    The scores are those of :func:`csa_rerank.methods.csa.scores` on the descriptors, computed from the affinity
    stage's sequences (the same sequences, built once) by the method's scorer.  Latency: each of the first
    ``latency_queries`` queries is re-ranked alone by :func:`csa_rerank.methods.csa.rerank`, from its descriptors
    to its new order (affinity, model, sort), after three warm-up queries; the median is reported.  Memory: what
    re-ranking needs resident, i.e. the database descriptors (the O(Nd) of Table 6), the model's parameters and
    the peak activation memory of one query.
    """
    from .extract import pick_device
    from .methods import csa
    from .onednn_graph import fused_cpu_encoder
    from .rerank import measure_latency

    device = pick_device(use_gpu)
    seq = h5io.read_array(affinity_file, "affinity")
    candidates = h5io.read_array(affinity_file, "candidates")
    K, L = candidates.shape[1], seq.shape[2]
    model = csa.load(model_file, L, device)
    scores = csa.scorer(model, precision, batch_size, onednn_graph, device)(seq)
    query, db = h5io.load_test_descriptors(testset_file, distractors_file)
    ranks = h5io.read_array(knn_file, "ranks")
    n_timed = min(latency_queries, len(query))
    latency_ms = _csa_latency_ms(model, query, db, ranks, K, L, n_timed, precision, onednn_graph, device)
    one_query = measure_latency(model, K, L, device, precision, repeats=3, warmup=2, onednn_graph=onednn_graph)
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    memory_gb = (db.nbytes + params_bytes + one_query["peak_mem_mb"] * 2**20) / 2**30
    engine = "oneDNN Graph" if fused_cpu_encoder(model, precision, device, onednn_graph) is not None else "eager"
    attrs = {"method": "csa", "model": model_file, "K": K, "L": L, "precision": precision, "engine": engine,
             "latency_ms": latency_ms, "memory_gb": memory_gb, "device": str(device)}  # fmt: skip
    _write_rerank(out_path, candidates, scores, attrs)
    log.info("K=%d L=%d: %.2f ms per query (median of %d, %s %s), %.3f GB",
             K, L, latency_ms, n_timed, engine, precision, memory_gb)  # fmt: skip
    return attrs


def _csa_latency_ms(model, query, db, ranks, K, L, n_timed, precision, onednn_graph, device) -> float:
    """Median wall-clock time of :func:`csa_rerank.methods.csa.rerank` on one query at a time (queries
    0 .. n_timed-1 after queries 0, 1, 2 as warm-up), the descriptors on ``device``."""
    import torch

    from .methods import csa
    from .rerank import time_calls

    query_t, db_t = torch.as_tensor(query, device=device), torch.as_tensor(db, device=device)
    width = max(K, L - 1)

    def rerank_one(i: int) -> None:
        csa.rerank(query_t[i : i + 1], db_t, ranks[i : i + 1, :width], model, K, L, precision, 1, onednn_graph, device)

    times_ms = time_calls(rerank_one, n_timed, min(3, len(query)), device, precision)
    return float(np.median(times_ms))
