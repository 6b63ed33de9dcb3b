"""The compared methods' pipeline stages: fit a learned method, re-rank into a first-round-shaped file."""

import json
import pickle

import numpy as np
import pytest
import torch

from csa_rerank import compare, graph, h5io
from csa_rerank.knn import search, self_neighbours
from csa_rerank.methods import qe

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # conftest.py


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def first_round(tmp_path):
    """A test set (5 queries, 40 db images) and 20 distractors as descriptor files, and the first-round file."""
    query, db, distractors = unit_rows(5, 8, 0), unit_rows(40, 8, 1), unit_rows(20, 8, 2)
    h5io.write_arrays(tmp_path / "testset.h5", {"query": query, "db": db})
    h5io.write_arrays(tmp_path / "distractors.h5", {"db": distractors})
    _, ranks = search(query, np.concatenate([db, distractors]), 60)
    h5io.write_arrays(tmp_path / "knn.h5", {"ranks": ranks.astype(np.int32)})
    return query, np.concatenate([db, distractors]), ranks


def test_rerank_method_writes_the_methods_ranking_as_a_first_round_file(tmp_path, first_round):
    query, db, ranks = first_round
    attrs = compare.rerank_method(
        "AQE",
        {"n": 3},
        str(tmp_path / "testset.h5"),
        str(tmp_path / "distractors.h5"),
        str(tmp_path / "knn.h5"),
        str(tmp_path / "aqe.h5"),
    )
    written = h5io.read_array(tmp_path / "aqe.h5", "ranks")
    np.testing.assert_array_equal(written, qe.aqe(query, db, ranks, n=3))
    assert not np.array_equal(written, ranks)  # AQE with 3 neighbours changes these lists
    stored = h5io.read_attrs(tmp_path / "aqe.h5")
    assert stored["method"] == "AQE" and json.loads(stored["params"]) == {"n": 3}
    assert attrs["latency_ms"] > 0 and attrs["memory_gb"] >= db.nbytes / 2**30


def test_rerank_method_reads_the_shared_graph_and_ranks_as_without_it(tmp_path, first_round):
    query, db, ranks = first_round
    graph.write(str(tmp_path / "graph.h5"), graph.build(str(tmp_path / "testset.h5"), str(tmp_path / "distractors.h5"),
                                                        30, 50, memory_gb=0.01, device="cpu"))  # fmt: skip
    files = [str(tmp_path / name) for name in ("testset.h5", "distractors.h5", "knn.h5")]
    for label, params in [("DDBA + DQE", {"n_negatives": 20}), ("GSS", {"epochs": 2}), ("k-reciprocal", {})]:
        compare.rerank_method(label, params, *files, str(tmp_path / "own.h5"), use_gpu=True)  # no GPU here: CPU
        shared = compare.rerank_method(label, params, *files, str(tmp_path / "shared.h5"),
                                       graph_file=str(tmp_path / "graph.h5"))  # fmt: skip
        own = h5io.read_array(tmp_path / "own.h5", "ranks")
        np.testing.assert_array_equal(h5io.read_array(tmp_path / "shared.h5", "ranks"), own)
        assert shared["memory_gb"] >= (db.nbytes + 60 * 80 * 12) / 2**30  # the graph's 80 columns are held


def test_rerank_method_rejects_unknown_methods_and_missing_weights(tmp_path, first_round):
    files = [str(tmp_path / name) for name in ("testset.h5", "distractors.h5", "knn.h5", "out.h5")]
    with pytest.raises(ValueError, match="unknown method 'XQE'"):
        compare.rerank_method("XQE", {}, *files)
    with pytest.raises(ValueError, match="CRL needs the weights"):
        compare.rerank_method("CRL", {}, *files)
    assert not (tmp_path / "out.h5").exists()


def test_fit_then_rerank_a_learned_method(tmp_path, first_round):
    features = unit_rows(60, 8, 3)
    clusters = np.arange(60) % 6
    db = {split: {"cids": [str(i) for i in range(60)], "cluster": clusters.tolist()} for split in ("train", "val")}
    (tmp_path / "db.pkl").write_bytes(pickle.dumps(db))
    h5io.write_arrays(tmp_path / "features.h5", {"train": features, "val": features})
    h5io.write_arrays(tmp_path / "neighbours.h5", {"train": self_neighbours(features, 16)})
    params = {"K_train": 8, "anchors": 8, "epochs": 1, "batch_size": 16, "hidden": 16}
    compare.fit_method(
        "CRL",
        str(tmp_path / "db.pkl"),
        str(tmp_path / "features.h5"),
        str(tmp_path / "neighbours.h5"),
        params,
        str(tmp_path / "crl.pt"),
    )
    weights = torch.load(tmp_path / "crl.pt", weights_only=True)  # loadable without running code
    assert "state_dict" in weights
    compare.rerank_method(
        "CRL",
        {"K": 8},
        str(tmp_path / "testset.h5"),
        str(tmp_path / "distractors.h5"),
        str(tmp_path / "knn.h5"),
        str(tmp_path / "crl.h5"),
        weights_file=str(tmp_path / "crl.pt"),
    )
    written = h5io.read_array(tmp_path / "crl.h5", "ranks")
    _, ranks = first_round[0], first_round[2]
    np.testing.assert_array_equal(written[:, 8:], ranks[:, 8:])  # CRL re-orders the top K only
    np.testing.assert_array_equal(np.sort(written[:, :8], axis=1), np.sort(ranks[:, :8], axis=1))
    with pytest.raises(ValueError, match="nothing to fit"):
        compare.fit_method("AQE", "", "", "", {}, str(tmp_path / "x.pt"))
