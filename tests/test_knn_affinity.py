"""First-round kNN search against brute force, and the affinity sequences of Eq. 1 against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csa_rerank import affinity, knn


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread):
    """One intra-op thread: the CPU is shared."""


def _brute_force(queries: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores in float64 and ids by descending score, equal scores by ascending index (stable sort)."""
    sims = queries.astype(np.float64) @ db.astype(np.float64).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def _integer_data(seed: int, n_q: int, n_db: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer vectors: every dot product is exact in float32, and exact ties are common."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-2, 3, size=(n_q, dim)).astype(np.float32),
        rng.integers(-2, 3, size=(n_db, dim)).astype(np.float32),
    )


# ----------------------------------------------------------------------------------------------------------------
# knn.search


@pytest.mark.parametrize("k", [1, 7, 40, 80])
@pytest.mark.parametrize("tiles", [(1, 1), (3, 7), (1024, 1024)])
def test_search_equals_brute_force_with_many_ties(k, tiles):
    queries, db = _integer_data(0, n_q=9, n_db=80, dim=3)
    scores, ids = knn.search(queries, db, k, tiles=tiles)
    ref_scores, ref_ids = _brute_force(queries, db, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (9, k)
    if k >= 7:  # exact ties are plentiful (80 rows drawn from 5**3 = 125 possible ones)
        assert any(len(np.unique(row)) < k for row in ref_scores)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
    sims = queries.astype(np.float64) @ db.astype(np.float64).T
    for row in range(9):
        # everything scoring above the k-th score is fixed, in brute-force order (ties by ascending index) ...
        above = ref_scores[row] > ref_scores[row, -1]
        np.testing.assert_array_equal(ids[row, above], ref_ids[row, above])
        # ... and the items tied with the k-th score follow in ascending index order
        boundary = ids[row, ~above]
        assert np.all(sims[row, boundary] == ref_scores[row, -1])
        assert np.all(np.diff(boundary) > 0)
    if k == 80:  # the whole ranking: identical to brute force
        np.testing.assert_array_equal(ids, ref_ids)


@pytest.mark.parametrize("case", ["identical rows", "random ties"])
def test_ties_straddling_the_k_boundary_keep_the_lower_indices(case):
    if case == "identical rows":
        queries, db = np.array([[1.0, 0.0]], dtype=np.float32), np.tile(np.array([[1.0, 0.0]], np.float32), (10, 1))
        k = 2  # every score is 1: the answer must be ids 0, 1
    else:
        (queries, db), k = _integer_data(0, n_q=9, n_db=80, dim=3), 7
    _, ids = knn.search(queries, db, k)
    np.testing.assert_array_equal(ids, _brute_force(queries, db, k)[1])


def test_search_with_float_data_is_tile_independent():
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((13, 16)).astype(np.float32)
    db = rng.standard_normal((200, 16)).astype(np.float32)
    ref_scores, ref_ids = _brute_force(queries, db, 25)
    for tiles in ((1, 1), (4, 30), (13, 200), (1000, 1000)):
        scores, ids = knn.search(queries, db, 25, tiles=tiles)
        # no near ties in this data, so the order is fixed; the scores may differ by a float32 ulp between
        # tile sizes (BLAS kernels depend on the matrix shape)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


def test_exact_ties_are_ordered_by_lower_index():
    db = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [1, 0], [0.5, 0]], dtype=np.float32)
    query = np.array([[1, 0]], dtype=np.float32)
    # scores: 0, 1, 0, 1, 1, 0.5 -> 1 (ids 1, 3, 4), 0.5 (id 5), 0 (ids 0, 2)
    scores, ids = knn.search(query, db, 6)
    assert ids.tolist() == [[1, 3, 4, 5, 0, 2]]
    assert scores.tolist() == [[1, 1, 1, 0.5, 0, 0]]
    scores, ids = knn.search(query, db, 4)
    assert ids.tolist() == [[1, 3, 4, 5]]


def test_k_larger_than_the_database_is_clipped():
    queries, db = _integer_data(2, n_q=4, n_db=6, dim=3)
    scores, ids = knn.search(queries, db, 100)
    assert scores.shape == ids.shape == (4, 6)
    ref_scores, ref_ids = _brute_force(queries, db, 6)
    np.testing.assert_array_equal(ids, ref_ids)
    # full ranking: each row is a permutation of the database
    assert all(sorted(row) == list(range(6)) for row in ids.tolist())


def test_search_on_real_descriptors(lopq_descriptors):
    query, db = lopq_descriptors
    scores, ids = knn.search(query[:10], db, 50, tiles=(4, 100))
    ref_scores, ref_ids = _brute_force(query[:10], db, 50)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # float32 vs float64 can swap near-equal neighbours; the sets and almost every position must agree
    assert (ids == ref_ids).mean() > 0.99
    assert all(set(a) == set(b) for a, b in zip(ids[:, :40].tolist(), ref_ids[:, :40].tolist(), strict=True))


# ----------------------------------------------------------------------------------------------------------------
# knn.self_neighbours


