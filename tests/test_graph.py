"""The database graph built once (csa_rerank.knn.self_graph, csa_rerank.graph) and the methods that read it.

The lists are checked against their definition (a stable sort of the full score matrix), and every graph-reading
method is checked to rank the same with a graph built once at larger widths as with the graph it builds itself,
on data with exact ties (duplicated rows).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csa_rerank import graph, h5io, knn, registry
from csa_rerank.methods import METHODS, lattqe
from csa_rerank.methods.kreciprocal import universe_lists


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    yield


class Negated:
    """-x, read by rows: ``knn.search(Negated(x), x, k)`` lists each row's k least similar rows, the way DDBA and
    k-reciprocal found them before the graph."""

    def __init__(self, rows: np.ndarray):
        self.rows, self.shape = rows, rows.shape

    def __getitem__(self, rows: slice) -> np.ndarray:
        return -self.rows[rows]


def tied_unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    """Unit rows in which every fifth row repeats the row before it: exact ties in every ranking."""
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    x[5::5] = x[4::5][: len(x[5::5])]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_lists(x: np.ndarray, near: int, far: int) -> tuple[np.ndarray, np.ndarray]:
    """By the definition: each row itself, then the other rows by descending score, equal scores by the lower
    index; and all rows by ascending score, equal scores by the lower index."""
    scores = (torch.from_numpy(x) @ torch.from_numpy(x).T).numpy()  # one product, as a single tile computes it
    near_ids, far_ids = [], []
    for i, row in enumerate(scores):
        order = np.lexsort((np.arange(len(row)), -row))
        near_ids.append([i, *[j for j in order if j != i][: near - 1]])
        far_ids.append(np.lexsort((np.arange(len(row)), row))[:far])
    return np.array(near_ids), np.array(far_ids)


def test_self_graph_lists_follow_their_definition_ties_included():
    x = tied_unit_rows(120, 16, seed=0)
    lists = knn.self_graph(x, 9, 7)
    near_ids, far_ids = reference_lists(x, 9, 7)
    np.testing.assert_array_equal(lists.near_ids, near_ids)
    np.testing.assert_array_equal(lists.far_ids, far_ids)
    scores = x @ x.T
    np.testing.assert_allclose(lists.near_scores[:, 1:], np.take_along_axis(scores, near_ids[:, 1:], 1), atol=1e-6)
    np.testing.assert_allclose(lists.far_scores, np.take_along_axis(scores, far_ids, 1), atol=1e-6)
    assert np.isinf(lists.near_scores[:, 0]).all()
    # the duplicate of row 4 is row 5: each is the other's first neighbour, the lower index losing no tie
    assert lists.near_ids[4, 1] == 5 and lists.near_ids[5, 1] == 4


def test_far_lists_are_those_of_a_search_with_the_negated_rows():
    x = tied_unit_rows(150, 24, seed=1)
    np.testing.assert_array_equal(knn.self_graph(x, 3, 11).far_ids, knn.search(Negated(x), x, 11)[1])


@pytest.mark.parametrize("tiles", [None, (16, 24), (7, 150)])
def test_a_narrower_graph_is_the_first_columns_of_a_wider_one(tiles):
    x = tied_unit_rows(150, 24, seed=2)
    wide = knn.self_graph(x, 40, 30, tiles=tiles)
    for near, far in [(1, 0), (5, 0), (12, 3), (40, 30)]:
        narrow = knn.self_graph(x, near, far, tiles=tiles)
        np.testing.assert_array_equal(narrow.near_ids, wide.near_ids[:, :near])
        np.testing.assert_array_equal(narrow.near_scores, wide.near_scores[:, :near])
        np.testing.assert_array_equal(narrow.far_ids, wide.far_ids[:, :far])
    np.testing.assert_array_equal(knn.self_neighbours(x, 12, tiles=tiles), wide.near_ids[:, :12])


def test_a_memory_bound_graph_is_tiled_alike_at_every_width_up_to_the_tile_width():
    n, dim = 3000, 64
    budget = 24 * 2**20
    tiles = {knn.graph_tiles(n, dim, width, budget) for width in (2, 50, 1024)}
    assert len(tiles) == 1 and next(iter(tiles))[1] < n  # several database tiles, the same for every width


def test_graph_files_round_trip_and_a_narrow_graph_is_refused(tmp_path):
    x = tied_unit_rows(60, 8, seed=3)
    lists = knn.self_graph(x, 6, 4)
    graph.write(str(tmp_path / "g.h5"), lists)
    back = graph.read(str(tmp_path / "g.h5"))
    for written, read in zip(lists, back, strict=True):
        np.testing.assert_array_equal(written, read)
    assert back.near_ids.dtype == np.int64
    np.testing.assert_array_equal(graph.columns(x, back, 3, 2).near_ids, lists.near_ids[:, :3])
    with pytest.raises(ValueError, match="6 near and 4 far columns; this method reads 60 rows, 7 near and 0 far"):
        graph.columns(x, back, 7)
    with pytest.raises(ValueError, match="60 rows"):
        graph.columns(x[:50], back, 2)


def test_k_reciprocal_universe_lists_equal_a_search_over_the_universe():
    query, db = tied_unit_rows(40, 16, seed=4), tied_unit_rows(200, 16, seed=5)
    db[7] = query[3]  # a query tied with a database row
    universe = np.concatenate([query, db])
    neighbours, lowest = universe_lists(torch.from_numpy(universe), len(query), 21)
    np.testing.assert_array_equal(neighbours.numpy(), knn.self_neighbours(universe, 21))
    expected_lowest = -knn.search(Negated(universe), universe, 1)[0][:, 0]
    np.testing.assert_array_equal(lowest.numpy(), expected_lowest.astype(np.float64))


GRAPH_METHODS = [m.label for m in registry.METHODS if m.graph and not m.fitted_by]


def test_the_registry_names_every_graph_reading_method():
    assert set(GRAPH_METHODS) == {
        "ADBA + AQE", "ADBAwD + AQEwD", "DDBA + DQE", "αDBA + αQE", "GSS", "DFS", "k-reciprocal"
    }  # fmt: skip
    assert registry.method("LAttDBA + LAttQE").graph == registry.GraphUse("fit.k", 1)


@pytest.fixture(scope="module")
def tied_set():
    query, db = tied_unit_rows(12, 16, seed=6), tied_unit_rows(160, 16, seed=7)
    _, ranks = knn.search(query, db, len(db))
    shared = knn.self_graph(db, 40, 60)  # wider than any method below reads
    return query, db, ranks, shared


@pytest.mark.parametrize("label", GRAPH_METHODS)
def test_every_graph_method_ranks_the_same_with_the_shared_graph(tied_set, label):
    query, db, ranks, shared = tied_set
    params = {"GSS": {"epochs": 3}, "DFS": {"k": 10}}.get(label, {})
    own = METHODS[label](query, db, ranks, **params)
    np.testing.assert_array_equal(METHODS[label](query, db, ranks, graph=shared, **params), own)


def test_lattdba_ranks_the_same_with_the_shared_graph(tied_set):
    query, db, ranks, shared = tied_set
    neighbours = knn.self_neighbours(db, 16)
    clusters = np.arange(len(db)) // 8
    weights = lattqe.fit(db, neighbours, clusters, K_train=16, epochs=1, batch_size=32, k=6, width=16, layers=1,
                         heads=2)  # fmt: skip
    own = lattqe.rerank_dba(query, db, ranks, weights)
    np.testing.assert_array_equal(lattqe.rerank_dba(query, db, ranks, weights, graph=shared), own)


def test_graph_build_reads_the_test_and_distractor_files_and_tensors_give_the_same_lists(tmp_path):
    db, distractors = tied_unit_rows(70, 16, seed=8), tied_unit_rows(50, 16, seed=9)
    h5io.write_arrays(str(tmp_path / "test.h5"), {"db": db, "query": db[:3]})
    h5io.write_arrays(str(tmp_path / "r1m.h5"), {"db": distractors})
    built = graph.build(str(tmp_path / "test.h5"), str(tmp_path / "r1m.h5"), 6, 4, memory_gb=0.01, device="cpu")
    whole = np.concatenate([db, distractors])
    for from_files, from_array, from_tensor in zip(
        built, knn.self_graph(whole, 6, 4), knn.self_graph(torch.from_numpy(whole), 6, 4), strict=True
    ):
        np.testing.assert_array_equal(from_files, from_array)
        np.testing.assert_array_equal(from_tensor, from_array)
