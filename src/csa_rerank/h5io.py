"""The HDF5 contract between stages.

Descriptors: one file per (dataset, network); datasets ``db`` [N, D] and ``query`` [Q, D] for test sets,
``db`` for distractors and for the whitening set, ``train``/``val`` for the training set; float32, L2-normalised,
rows in ``imlist`` / ``qimlist`` / ``cids`` order; attributes name the network, image size and scales.  With
post-whitening, the file of the dataset that fits it (the training set or the whitening set) also holds its learnt
parameters ``whitening_mean`` [D] (and ``whitening_projection``).  The distractors are extracted in shards
(``db`` rows ``start`` ... ``stop``, attributes of those names) merged into one file (attribute ``shards``).
Rankings (``knn``): ``ranks`` [Q, N] int32 (the whole database, best first) and ``scores`` [Q, k] of the top k.
Training neighbours: ``train`` and ``val`` [N, k] int64 (attribute ``k``), the image itself at position 0.
Affinities: ``affinity`` [Q, K+1, L] float32 chunked one query per chunk, ``candidates`` [Q, K].
Re-rankings: ``topk`` [Q, K] int64, the re-ordered top-K block (db indices), and ``scores`` [Q, K], the new scores
of the candidates in their first-round order.
Every file is written to a temporary name and renamed when complete, so an interrupted job leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from csa_rerank.atomic import atomic_path


@contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open ``path`` for writing through a temporary file that replaces it only on success
    (:func:`csa_rerank.atomic.atomic_path`)."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        yield handle


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None, chunks=None) -> None:
    """Write named arrays and scalar/JSON-able attributes to ``path`` atomically."""
    chunks = chunks or {}
    with atomic_h5(path) as handle:
        for name, array in arrays.items():
            handle.create_dataset(name, data=array, chunks=chunks.get(name))
        for key, value in (attrs or {}).items():
            if isinstance(value, np.generic):
                value = value.item()
            handle.attrs[key] = value if isinstance(value, str | int | float | bool) else json.dumps(value)


@contextmanager
def open_array(path: str | Path, name: str) -> Iterator[h5py.Dataset]:
    """One dataset of an HDF5 file, open for reading slices (``dataset[start:stop]``) rather than all of it."""
    with h5py.File(path, "r") as handle:
        if name not in handle:
            raise KeyError(f"{path}: no dataset '{name}' (has: {', '.join(handle.keys())})")
        yield handle[name]


def read_array(path: str | Path, name: str) -> np.ndarray:
    """One dataset of an HDF5 file, with an error naming the file and the dataset when it is absent."""
    with open_array(path, name) as dataset:
        return dataset[()]


def read_attrs(path: str | Path) -> dict:
    with h5py.File(path, "r") as handle:
        return dict(handle.attrs)


def load_test_descriptors(testset_file: str, distractors_file: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(queries [Q, D], database [N, D]); distractor rows are appended after the test set's own database."""
    query = read_array(testset_file, "query")
    db = read_array(testset_file, "db")
    if distractors_file:
        db = np.concatenate([db, read_array(distractors_file, "db")])
    return query, db
