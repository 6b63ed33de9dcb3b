"""Ours (csa_rerank.methods.csa): CSA behind the compared methods' interface, its scores, its input checks."""

from __future__ import annotations

import inspect
from dataclasses import asdict

import numpy as np
import pytest
import torch

from csa_rerank.affinity import test_affinity as build_test_affinity
from csa_rerank.methods import csa
from csa_rerank.model import CSAConfig, CSAReranker
from csa_rerank.rerank import csa_scores, rerank_topk

K, L = 12, 8


@pytest.fixture
def model() -> CSAReranker:
    torch.manual_seed(0)
    return CSAReranker(CSAConfig(anchors=L, hidden=16, heads=2)).eval()


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    query, db = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    return query, db, np.argsort(-(query @ db.T), axis=1).astype(np.int32)


def test_the_shared_interface():
    parameters = inspect.signature(csa.rerank).parameters
    assert list(parameters)[:4] == ["query", "db", "ranks", "model"]
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"K": 1024, "L": 512, "precision": "auto", "batch_size": 8, "onednn_graph": True, "device": None}


def test_rerank_reorders_the_top_k_by_the_models_scores(model, data, tmp_path):
    query, db, ranks = data
    expected_scores = csa_scores(model, build_test_affinity(*map(torch.as_tensor, data), K, L), precision="fp32")
    scores = csa.scores(query, db, ranks, model, K=K, L=L, precision="fp32", batch_size=2)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)
    reranked = csa.rerank(query, db, ranks, model, K=K, L=L, precision="fp32", batch_size=2)
    assert reranked.dtype == ranks.dtype and reranked.shape == ranks.shape
    np.testing.assert_array_equal(reranked, rerank_topk(ranks, expected_scores))
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    from_file = csa.rerank(query, db, ranks, tmp_path / "model.pt", K=K, L=L, precision="fp32")
    np.testing.assert_array_equal(from_file, reranked)


def test_inputs_are_checked(model, data, tmp_path):
    query, db, ranks = data
    with pytest.raises(ValueError, match="the model was trained with L=8 anchors, not L=9"):
        csa.rerank(query, db, ranks, model, K=K, L=9)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="model.pt was trained with L=8 anchors, not L=512"):
        csa.rerank(query, db, ranks, str(tmp_path / "model.pt"), K=K)
    with pytest.raises(ValueError, match="K=41 candidates .* hold 40 of the 40 database images"):
        csa.rerank(query, db, ranks, model, K=41, L=L)
    with pytest.raises(ValueError, match="K=12 candidates and L-1=7 anchor images .* hold 10 of the 40"):
        csa.rerank(query, db, ranks[:, :10], model, K=K, L=L)
    with pytest.raises(TypeError, match="ranks must hold database indices"):
        csa.rerank(query, db, ranks.astype(np.float32), model, K=K, L=L)
    with pytest.raises(ValueError, match=r"ranks must be \[Q=5, N'\]"):
        csa.rerank(query, db, ranks[:3], model, K=K, L=L)
    with pytest.raises(TypeError, match="query must hold float descriptors"):
        csa.rerank(query.astype(np.int64), db, ranks, model, K=K, L=L)
    with pytest.raises(ValueError, match="query descriptors are 5-d, database descriptors 6-d"):
        csa.rerank(query[:, :5], db, ranks, model, K=K, L=L)
    with pytest.raises(TypeError, match="model must be a CSAReranker or the path"):
        csa.rerank(query, db, ranks, {"config": {}}, K=K, L=L)
    with pytest.raises(ValueError, match="precision='int8'"):
        csa.rerank(query, db, ranks, model, K=K, L=L, precision="int8")


def test_the_rerank_csa_stage_writes_the_methods_ranking_and_scores(model, data, tmp_path):
    from csa_rerank import h5io, stages

    query, db, _ = data
    h5io.write_arrays(tmp_path / "test.h5", {"query": query, "db": db})
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    files = {name: str(tmp_path / f"{name}.h5") for name in ("test", "knn", "affinity", "csa")}
    stages.knn(files["test"], None, files["knn"], memory_gb=0.01)
    stages.affinity(files["test"], None, files["knn"], K, L, files["affinity"])
    attrs = stages.rerank_csa(
        files["affinity"], str(tmp_path / "model.pt"), files["test"], None, files["knn"], files["csa"],
        precision="fp32", batch_size=2, latency_queries=2, use_gpu=False,
    )  # fmt: skip
    ranks = h5io.read_array(files["knn"], "ranks")
    expected = csa.rerank(query, db, ranks, model, K=K, L=L, precision="fp32", batch_size=2)
    np.testing.assert_array_equal(h5io.read_array(files["csa"], "topk"), expected[:, :K])
    expected_scores = csa.scores(query, db, ranks, model, K=K, L=L, precision="fp32")
    np.testing.assert_allclose(h5io.read_array(files["csa"], "scores"), expected_scores, rtol=0, atol=1e-6)
    assert (attrs["K"], attrs["L"], attrs["engine"]) == (K, L, "eager") and attrs["latency_ms"] > 0