def test_self_neighbours_puts_each_row_first():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((30, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    neighbours = knn.self_neighbours(features, 5, tiles=(7, 4))
    assert neighbours.shape == (30, 5) and neighbours.dtype == np.int64
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(30))
    _, ref_ids = _brute_force(features, features, 5)
    # with unit rows and no duplicates brute force already has each row first
    np.testing.assert_array_equal(neighbours, ref_ids)


def test_self_neighbours_with_an_exact_duplicate_row():
    rng = np.random.default_rng(4)
    features = rng.standard_normal((8, 4)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    features[6] = features[2]  # exact duplicate: rows 2 and 6 tie at the top of each other's list
    neighbours = knn.self_neighbours(features, 4)
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(8))
    # row 6 must come first in its own list and its twin 2 second (a stable ranking would give 2 first)
    assert neighbours[6, :2].tolist() == [6, 2]
    assert neighbours[2, :2].tolist() == [2, 6]
    for row in range(8):
        assert len(set(neighbours[row].tolist())) == 4  # no repeated neighbour
    # the rest of row 6's list follows the similarity order of the others
    sims = features.astype(np.float64) @ features[6].astype(np.float64)
    rest = [i for i in np.argsort(-sims, kind="stable") if i not in (2, 6)][:2]
    assert neighbours[6, 2:].tolist() == rest


def test_self_neighbours_k_clipped_to_n():
    features = np.eye(3, dtype=np.float32)
    neighbours = knn.self_neighbours(features, 10)
    assert neighbours.shape == (3, 3)
    np.testing.assert_array_equal(neighbours[:, 0], [0, 1, 2])
    assert all(sorted(row) == [0, 1, 2] for row in neighbours.tolist())


# ----------------------------------------------------------------------------------------------------------------
# affinity (Eq. 1)


def _unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_test_affinity_against_numpy():
    rng = np.random.default_rng(5)
    Q, N, D, K, L = 3, 20, 6, 5, 4
    query, db = _unit_rows(rng, Q, D), _unit_rows(rng, N, D)
    ranks = np.stack([rng.permutation(N) for _ in range(Q)])
    out = affinity.test_affinity(torch.from_numpy(query), torch.from_numpy(db), torch.from_numpy(ranks), K, L)
    assert out.shape == (Q, K + 1, L)
    expected = np.empty((Q, K + 1, L))
    for q in range(Q):
        tokens = [query[q]] + [db[ranks[q, j]] for j in range(K)]  # the query, then the top K
        anchors = [query[q]] + [db[ranks[q, c]] for c in range(L - 1)]  # the query, then the top L-1
        for j, t in enumerate(tokens):
            for c, a in enumerate(anchors):
                expected[q, j, c] = float(np.dot(t, a))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
    # token 0 / anchor 0 is the query: self-similarity 1 for unit vectors
    np.testing.assert_allclose(out[:, 0, 0].numpy(), 1.0, atol=1e-12)
    # row j >= 1 column c >= 1 is <db[rank j-1], db[rank c-1]>; the leading L-1 square block is symmetric
    block = out[:, 1:L, 1:L].numpy()
    np.testing.assert_allclose(block, block.transpose(0, 2, 1), atol=1e-12)


def test_test_affinity_with_more_anchors_than_tokens():
    rng = np.random.default_rng(6)
    query, db = _unit_rows(rng, 2, 5), _unit_rows(rng, 12, 5)
    ranks = np.stack([rng.permutation(12) for _ in range(2)])
    K, L = 2, 8
    out = affinity.test_affinity(torch.from_numpy(query), torch.from_numpy(db), torch.from_numpy(ranks), K, L)
    assert out.shape == (2, 3, 8)
    # last column: anchor L-1 = db[rank L-2]; last row: token K = db[rank K-1]
    assert out[1, 2, 7].item() == pytest.approx(float(db[ranks[1, 1]] @ db[ranks[1, 6]]), abs=1e-12)
    assert out[0, 0, 7].item() == pytest.approx(float(query[0] @ db[ranks[0, 6]]), abs=1e-12)


def test_test_affinity_rejects_a_short_ranking():
    query, db = torch.zeros(1, 4), torch.zeros(10, 4)
    with pytest.raises(ValueError, match="3 columns, fewer than K=4"):
        affinity.test_affinity(query, db, torch.zeros(1, 3, dtype=torch.long), K=4, L=2)
    with pytest.raises(ValueError, match="3 columns"):
        affinity.test_affinity(query, db, torch.zeros(1, 3, dtype=torch.long), K=2, L=5)
    # L - 1 = 3 columns are enough
    assert affinity.test_affinity(query, db, torch.zeros(1, 3, dtype=torch.long), K=3, L=4).shape == (1, 4, 4)


def test_train_affinity_against_numpy():
    rng = np.random.default_rng(8)
    N, D, K, L = 15, 6, 4, 6
    features = _unit_rows(rng, N, D)
    # neighbour lists start with the image itself
    neighbours = np.stack([np.concatenate([[i], rng.permutation([j for j in range(N) if j != i])]) for i in (3, 9)])
    out = affinity.train_affinity(torch.from_numpy(features), torch.from_numpy(neighbours), K, L)
    assert out.shape == (2, K, L)
    expected = np.einsum("bkd,bld->bkl", features[neighbours[:, :K]], features[neighbours[:, :L]])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
    # position 0 is the image itself: token 0 x anchor 0 is its self-similarity
    np.testing.assert_allclose(out[:, 0, 0].numpy(), 1.0, atol=1e-12)
    assert out[1, 2, 5].item() == pytest.approx(float(features[neighbours[1, 2]] @ features[neighbours[1, 5]]))


def test_affinity_on_real_descriptors_uses_cosines(lopq_descriptors):
    query, db = lopq_descriptors
    _, ids = knn.search(query[:2], db, 16)
    out = affinity.test_affinity(torch.from_numpy(query[:2]), torch.from_numpy(db), torch.from_numpy(ids), 8, 16)
    assert out.shape == (2, 9, 16)
    # column 0 of rows 1..K are the first-round scores of the top K, in decreasing order
    col0 = out[:, 1:, 0].numpy()
    expected = np.stack([db[ids[q, :8]] @ query[q] for q in range(2)])
    np.testing.assert_allclose(col0, expected, atol=1e-5)
    assert np.all(np.diff(col0, axis=1) <= 1e-6)
