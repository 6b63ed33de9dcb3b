"""Descriptor, ranking and label files in the formats users bring, for the ``csa-rerank`` command and the API.

Descriptors ``[N, D]`` are read from

- ``.npy``: memory-mapped, so a 1M-row database is read by the rows a search or a re-ranking touches;
- ``.h5`` / ``.hdf5``: one dataset of an HDF5 file (this pipeline's contract, :mod:`csa_rerank.h5io`), memory-mapped
  when it is stored contiguous and uncompressed, else read whole;
- ``.fvecs`` (texmex: every row is an int32 dimension followed by that many float32): memory-mapped;
- ``.pkl``: the authors' pickle layout (:mod:`csa_rerank.export`: ``{'db', 'query'}``, ``{'train', 'val'}`` or a
  bare array), read through the restricted unpickler of :mod:`csa_rerank.safe_pickle`, never running its code.

A file holding several arrays (HDF5, a pickled dict) is named ``FILE:KEY`` (``features.h5:query``).  Rankings are
written as ``.h5`` (``ranks`` and, when known, ``scores``, as the pipeline's first-round files) or ``.npy`` (the
ranks), optionally as a TSV with image names.  Every file is written through :mod:`csa_rerank.atomic`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np

from csa_rerank import safe_pickle
from csa_rerank.atomic import atomic_path

DESCRIPTOR_SUFFIXES = (".npy", ".h5", ".hdf5", ".fvecs", ".pkl")
RANKING_SUFFIXES = (".h5", ".npy")


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """``"FILE:KEY"`` -> (FILE, KEY); without a key, or when the whole text names a file -> (FILE, None)."""
    text = str(spec)
    path, sep, key = text.rpartition(":")
    if not sep or Path(text).exists() or not path or "/" in key:
        return Path(text), None
    return Path(path), key


def read_descriptors(spec: str | Path) -> np.ndarray:
    """The descriptor array named by ``spec`` (``FILE`` or ``FILE:KEY``), memory-mapped where the format allows.

    Raises:
        FileNotFoundError, KeyError, ValueError: naming the file (and the key) that cannot be read.
    """
    path, key = split_spec(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: descriptor file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _without_key(path, key, np.load(path, mmap_mode="r"))
    elif suffix in (".h5", ".hdf5"):
        array = _h5_array(path, key)
    elif suffix == ".fvecs":
        array = _without_key(path, key, _fvecs(path))
    elif suffix == ".pkl":
        array = _pickled_array(path, key)
    else:
        raise ValueError(f"{path}: unknown descriptor format {suffix!r}; use one of {', '.join(DESCRIPTOR_SUFFIXES)}")
    if array.ndim != 2:
        raise ValueError(f"{spec}: descriptors must be [rows, D], got shape {array.shape}")
    return array


def _without_key(path: Path, key: str | None, array: np.ndarray) -> np.ndarray:
    if key is not None:
        raise KeyError(f"{path}: a {path.suffix} file holds one array; drop ':{key}'")
    return array


def _only_key(path: Path, keys: list[str], key: str | None) -> str:
    """``key``, checked to be one of ``keys``; without one, the file's only array."""
    if key is None:
        if len(keys) != 1:
            raise KeyError(f"{path}: holds {', '.join(keys)}; name one as {path}:KEY")
        return keys[0]
    if key not in keys:
        raise KeyError(f"{path}: no array '{key}' (has: {', '.join(keys)})")
    return key


def _h5_array(path: Path, key: str | None) -> np.ndarray:
    """One dataset of an HDF5 file: a read-only memory map when it is contiguous and uncompressed."""
    with h5py.File(path, "r") as handle:
        names = [name for name, item in handle.items() if isinstance(item, h5py.Dataset) and item.ndim == 2]
        dataset = handle[_only_key(path, names, key)]
        offset = dataset.id.get_offset()
        if dataset.chunks is None and dataset.compression is None and offset is not None:
            return np.memmap(path, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)
        return dataset[()]


