"""CSA (or any compared method) on your own descriptors: arrays in, arrays out (README, "Use CSA on your own
descriptors")::

    from csa_rerank import api
    query = api.check_descriptors(api.load_descriptors("query.npy"), "query.npy")
    db = api.check_descriptors(api.load_descriptors("db.h5:db"), "db.h5")   # memory-mapped where possible
    scores, ranks = api.search(query, db, k=1024)                            # exact first round, bounded memory
    new_ranks = api.rerank(query, db, ranks, "Ours", model="model.pt", K=1024, L=512)
    print(api.evaluate(new_ranks, "gnd_roxford5k.pkl")["medium"]["mAP"])

Descriptors must be float, finite and L2-normalised (rows of unit norm: inner product = cosine, which every
method assumes).  :func:`check_descriptors` refuses anything else with the row at fault rather than normalising
silently: a descriptor that is not unit-norm usually means a step of the user's pipeline was skipped (e.g. the
normalisation after PCA-whitening), and the query and database must be normalised alike.  ``normalise=True``
(``--normalise`` of the command) normalises explicitly, with a warning giving the number of rows changed.

The database is only ever read by rows: :func:`search` goes through it in tiles (:mod:`csa_rerank.knn`) and
CSA's re-ranking gathers the top-ranked rows of a block of queries at a time, so both run on a memory-mapped
database larger than memory within ``memory_gb``.  The other methods take the database whole.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from csa_rerank import datasets, registry
from csa_rerank.formats import read_descriptors

NORM_TOLERANCE = 1e-3  # |‖x‖ - 1| accepted as unit norm (float16-stored descriptors stay within it)
CHECK_BLOCK_ROWS = 65536  # rows checked at a time, so a memory-mapped database is never read whole
OURS = "Ours"  # the registry's label of CSA


def load_descriptors(spec: str | Path) -> np.ndarray:
    """Descriptors [N, D] from ``.npy``, ``.h5`` (``FILE:KEY``), ``.fvecs`` or the authors' ``.pkl`` layout,
    memory-mapped where the format allows (:mod:`csa_rerank.formats`); not checked (:func:`check_descriptors`)."""
    return read_descriptors(spec)


def check_descriptors(x: np.ndarray, source: str = "descriptors", normalise: bool = False) -> np.ndarray:
    """``x`` [N, D] checked to hold finite, unit-norm float rows; errors name ``source`` and the first bad row.

    Returns ``x`` itself (a memory map stays one), or with ``normalise=True`` and rows that are not unit-norm an
    L2-normalised float32 copy in memory (with a warning).  Read ``CHECK_BLOCK_ROWS`` rows at a time.
    """
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{source}: descriptors must be a non-empty [rows, D] array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{source}: descriptors must be floats, not {x.dtype}")
    off_unit = []
    for start in range(0, len(x), CHECK_BLOCK_ROWS):
        block = np.asarray(x[start : start + CHECK_BLOCK_ROWS], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise ValueError(f"{source}: row {start + int(np.argmin(finite))} holds NaN or infinite values")
        norms = np.linalg.norm(block, axis=1)
        if normalise and not norms.all():
            raise ValueError(f"{source}: row {start + int(np.argmin(norms))} is all zeros and cannot be normalised")
        off_unit.append(start + np.flatnonzero(np.abs(norms - 1) > NORM_TOLERANCE))
    off_unit = np.concatenate(off_unit)
    if len(off_unit) == 0:
        return x
    if not normalise:
        row = int(off_unit[0])
        raise ValueError(
            f"{source}: row {row} has L2 norm {np.linalg.norm(np.asarray(x[row], np.float64)):.4g}, not 1 "
            f"({len(off_unit)} of {len(x)} rows are not unit-norm); L2-normalise the descriptors, or ask for it "
            "(normalise=True, --normalise)"
        )
    warnings.warn(f"{source}: L2-normalised {len(off_unit)} of {len(x)} rows that were not unit-norm", stacklevel=2)
    x = np.array(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def search(
    query: np.ndarray, db: np.ndarray, k: int | None = None, memory_gb: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """First-round ranking by inner product, exact: (scores [Q, k] float32, ranks [Q, k] int64), best first.

    ``k=None`` ranks the whole database (exact AP).  The database may be a memory map: it is read a tile at a
    time and the search allocates at most ``memory_gb`` GiB, results included (:func:`csa_rerank.knn.search`).
    """
    from csa_rerank import knn

    if query.shape[1] != db.shape[1]:
        raise ValueError(f"query descriptors are {query.shape[1]}-d, database descriptors {db.shape[1]}-d")
    k = db.shape[0] if k is None else k
    if not 1 <= k <= db.shape[0]:
        raise ValueError(f"k={k}: the database has {db.shape[0]} rows")
    return knn.search(query, db, k, memory_bytes=int(memory_gb * 2**30))


def rerank(
    query: np.ndarray,
    db: np.ndarray,
    ranks: np.ndarray,
    method: str = OURS,
    memory_gb: float = 4.0,
    progress: bool = False,
    **params,
) -> np.ndarray:
    """New rankings [Q, N'] of the first-round ``ranks`` [Q, N'] by the method of that label
    (:data:`csa_rerank.methods.METHODS`: ``"Ours"``, ``"αQE"``, ``"k-reciprocal"``, ...).

    ``params`` are the method's keyword parameters: for ``"Ours"`` ``model`` (a model file or a loaded
    :class:`~csa_rerank.model.CSAReranker`), ``K``, ``L``, ``precision``, ``batch_size``, ``device``
    (:func:`csa_rerank.methods.csa.rerank`); a learned method's ``weights`` may be the path of its weights file.
    """
    if method not in registry_labels():
        raise KeyError(f"unknown method {method!r}; choose one of {', '.join(registry_labels())}")
    ranks = _checked_ranks(ranks, query, db)
    if method == OURS:
        return rerank_csa(query, db, ranks, memory_gb=memory_gb, progress=progress, **params)
    from csa_rerank.methods import METHODS
    from csa_rerank.networks import safe_torch_load

    if isinstance(params.get("weights"), str | Path):
        params["weights"] = safe_torch_load(params["weights"], f"the weights of {method}")
    new_ranks = np.asarray(METHODS[method](np.asarray(query, np.float32), np.asarray(db, np.float32), ranks, **params))
    if new_ranks.shape != ranks.shape or not np.array_equal(np.sort(new_ranks, axis=1), np.sort(ranks, axis=1)):
        raise RuntimeError(f"{method} returned rankings that are not permutations of the first-round lists")
    return new_ranks


def registry_labels() -> list[str]:
    """The labels :func:`rerank` accepts, in the registry's order."""
    return [m.label for m in registry.METHODS]


