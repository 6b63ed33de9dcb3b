"""Re-ranking of the top-K block, the "Affinity Feature" baseline, CSA scores in each precision, latency."""

import math

import numpy as np
import pytest
import torch

from csa_rerank.affinity import test_affinity as build_test_affinity
from csa_rerank.model import CSAConfig, CSAReranker
from csa_rerank.rerank import (
    affinity_feature_scores,
    affinity_scores,
    csa_scores,
    measure_latency,
    rerank_by_affinity,
    rerank_topk,
    time_calls,
)


@pytest.fixture
def tiny_model() -> CSAReranker:
    torch.manual_seed(0)
    return CSAReranker(CSAConfig(anchors=16, hidden=32, heads=4))


def random_affinity(Q: int, T: int, L: int) -> torch.Tensor:
    return torch.rand(Q, T, L, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_rerank_topk_reorders_only_the_top_k_block():
    ranks = np.array([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    reranked = rerank_topk(ranks, scores)
    np.testing.assert_array_equal(reranked, [[11, 12, 10, 13, 14], [20, 21, 22, 23, 24]])
    np.testing.assert_array_equal(ranks, [[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])  # input untouched


def test_rerank_topk_keeps_first_round_order_on_ties():
    ranks = np.array([[5, 6, 7, 8]])
    np.testing.assert_array_equal(rerank_topk(ranks, np.array([[0.5, 0.5, 0.9, 0.5]])), [[7, 5, 6, 8]])


def test_rerank_topk_with_k_covering_the_whole_ranking():
    ranks = np.array([[3, 1, 2]])
    np.testing.assert_array_equal(rerank_topk(ranks, np.array([[0.0, 2.0, 1.0]])), [[1, 2, 3]])
    with pytest.raises(ValueError):
        rerank_topk(ranks, np.zeros((1, 4)))
    with pytest.raises(ValueError):
        rerank_topk(ranks, np.zeros((2, 3)))


def test_affinity_feature_scores_by_hand():
    affinity = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [1.0, 1.0], [0.0, -3.0]]])  # query, 3 candidates
    np.testing.assert_allclose(affinity_feature_scores(affinity), [[1.0, 1 / math.sqrt(2), 0.0]], atol=1e-7)


def test_affinity_feature_scores_give_1_to_a_copy_of_the_query():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(30, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    query = db[[7]]
    ranks = torch.as_tensor(np.argsort(-(query @ db.T), axis=1))
    scores = affinity_feature_scores(build_test_affinity(torch.as_tensor(query), torch.as_tensor(db), ranks, 10, 6))
    assert scores.shape == (1, 10)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)  # the first candidate is db[7] itself
    assert np.all(scores[0, 1:] < 1.0 - 1e-4)


def test_csa_scores_match_the_model_and_restore_its_mode(tiny_model):
    affinity = random_affinity(5, 21, 16)
    tiny_model.train()
    scores = csa_scores(tiny_model, affinity, batch_size=2, precision="fp32")
    assert tiny_model.training
    assert scores.shape == (5, 20) and scores.dtype == np.float32
    with torch.no_grad():
        expected = tiny_model.eval().scores(affinity).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_csa_scores_in_bf16_are_close_to_fp32(tiny_model):
    affinity = random_affinity(5, 21, 16)
    fp32 = csa_scores(tiny_model, affinity, precision="fp32")
    # Eager autocast, whose results do not depend on the call count (tests/test_onednn_graph.py: fused path).
    bf16 = csa_scores(tiny_model, affinity, precision="bf16", onednn_graph=False)
    auto = csa_scores(tiny_model, affinity, precision="auto", onednn_graph=False)  # bf16 on CPU
    assert bf16.dtype == np.float32
    assert not np.array_equal(fp32, bf16)  # autocast did act
    np.testing.assert_allclose(bf16, fp32, atol=0.03)
    np.testing.assert_array_equal(auto, bf16)
    with pytest.raises(ValueError, match="fp32"):
        csa_scores(tiny_model, affinity, precision="int8")


def test_rerank_with_scores_in_first_round_order_changes_nothing():
    ranks = np.array([[4, 0, 3, 1, 2]])
    np.testing.assert_array_equal(rerank_topk(ranks, np.array([[0.9, 0.8, 0.7, 0.6]])), ranks)


def test_measure_latency(tiny_model):
    result = measure_latency(tiny_model, K=32, L=16, device="cpu", precision="fp32", repeats=5, warmup=1)
    assert set(result) == {"median_ms", "p90_ms", "peak_mem_mb"}
    assert 0 < result["median_ms"] <= result["p90_ms"]
    assert result["peak_mem_mb"] >= 0


def test_rerank_by_affinity_builds_the_sequences_in_batches_and_reorders_the_top_k():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(20, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    query = torch.as_tensor(db[:5] + 0.1)
    ranks = np.argsort(-(query.numpy() @ db.T), axis=1)  # [5, 20]
    seen = []

    def reverse(affinity):  # scores that reverse the first-round order of the K candidates
        seen.append(tuple(affinity.shape))
        return -np.arange(affinity.shape[1] - 1, dtype=np.float32)[::-1][None].repeat(len(affinity), 0)

    reranked = rerank_by_affinity(query, torch.as_tensor(db), ranks, 4, 6, reverse, batch_size=2)
    assert seen == [(2, 5, 6), (2, 5, 6), (1, 5, 6)]
    np.testing.assert_array_equal(reranked[:, :4], ranks[:, 3::-1])
    np.testing.assert_array_equal(reranked[:, 4:], ranks[:, 4:])
    expected = build_test_affinity(query, torch.as_tensor(db), torch.as_tensor(ranks), 4, 6)
    scores = affinity_scores(query, torch.as_tensor(db), ranks.astype(np.int32), 4, 6, affinity_feature_scores, 2)
    np.testing.assert_array_equal(scores, affinity_feature_scores(expected))


def test_time_calls_warms_up_then_times_each_call():
    calls = []
    times = time_calls(calls.append, repeats=4, warmup=2, device="cpu", precision="fp32")
    assert calls == [0, 1, 0, 1, 2, 3] and len(times) == 4 and all(t >= 0 for t in times)
