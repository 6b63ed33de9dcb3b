"""Tiled first-round search: identical to the untiled ranking for any tiles, inputs read from HDF5 or several
files, tile sizes from the memory budget, and the kNN stages on descriptor files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from csa_rerank import h5io, knn, stages


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread):
    """One intra-op thread: the CPU is shared."""


def _untiled(queries: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The untiled ranking: one float32 [Q, N] score matrix, stable descending sort (ties by lower index)."""
    scores, ids = torch.sort(torch.from_numpy(queries) @ torch.from_numpy(db).T, dim=1, descending=True, stable=True)
    return scores[:, :k].numpy(), ids[:, :k].numpy()


def _integer_rows(rng, n: int, dim: int, high: int = 3) -> np.ndarray:
    """Small-integer rows: dot products are exact in float32 and exact ties are everywhere."""
    return rng.integers(-high + 1, high, size=(n, dim)).astype(np.float32)


def _unit_rows(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TILES = [(1, 1), (2, 3), (5, 8), (7, 16), (64, 33), (1000, 1000)]


# ----------------------------------------------------------------------------------------------------------------
# tiled == untiled


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("k", [1, 4, 16, 50, 99, 100])
def test_tiled_equals_untiled_with_many_ties(tiles, k):
    rng = np.random.default_rng(0)
    queries, db = _integer_rows(rng, 11, 3), _integer_rows(rng, 100, 3)
    scores, ids = knn.search(queries, db, k, tiles=tiles)
    ref_scores, ref_ids = _untiled(queries, db, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("tiles", [(1, 4), (3, 5), (8, 7), (8, 64)])
@pytest.mark.parametrize("k", [3, 6, 10, 13])
def test_planted_ties_across_tile_boundaries(tiles, k):
    # query (1, 0): the score of a row is its first coordinate.  Rows 2..13 share the best score, straddling
    # tiles of 4, 5 and 7 rows and cut by k; rows 20..40 share a lower one and meet a running top-k already full;
    # query (0, 1) ties every third row
    first = np.zeros(48, dtype=np.float32)
    first[2:14] = 5.0
    first[20:41] = 3.0
    first[[15, 44]] = 4.0
    db = np.stack([first, np.arange(48, dtype=np.float32) % 3], axis=1)
    queries = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    scores, ids = knn.search(queries, db, k, tiles=tiles)
    ref_scores, ref_ids = _untiled(queries, db, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    assert ids[0, : min(k, 12)].tolist() == list(range(2, 2 + min(k, 12)))  # lowest ids of the cut group


@pytest.mark.parametrize("tiles", [(3, 16), (2, 25), (3, 60)])
def test_rising_scores_split_the_tiles(tiles):
    # for query (1) every tile beats all rows before it, so each offers more than k candidates and is merged in
    # halves; scores rise in steps of three equal ones.  Query (-1) sees them fall: only the first tile counts.
    db = (np.arange(60) // 3).astype(np.float32)[:, None]
    queries = np.array([[1.0], [2.0], [-1.0]], dtype=np.float32)
    for k in (1, 4, 5, 7):
        for a, b in zip(knn.search(queries, db, k, tiles=tiles), _untiled(queries, db, k), strict=True):
            np.testing.assert_array_equal(a, b)


def test_tiled_equals_untiled_on_float_data():
    rng = np.random.default_rng(1)
    queries, db = _unit_rows(rng, 20, 32), _unit_rows(rng, 300, 32)
    ref_scores, ref_ids = _untiled(queries, db, 40)
    for tiles in TILES:
        scores, ids = knn.search(queries, db, 40, tiles=tiles)
        np.testing.assert_array_equal(ids, ref_ids)
        # BLAS kernels depend on the matrix shape: a score may move by a float32 ulp between tile sizes
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)


def test_negative_and_zero_scores_keep_the_order():
    # scores 0 (as +0.0 and -0.0), negative, and equal negative ones: the keys must order them as floats do
    db = np.array([[0.0], [-0.0], [-2.0], [3.0], [-2.0], [0.0], [-1e-30], [-3.0]], dtype=np.float32)
    queries = np.array([[1.0], [-1.0], [0.0]], dtype=np.float32)
    for k in (3, 5, 8):
        for tiles in [(1, 1), (2, 3), (3, 8)]:
            scores, ids = knn.search(queries, db, k, tiles=tiles)
            ref_scores, ref_ids = _untiled(queries, db, k)
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_array_equal(scores, ref_scores)


def test_keys_order_is_the_ranking_order_and_decode_inverts_it():
    rng = np.random.default_rng(2)
    values = np.array([-np.inf, -3.5, -1.0, -1e-38, -0.0, 0.0, 1e-42, 0.25, 1.0, 7.0, np.inf], dtype=np.float32)
    scores = rng.choice(values, size=500)
    ids = rng.permutation(np.concatenate([np.arange(490), 2**32 - 2 - np.arange(10)]))  # up to the largest id
    keys = knn._keys(torch.from_numpy(scores), torch.from_numpy(ids))
    order = torch.argsort(keys, descending=True).numpy()
    np.testing.assert_array_equal(order, np.lexsort((ids, -scores)))  # score descending, then id ascending
    decoded_scores, decoded_ids = knn._decode(keys)
    np.testing.assert_array_equal(decoded_scores.numpy(), scores)
    np.testing.assert_array_equal(decoded_ids.numpy(), ids)


# ----------------------------------------------------------------------------------------------------------------
# inputs read by rows: h5py datasets, RowStack


def test_search_reads_h5py_datasets_like_numpy(tmp_path):
    rng = np.random.default_rng(3)
    queries, db = _integer_rows(rng, 9, 4), _integer_rows(rng, 70, 4)
    h5io.write_arrays(tmp_path / "x.h5", {"query": queries, "db": db})
    with h5py.File(tmp_path / "x.h5", "r") as handle:
        for k in (5, 70):
            from_file = knn.search(handle["query"], handle["db"], k, tiles=(4, 16))
            from_memory = knn.search(queries, db, k, tiles=(4, 16))
            for a, b in zip(from_file, from_memory, strict=True):
                np.testing.assert_array_equal(a, b)


def test_row_stack_slices_across_its_parts(tmp_path):
    rng = np.random.default_rng(4)
    parts = [_integer_rows(rng, n, 3) for n in (5, 1, 9)]
    h5io.write_arrays(tmp_path / "p.h5", {"middle": parts[1]})
    whole = np.concatenate(parts)
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        stack = knn.RowStack([parts[0], handle["middle"], parts[2]])
        assert stack.shape == (15, 3)
        for start in range(16):
            for stop in range(start, 17):
                np.testing.assert_array_equal(stack[start:stop], whole[start:stop])
    with pytest.raises(ValueError, match="different dimensions"):
        knn.RowStack([parts[0], np.zeros((2, 4), np.float32)])


def test_search_on_a_row_stack_equals_search_on_the_concatenation():
    rng = np.random.default_rng(5)
    queries = _integer_rows(rng, 6, 3)
    test_db, distractors = _integer_rows(rng, 23, 3), _integer_rows(rng, 41, 3)
    whole = np.concatenate([test_db, distractors])
    for k in (7, 64):
        for tiles in [(2, 5), (6, 20), (6, 64)]:
            stacked = knn.search(queries, knn.RowStack([test_db, distractors]), k, tiles=tiles)
            for a, b in zip(stacked, _untiled(queries, whole, k), strict=True):
                np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# self_neighbours


def _self_neighbours_by_loop(features: np.ndarray, k: int) -> np.ndarray:
    """The previous implementation: each row first, then its k - 1 best others in ranking order."""
    _, ids = _untiled(features, features, k + 1)
    return np.stack([np.concatenate([[row], ids[row][ids[row] != row][: k - 1]]) for row in range(len(features))])


@pytest.mark.parametrize("tiles", [(1, 1), (3, 4), (8, 16), (100, 100)])
@pytest.mark.parametrize("k", [1, 2, 5, 30])
def test_self_neighbours_first_with_duplicates(tiles, k):
    rng = np.random.default_rng(6)
    features = _integer_rows(rng, 30, 3, high=2)  # rows of {-1, 0, 1}: many exact duplicates, some scoring
    features[[4, 7, 11, 12, 25]] = 1.0  # above their own self-similarity; copies of (1, 1, 1) across tiles
    copies = np.flatnonzero((features == 1).all(axis=1))
    neighbours = knn.self_neighbours(features, k, tiles=tiles)
    assert neighbours.shape == (30, k) and neighbours.dtype == np.int64
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(30))
    assert all(len(set(row)) == k for row in neighbours.tolist())
    np.testing.assert_array_equal(neighbours, _self_neighbours_by_loop(features, k))
    if k >= len(copies):  # each copy: itself, then the other copies (the only rows scoring 3), lowest ids first
        for copy in copies:
            assert neighbours[copy, : len(copies)].tolist() == [copy] + [c for c in copies if c != copy]


# ----------------------------------------------------------------------------------------------------------------
# tile sizes from the memory budget


def test_tile_sizes_by_hand():
    # D = 10, N = 1000, k = 5, Q = 100: results 12·100·5 = 6000 bytes; per tile 40q + 80n + 5qn + 640q
    assert knn.tile_sizes(100, 1000, 10, 5, 10**9) == (100, 1000)  # capped by the sizes
    # 6000 + 680·100 + (80 + 500)·200 = 190000: exactly a database tile of 200 rows
    assert knn.tile_sizes(100, 1000, 10, 5, 190_000) == (100, 200)
    assert knn.tile_sizes(100, 1000, 10, 5, 190_579) == (100, 200)
    assert knn.tile_sizes(100, 1000, 10, 5, 190_580) == (100, 201)
    # 100000: with q = 100 only (94000 - 68000) // 580 = 44 < 100 rows fit; q = 50: 60000 // 330 = 181
    assert knn.tile_sizes(100, 1000, 10, 5, 100_000) == (50, 181)
    # whole ranking (k = N = 1000), Q = 2: results 24000; per tile 40q + 80n + 5qn + 16000q
    assert knn.tile_sizes(2, 1000, 10, 5000, 24_000 + 32_080 + 90 * 300) == (2, 300)
    # the training lists keep 8 bytes per entry: 2000 bytes fewer results leave 2000 // 580 = 3 more rows
    assert knn.tile_sizes(100, 1000, 10, 5, 190_000, result_bytes=8) == (100, 203)
    # the sizes of the paper: 4096 x 16384 tiles for the training lists, one block of all queries for R1M
    assert knn.tile_sizes(91_642, 91_642, 2048, 512, 4 * 2**30, result_bytes=8) == (4096, 16384)
    assert knn.tile_sizes(70, 1_004_993, 2048, 1_004_993, 4 * 2**30) == (70, 16384)


def test_tile_sizes_reject_a_budget_below_one_tile():
    with pytest.raises(ValueError, match=r"cannot hold the 100 x 5 results and one tile; at least"):
        knn.tile_sizes(100, 1000, 10, 5, 6000)


@pytest.mark.parametrize("memory_bytes", [4000, 6000, 20_000, 2**30])
def test_search_within_a_small_budget_is_unchanged(memory_bytes):
    rng = np.random.default_rng(7)
    queries, db = _integer_rows(rng, 12, 4), _integer_rows(rng, 90, 4)
    tiles = knn.tile_sizes(12, 90, 4, 10, memory_bytes)
    assert (tiles[0] < 12 or tiles[1] < 90) == (memory_bytes < 2**30)
    for a, b in zip(knn.search(queries, db, 10, memory_bytes=memory_bytes), _untiled(queries, db, 10), strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# stages


def test_knn_stage_with_distractors_equals_search_on_the_concatenation(tmp_path):
    rng = np.random.default_rng(8)
    query, test_db, distractors = (_integer_rows(rng, n, 8) for n in (5, 60, 40))
    h5io.write_arrays(tmp_path / "test.h5", {"query": query, "db": test_db})
    h5io.write_arrays(tmp_path / "r1m.h5", {"db": distractors})
    # results 12·5·100 = 6000 bytes, 5 query rows 5·(32 + 1600) = 8160, (17100 - 14160) // 89 = 33 database rows:
    # the tile of rows 33..65 spans the last test images and the first distractors
    memory_gb = 17_100 / 2**30
    assert knn.tile_sizes(5, 100, 8, 100, int(memory_gb * 2**30)) == (5, 33)
    stages.knn(str(tmp_path / "test.h5"), str(tmp_path / "r1m.h5"), str(tmp_path / "knn.h5"), memory_gb, top_scores=7)
    ref_scores, ref_ids = _untiled(query, np.concatenate([test_db, distractors]), 100)
    np.testing.assert_array_equal(h5io.read_array(tmp_path / "knn.h5", "ranks"), ref_ids)
    np.testing.assert_array_equal(h5io.read_array(tmp_path / "knn.h5", "scores"), ref_scores[:, :7])
    assert h5io.read_attrs(tmp_path / "knn.h5")["n_db"] == 100
    stages.knn(str(tmp_path / "test.h5"), None, str(tmp_path / "knn_test.h5"), memory_gb)
    np.testing.assert_array_equal(h5io.read_array(tmp_path / "knn_test.h5", "ranks"), _untiled(query, test_db, 60)[1])


def test_train_neighbours_stage_equals_self_neighbours_in_memory(tmp_path):
    rng = np.random.default_rng(9)
    splits = {"train": _integer_rows(rng, 50, 4, high=2), "val": _integer_rows(rng, 12, 4, high=2)}
    h5io.write_arrays(tmp_path / "features.h5", splits)
    memory_gb = 14_000 / 2**30
    assert knn.graph_tiles(50, 4, 6, int(memory_gb * 2**30))[1] < 50  # several tiles
    stages.train_neighbours(str(tmp_path / "features.h5"), str(tmp_path / "neighbours.h5"), 6, memory_gb)
    for split, features in splits.items():
        np.testing.assert_array_equal(
            h5io.read_array(tmp_path / "neighbours.h5", split), _self_neighbours_by_loop(features, 6)
        )
    assert h5io.read_attrs(tmp_path / "neighbours.h5")["k"] == 6