def _checked_ranks(ranks: np.ndarray, query: np.ndarray, db: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks)
    if not np.issubdtype(ranks.dtype, np.integer) or ranks.ndim != 2 or len(ranks) != len(query):
        raise ValueError(f"ranks must be integer [Q={len(query)}, N'], got {ranks.dtype} {ranks.shape}")
    if query.shape[1] != db.shape[1]:
        raise ValueError(f"query descriptors are {query.shape[1]}-d, database descriptors {db.shape[1]}-d")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= len(db)):
        raise ValueError(f"ranks hold ids outside the {len(db)} database rows")
    return ranks.astype(np.int64, copy=False)


def rerank_csa(
    query: np.ndarray,
    db: np.ndarray,
    ranks: np.ndarray,
    model,
    K: int = 1024,
    L: int = 512,
    precision: str = "auto",
    batch_size: int = 8,
    device=None,
    memory_gb: float = 4.0,
    progress: bool = False,
) -> np.ndarray:
    """CSA re-ranking (:func:`csa_rerank.methods.csa.rerank`, the same numbers) that reads only the rows it uses.

    Queries go a block at a time; a block's top ``max(K, L - 1)`` database rows are gathered (from a memory map:
    read from disk) into a small database its affinity sequences are built from, the block sized so that the
    gathered rows take at most a third of ``memory_gb``.
    """
    from csa_rerank.methods import csa
    from csa_rerank.rerank import rerank_topk

    model = csa.load(model, L, device)
    width = max(K, L - 1)
    if width > min(ranks.shape[1], len(db)):
        raise ValueError(
            f"K={K} candidates and L-1={L - 1} anchors need {width} ranked database images; the rankings hold "
            f"{ranks.shape[1]} of the {len(db)} database images"
        )
    row_bytes = 4 * width * db.shape[1]
    block = max(batch_size, int(memory_gb * 2**30 / 3 // row_bytes) // batch_size * batch_size)
    scores = np.empty((len(query), K), dtype=np.float32)
    bar = tqdm(total=len(query), desc="CSA re-ranking", unit="query", disable=not progress)
    for start in range(0, len(query), block):
        top = ranks[start : start + block, :width]
        ids, local = np.unique(top, return_inverse=True)
        gathered = np.asarray(db[ids], dtype=np.float32)
        block_query = np.array(query[start : start + block], dtype=np.float32)  # writable: torch shares it
        local = local.reshape(top.shape)
        scores[start : start + len(top)] = csa.scores(
            block_query, gathered, local, model, K, L, precision, batch_size, device=device
        )
        bar.update(len(top))
    bar.close()
    return rerank_topk(ranks, scores)


def evaluate(ranks: np.ndarray, gnd: str | Path | dict | Sequence[dict]) -> dict:
    """revisitop mAP and mP@k in % per protocol (Easy, Medium, Hard) of ``ranks`` [Q, k] against a ground
    truth: a ``gnd_*.pkl`` (read without running code), its dict or its ``gnd`` list.  Positives beyond the
    ranked k count as missed: rank the whole database for exact AP."""
    from csa_rerank.evaluate import evaluate as revisitop

    source = str(gnd) if isinstance(gnd, str | Path) else "the ground truth"
    if isinstance(gnd, str | Path):
        gnd = datasets.load_ground_truth(gnd)
    if isinstance(gnd, dict):
        if len(gnd["imlist"]) <= int(np.max(ranks, initial=-1)):
            raise ValueError(f"{source}: lists {len(gnd['imlist'])} database images; the rankings hold larger ids")
        gnd = gnd["gnd"]
    if len(ranks) != len(gnd):
        raise ValueError(f"{source}: {len(gnd)} queries, the rankings {len(ranks)}")
    return revisitop(np.asarray(ranks), gnd)


def evaluate_labels(ranks: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray) -> dict[str, float]:
    """mAP and mP@k in % from class labels: the positives of a query are the database rows of its label (no
    junk).  Queries without positives are left out."""
    from csa_rerank.evaluate import KAPPAS, query_metrics
    from csa_rerank.validation import summarise

    if len(query_labels) != len(ranks):
        raise ValueError(f"{len(query_labels)} query labels, {len(ranks)} ranked queries")
    metrics = []
    for ranking, label in zip(np.asarray(ranks), np.asarray(query_labels), strict=True):
        result = query_metrics(ranking, np.flatnonzero(np.asarray(db_labels) == label), [], KAPPAS)
        if result is not None:
            metrics.append(result)
    return summarise(metrics)


def train(
    features: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    reranker: dict | None = None,
    training: dict | None = None,
    device: str = "cpu",
    memory_gb: float = 4.0,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """Train a CSA model on labelled descriptors [N, D]: one class/cluster id per row, negative = unlabelled.

    Every labelled row is a training query whose positives are the rows of its class; unlabelled rows appear
    only as (negative) neighbours.  The neighbour lists are computed here (:func:`csa_rerank.knn.self_neighbours`).
    ``reranker`` and ``training`` are the sections of the pipeline's configuration of those names (the same
    switches; :func:`csa_rerank.training.configs_from_settings`).  Resumable: a run in ``out_dir`` with the same
    settings continues from its last epoch.  Returns ``out_dir/model.pt``.
    """
    from csa_rerank import knn
    from csa_rerank.training import TrainingSamples, configs_from_settings
    from csa_rerank.training import train as train_model

    model_config, train_config = configs_from_settings(reranker or {}, training or {})
    labels = np.asarray(labels)
    if len(labels) != len(features):
        raise ValueError(f"{len(labels)} labels for {len(features)} descriptors")
    queries = np.flatnonzero(labels >= 0)
    if len(queries) < train_config.batch_size:
        raise ValueError(f"{len(queries)} labelled rows give no full batch of {train_config.batch_size}")
    width = max(train_config.K_train, model_config.anchors)
    if width > len(features):
        raise ValueError(f"K_train={train_config.K_train} / L={model_config.anchors} exceed the {len(features)} rows")
    neighbours = knn.self_neighbours(features, width, memory_bytes=int(memory_gb * 2**30))
    clusters = np.where(labels >= 0, labels, -1 - np.arange(len(labels)))  # unlabelled: a cluster of their own
    samples = TrainingSamples([np.asarray(features, np.float32)], [neighbours], [clusters], queries=[queries])
    return train_model(model_config, train_config, samples, out_dir, device, log=log, progress=progress)
