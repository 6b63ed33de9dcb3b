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


# Descriptors are unit vectors up to float32 rounding and post-whitening's own normalisation.
UNIT_NORM_TOLERANCE = 1e-3


class UnreadableFileError(OSError):
    """An HDF5 input that cannot be read: truncated, corrupt, or no HDF5 file at all."""


@contextmanager
def open_file(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file open for reading; any failure to read it names the file."""
    try:
        with h5py.File(path, "r") as handle:
            yield handle
    except OSError as err:
        raise UnreadableFileError(
            f"cannot read {path} ({err}): the file is missing, truncated or corrupt; delete it and rerun the job "
            "that writes it"
        ) from err


@contextmanager
def open_array(path: str | Path, name: str) -> Iterator[h5py.Dataset]:
    """One dataset of an HDF5 file, open for reading slices (``dataset[start:stop]``) rather than all of it."""
    with open_file(path) as handle:
        if name not in handle:
            raise KeyError(f"{path}: no dataset '{name}' (has: {', '.join(handle.keys())})")
        yield handle[name]


def read_array(path: str | Path, name: str) -> np.ndarray:
    """One dataset of an HDF5 file, with an error naming the file and the dataset when it is absent."""
    with open_array(path, name) as dataset:
        return dataset[()]


def read_descriptors(path: str | Path, name: str) -> np.ndarray:
    """Descriptor rows ``path[name]``, checked: finite, none zero, each of unit L2 norm (the contract above)."""
    rows = read_array(path, name)
    finite = np.isfinite(rows).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], rows, 0), axis=1)
    for bad, what in (
        (~finite, "not finite (NaN or inf)"),
        (finite & (norms == 0), "zero"),
        (finite & (norms > 0) & (np.abs(norms - 1) > UNIT_NORM_TOLERANCE), "not of unit norm"),
    ):
        if bad.any():
            raise ValueError(
                f"{path}: {int(bad.sum())} of the {len(rows)} rows of '{name}' are {what} (first: row "
                f"{int(np.argmax(bad))}); descriptors are L2-normalised: delete the file and rerun its extraction"
            )
    return rows


def read_attrs(path: str | Path) -> dict:
    with open_file(path) as handle:
        return dict(handle.attrs)


def load_test_descriptors(testset_file: str, distractors_file: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(queries [Q, D], database [N, D]); distractor rows are appended after the test set's own database."""
    query = read_descriptors(testset_file, "query")
    db = read_descriptors(testset_file, "db")
    if distractors_file:
        db = np.concatenate([db, read_descriptors(distractors_file, "db")])
    return query, db