def _fvecs(path: Path) -> np.ndarray:
    """texmex ``.fvecs``: rows of (int32 D, D x float32), as a read-only memory-mapped [N, D] view."""
    words = np.memmap(path, dtype="<i4", mode="r")
    if words.size == 0:
        raise ValueError(f"{path}: empty .fvecs file")
    dim = int(words[0])
    if dim <= 0 or words.size % (dim + 1):
        raise ValueError(f"{path}: not an .fvecs file of {dim}-d rows ({words.size * 4} bytes)")
    rows = words.reshape(-1, dim + 1)
    bad = np.flatnonzero(rows[:, 0] != dim)
    if len(bad):
        raise ValueError(f"{path}: row {bad[0]} declares dimension {rows[bad[0], 0]}, row 0 declares {dim}")
    return rows[:, 1:].view("<f4")


def _pickled_array(path: Path, key: str | None) -> np.ndarray:
    """An array of the authors' pickle layout (a dict of arrays, or a bare array), loaded without running code."""
    content = safe_pickle.load(path)
    if isinstance(content, dict):
        content = content[_only_key(path, [str(k) for k in content], key)]
    elif key is not None:
        raise KeyError(f"{path}: holds a bare array, not a dict; drop ':{key}'")
    if not isinstance(content, np.ndarray):
        raise ValueError(f"{path}: expected a numpy array, found {type(content).__name__}")
    return content


# ------------------------------------------------------------------------------------------------------------
# rankings, names and labels


def read_ranks(path: str | Path) -> np.ndarray:
    """Rankings [Q, k] of database row ids: ``ranks`` of an ``.h5`` file or an ``.npy`` array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ranking file not found")
    if path.suffix.lower() == ".npy":
        ranks = np.load(path)
    elif path.suffix.lower() in (".h5", ".hdf5"):
        with h5py.File(path, "r") as handle:
            if "ranks" not in handle:
                raise KeyError(f"{path}: no dataset 'ranks' (has: {', '.join(handle.keys())})")
            ranks = handle["ranks"][()]
    else:
        raise ValueError(f"{path}: rankings are read from .h5 or .npy, not {path.suffix!r}")
    if ranks.ndim != 2 or not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"{path}: rankings must be a 2-d integer array, got {ranks.dtype} {ranks.shape}")
    return ranks.astype(np.int64, copy=False)


def write_ranks(path: str | Path, ranks: np.ndarray, scores: np.ndarray | None = None, attrs: dict | None = None):
    """Rankings to ``.h5`` (``ranks`` int64, ``scores`` when given, ``attrs``) or ``.npy`` (the ranks only)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RANKING_SUFFIXES:
        raise ValueError(f"{path}: rankings are written as {' or '.join(RANKING_SUFFIXES)}, not {suffix!r}")
    with atomic_path(path) as temporary:
        if suffix == ".npy":
            with open(temporary, "wb") as handle:  # np.save(path) would append ".npy" to the temporary name
                np.save(handle, np.asarray(ranks, dtype=np.int64))
            return
        with h5py.File(temporary, "w") as handle:
            handle.create_dataset("ranks", data=np.asarray(ranks, dtype=np.int64))
            if scores is not None:
                handle.create_dataset("scores", data=np.asarray(scores, dtype=np.float32))
            for key, value in (attrs or {}).items():
                handle.attrs[key] = value


def read_names(path: str | Path, expected: int, what: str) -> list[str]:
    """Image names, one per line of a text file, checked to number ``expected`` (the rows of ``what``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: name list not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != expected:
        raise ValueError(f"{path}: {len(names)} names, but {what} has {expected} rows")
    return names


def write_tsv(path: str | Path, ranks: np.ndarray, query_names: list[str], db_names: list[str], top: int) -> None:
    """The first ``top`` results of every query as TSV rows ``query, rank (1-based), image``."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["query", "rank", "image"])
        for query, ranking in zip(query_names, ranks, strict=True):
            writer.writerows([query, position + 1, db_names[item]] for position, item in enumerate(ranking[:top]))


def read_labels(path: str | Path, expected: int | None = None, what: str = "") -> np.ndarray:
    """Integer class/cluster ids (``.npy``, or a text file with one integer a line), one per row of ``what``
    when ``expected`` rows are given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found")
    if path.suffix.lower() == ".npy":
        labels = np.load(path)
    else:
        try:
            labels = np.loadtxt(path, dtype=np.int64, ndmin=1)
        except ValueError as error:
            raise ValueError(f"{path}: labels must be one integer per line ({error})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    if expected is not None and len(labels) != expected:
        raise ValueError(f"{path}: {len(labels)} labels, but {what} has {expected} rows")
    return labels.astype(np.int64)
