"""Export of descriptor files to the pickles the authors' CSA code reads (https://github.com/MCC-WH/CSA)."""

from __future__ import annotations

import pickletools

import numpy as np
import pytest

from csa_rerank import export, h5io, safe_pickle


def _unit_rows(rng, n, d=8):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def files(tmp_path):
    """Descriptor files of the three kinds, as the extraction writes them (training with post-whitening params)."""
    rng = np.random.default_rng(0)
    test = {"db": _unit_rows(rng, 7), "query": _unit_rows(rng, 3)}
    training = {"train": _unit_rows(rng, 6), "val": _unit_rows(rng, 2), "whitening_mean": np.zeros(8)}
    distractors = {"db": _unit_rows(rng, 5)}
    paths = {}
    for name, arrays in (("test", test), ("training", training), ("distractors", distractors)):
        paths[name] = tmp_path / "features" / f"{name}.h5"
        h5io.write_arrays(paths[name], arrays, {"network": "net"})
    return paths, {"test": test, "training": training, "distractors": distractors}


@pytest.mark.parametrize("protocol", [4, 5])
def test_export_writes_the_csa_layouts(tmp_path, files, protocol):
    paths, arrays = files
    out = tmp_path / "csa" / "data"
    assert export.export(paths["test"], out / "test" / "roxford5k" / "net.pkl", protocol) == "test"
    assert export.export(paths["training"], out / "train" / "net.pkl", protocol) == "training"
    assert export.export(paths["distractors"], out / "r1m" / "net.pkl", protocol) == "distractors"

    # read back with the project's restricted unpickler: only containers, numbers, strings and numpy arrays
    test = safe_pickle.load(out / "test" / "roxford5k" / "net.pkl")
    assert isinstance(test, dict) and set(test) == {"db", "query"}  # {'db': [N_db, D], 'query': [N_q, D]}
    training = safe_pickle.load(out / "train" / "net.pkl")
    assert set(training) == {"train", "val"}  # the whitening parameters are not part of the layout
    r1m = safe_pickle.load(out / "r1m" / "net.pkl")
    assert isinstance(r1m, np.ndarray)  # a bare array, appended after each test database by CSA's test.py
    pairs = [(test["db"], arrays["test"]["db"]), (test["query"], arrays["test"]["query"]),
             (training["train"], arrays["training"]["train"]), (training["val"], arrays["training"]["val"]),
             (r1m, arrays["distractors"]["db"])]  # fmt: skip
    for got, expected in pairs:
        assert type(got) is np.ndarray and got.dtype == np.float32 and got.flags.c_contiguous
        assert got.shape == expected.shape  # N x D, row-major (not cirtorch's D x N)
        np.testing.assert_array_equal(got, expected)
        got[0, 0] = 1.0  # writable, as an array the authors' code would have pickled itself
    assert not list((out / "r1m").glob("*.part"))


def test_protocols_as_written(tmp_path, files):
    paths, _ = files
    for protocol in (4, 5):
        out = tmp_path / f"p{protocol}.pkl"
        export.export(paths["distractors"], out, protocol)
        ops = {op.name for op, _, _ in pickletools.genops(out.read_bytes())}
        assert ("PROTO" in ops) and ("BYTEARRAY8" in ops) == (protocol == 5)


def test_layout_of_and_errors(tmp_path):
    assert export.layout_of(["db", "query"]) == "test"
    assert export.layout_of(["train", "val", "whitening_mean", "whitening_projection"]) == "training"
    assert export.layout_of(["db", "whitening_mean"]) == "distractors"
    with pytest.raises(ValueError, match="not a descriptor file: it holds ranks, scores"):
        export.layout_of(["ranks", "scores"])
    h5io.write_arrays(tmp_path / "knn.h5", {"ranks": np.zeros((2, 3), dtype=np.int32), "scores": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="not a descriptor file"):
        export.export(tmp_path / "knn.h5", tmp_path / "knn.pkl")
    assert not (tmp_path / "knn.pkl").exists() and not (tmp_path / "knn.pkl.part").exists()


def test_command_line(tmp_path, files, capsys):
    paths, arrays = files
    out = tmp_path / "cli" / "net.pkl"
    export.main([str(paths["test"]), str(out), "--protocol", "5"])
    assert "test layout: db, query" in capsys.readouterr().out
    np.testing.assert_array_equal(safe_pickle.load(out)["query"], arrays["test"]["query"])
