"""Descriptors in the pickle layout the authors' code reads (https://github.com/MCC-WH/CSA).

Under its data root, CSA's ``test.py`` and training dataset read one pickle per (dataset, network)::

    test/<dataset>/<network>.pkl   {'db': [N_db, D], 'query': [N_q, D]}    rows in the gnd's imlist / qimlist order
    train/<network>.pkl            {'train': [N_train, D], 'val': [N_val, D]}  rows in the db file's cids order
    r1m/<network>.pkl              a bare array [N, D] of distractors, appended after each test database

float32, row-major N x D (the transpose of cirtorch's D x N output), unit rows: exactly the arrays of this
pipeline's descriptor files (:mod:`csa_rerank.h5io`), which :func:`export` copies.  The layout is chosen by the
arrays a file holds: ``query`` -> a test set, ``train`` -> the training set, ``db`` alone -> distractors.

    python -m csa_rerank.export results/features/roxford5k/NET.h5 csa/data/test/roxford5k/NET.pkl
    snakemake --cores 1 results/csa_export/test/roxford5k/NET.pkl     (the same through the workflow)

Protocol 4 (what the authors' ``save_pickle`` writes) holds each array and its pickled copy in memory at once:
2 x 8.2 GB for the R1M descriptors of a 2048-d network.  Protocol 5 (Python >= 3.8 readers) writes the arrays
straight from the HDF5 file through a memory map, in constant memory.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import h5py
import numpy as np

from csa_rerank.atomic import atomic_path

# the arrays of each layout, by the key of the pickled dict (None: a bare array)
LAYOUTS = {"test": ("db", "query"), "training": ("train", "val"), "distractors": (None,)}


def layout_of(names) -> str:
    """The CSA layout of a descriptor file holding the datasets ``names``."""
    names = set(names)
    if {"db", "query"} <= names:
        return "test"
    if {"train", "val"} <= names:
        return "training"
    if "db" in names:
        return "distractors"
    raise ValueError(f"not a descriptor file: it holds {', '.join(sorted(names)) or 'nothing'}")


def _array(dataset: h5py.Dataset, path: Path, protocol: int) -> np.ndarray:
    """The dataset as float32 [N, D]; for protocol 5, a copy-on-write memory map of the file when possible."""
    if dataset.ndim != 2:
        raise ValueError(f"{path}: '{dataset.name}' has shape {dataset.shape}, expected [N, D]")
    offset = dataset.id.get_offset()
    plain = dataset.chunks is None and dataset.compression is None and offset is not None
    if protocol >= 5 and plain and dataset.dtype == np.dtype("<f4"):
        # a plain ndarray over the map (np.memmap itself would be pickled through a full copy); mode "c" makes
        # it writable, so it is pickled as a bytearray and loads as a writable array
        return np.memmap(path, dtype="<f4", mode="c", offset=offset, shape=dataset.shape).view(np.ndarray)
    return np.ascontiguousarray(dataset[()], dtype=np.float32)


def export(features_file: str | Path, out_path: str | Path, protocol: int = 4) -> str:
    """Write ``features_file``'s descriptors as the CSA pickle ``out_path``; returns the layout written."""
    features_file = Path(features_file)
    with atomic_path(out_path) as temporary, h5py.File(features_file, "r") as handle:
        layout = layout_of(handle.keys())
        arrays = {key: _array(handle[key or "db"], features_file, protocol) for key in LAYOUTS[layout]}
        obj = arrays[None] if None in arrays else arrays
        with open(temporary, "wb") as out:
            pickle.dump(obj, out, protocol=protocol)
    return layout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m csa_rerank.export",
        description="Write a descriptor file of this pipeline as the pickle the authors' CSA code reads.",
    )
    parser.add_argument("features", help="descriptor file, e.g. results/features/roxford5k/NET.h5")
    parser.add_argument("output", help="pickle to write, e.g. <CSA data>/test/roxford5k/NET.pkl")
    parser.add_argument("--protocol", type=int, choices=(4, 5), default=4, help="pickle protocol (default 4)")
    args = parser.parse_args(argv)
    layout = export(args.features, args.output, args.protocol)
    print(f"wrote {args.output} ({layout} layout: {', '.join(str(k) for k in LAYOUTS[layout])})")


if __name__ == "__main__":
    main()
