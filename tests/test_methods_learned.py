"""The learned and graph / spatial re-ranking methods of Table 5: LAttQE, LAttDBA + LAttQE, CRL, GSS, DSM.

Hand-checkable pieces on tiny inputs, short trainings on synthetic clustered descriptors, and one run of each
descriptor-based method on the real 128-D ROxf descriptors (skipped without ../shared/data), printing its mAP beside
the first round's (Easy 28.89 / Medium 21.13 / Hard 4.60).  LAttQE and CRL are trained on labelled database images
of the landmarks whose queries they do not re-rank (the protocol of test_training_real.py, three folds).
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from test_training_real import landmarks_of_queries
from torch import nn

from csa_rerank.affinity import test_affinity as build_test_affinity
from csa_rerank.evaluate import evaluate
from csa_rerank.knn import search, self_neighbours
from csa_rerank.methods import METHODS, crl, dsm, gss, lattqe


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Every test here runs with one torch thread (the machine is shared)."""


def clustered(n_clusters: int = 8, per_cluster: int = 24, dim: int = 16, noise: float = 0.35, seed: int = 0):
    """Unit descriptors [n_clusters * per_cluster, dim] around random centres, and their cluster ids."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    x = rng.normal(size=(n_clusters, dim))[labels] + noise * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def assert_permutations(new: np.ndarray, ranks: np.ndarray) -> None:
    assert new.shape == ranks.shape
    np.testing.assert_array_equal(np.sort(new, axis=1), np.sort(ranks, axis=1))


def mean_precision_at(ranks: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray, k: int) -> float:
    return float((db_labels[ranks[:, :k]] == query_labels[:, None]).mean())


def test_methods_are_registered_under_their_table5_labels():
    from csa_rerank.tables import PAPER

    assert {"LAttQE", "LAttDBA + LAttQE", "CRL", "GSS", "DSM"} <= set(PAPER["table5"])
    assert METHODS["LAttQE"] is lattqe.rerank
    assert METHODS["LAttDBA + LAttQE"] is lattqe.rerank_dba
    assert METHODS["CRL"] is crl.rerank
    assert METHODS["GSS"] is gss.rerank
    assert METHODS["DSM"] is dsm.rerank


# ----------------------------------------------------------------------------------------------------------------
# GSS


def test_gss_normalised_adjacency_of_a_3_node_path_by_hand():
    # edges 0-1 and 1-2 of weight 0.5: A + I = [[1, .5, 0], [.5, 1, .5], [0, .5, 1]], degrees 1.5, 2, 1.5
    rows, cols = torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 2, 1])
    adjacency = gss.normalised_adjacency(rows, cols, torch.full((4,), 0.5), 3).to_dense()
    a = 0.5 / math.sqrt(1.5 * 2.0)
    expected = [[1 / 1.5, a, 0.0], [a, 1 / 2.0, a], [0.0, a, 1 / 1.5]]
    np.testing.assert_allclose(adjacency.numpy(), expected, rtol=1e-6)


def test_gss_gcn_propagation_on_3_nodes_by_hand():
    rows, cols = torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 2, 1])
    adjacency = gss.normalised_adjacency(rows, cols, torch.full((4,), 0.5), 3)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    a = 0.5 / math.sqrt(3.0)
    p1 = torch.tensor([[1 / 1.5, a], [2 * a, 0.5], [1 / 1.5, a]])  # A_hat x, W = I, b = 0: all positive, ELU = id
    one_layer = gss.ResidualGCN(2, layers=1, init_std=0.0)
    np.testing.assert_allclose(one_layer(x, adjacency).detach().numpy(), torch.nn.functional.normalize(p1).numpy())
    # second layer: H_2 = P_1 + gamma ELU(A_hat ELU(P_1))
    two_layers = gss.ResidualGCN(2, layers=2, layer_decay=0.3, init_std=0.0)
    a_hat = adjacency.to_dense()
    expected = torch.nn.functional.normalize(p1 + 0.3 * (a_hat @ p1))
    np.testing.assert_allclose(two_layers(x, adjacency).detach().numpy(), expected.numpy(), rtol=1e-6)


def test_gss_graph_edges_are_symmetric_kNN_plus_query_links():
    db = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    neighbours = torch.tensor([[0, 1], [1, 0], [2, 1]])  # k = 2: the image and its nearest other image
    query = torch.tensor([[0.6, 0.8]])
    rows, cols, weights = gss.graph_edges(db, neighbours, query, torch.tensor([[2, 1]]))
    edges = {(int(r), int(c)): float(w) for r, c, w in zip(rows, cols, weights, strict=True)}
    # 0-1 found from both ends counts once per direction; 2 -> 1 adds 1-2; the query (node 3) links to 2 and 1
    assert edges == pytest.approx({(0, 1): 0.8, (1, 0): 0.8, (1, 2): 0.6, (2, 1): 0.6, (3, 2): 0.8, (3, 1): 0.96})


def test_gss_separation_loss_by_hand():
    similarity = torch.tensor([[1.0, 0.2], [-0.3, 0.9]])
    # relu -> [[1, .2], [0, .9]]; -(1/2)(s - 0.5)^2 -> -.125, -.045, -.125, -.08
    assert gss.separation_loss(similarity, alpha=1.0, beta=0.5).item() == pytest.approx(-0.375)
    assert gss.separation_loss(similarity, alpha=2.0, beta=0.5).item() == pytest.approx(-0.75)


def test_gss_tiled_loss_and_gradient_equal_the_whole_matrix(monkeypatch):
    z = torch.nn.functional.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    columns = torch.tensor([0, 3, 7])
    leaf = z.clone().requires_grad_()
    expected = gss.separation_loss(leaf @ leaf[columns].T, 1.0, 0.3) / 30
    expected.backward()
    monkeypatch.setattr(gss, "LOSS_TILE_ENTRIES", 7)  # tiles of 2 rows
    loss, gradient = gss._loss_and_gradient(z, columns, 1.0, 0.3)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(gradient.numpy(), leaf.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_gss_beta_is_the_similarity_percentile():
    z = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    beta = gss._percentile(z, 98.0, torch.Generator().manual_seed(0))
    assert beta == pytest.approx(np.percentile((z @ z.T).numpy(), 98.0), abs=0.02)


def test_gss_training_lowers_its_loss_and_reranks_clustered_data():
    db, labels = clustered(noise=0.5)
    query_ids = np.arange(0, len(db), 12)
    query = db[query_ids] + 0.3 * np.random.default_rng(1).normal(size=(len(query_ids), db.shape[1]))
    query = (query / np.linalg.norm(query, axis=1, keepdims=True)).astype(np.float32)
    _, ranks = search(query, db, len(db))
    z_query, z_db, losses = gss.fit_embeddings(query, db, ranks[:, :5], epochs=60, lr=1e-3, loss_columns=64)
    assert z_query.shape == query.shape and z_db.shape == db.shape
    np.testing.assert_allclose(np.linalg.norm(z_db, axis=1), 1.0, rtol=1e-5)
    assert losses[-1] < losses[0] - 0.01  # a negative loss: separation grows
    new = gss.rerank(query, db, ranks, epochs=60, lr=1e-3, loss_columns=64)
    assert_permutations(new, ranks)
    before = mean_precision_at(ranks, labels[query_ids], labels, 10)
    assert mean_precision_at(new, labels[query_ids], labels, 10) >= before


# ----------------------------------------------------------------------------------------------------------------
# LAttQE / LAttDBA


def test_lattqe_sinusoidal_encoding_by_hand():
    encoding = lattqe.sinusoidal_encoding(torch.tensor([0.0, 2.0]), 4)
    np.testing.assert_allclose(encoding[0].numpy(), [0, 1, 0, 1], atol=1e-7)
    np.testing.assert_allclose(
        encoding[1].numpy(), [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)], rtol=1e-6
    )


def test_lattqe_contrastive_loss_by_hand():
    expanded = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])  # distances 0, sqrt(2), sqrt(0.8)
    positive = torch.tensor([[False, False, True]])
    # negatives: 1/2 max(0, 1 - d)^2 = 1/2, 0; positive: 1/2 d^2 = 0.4
    loss = lattqe.contrastive_loss(expanded, candidates, positive, margin=1.0)
    assert loss.item() == pytest.approx((0.5 + 0.0 + 0.4) / 3, rel=1e-5)


def test_lattqe_expansion_is_a_unit_weighted_sum_of_the_tokens():
    torch.manual_seed(0)
    model = lattqe.LAttQE(lattqe.LAttQEConfig(dim=8, k=3, width=16, layers=1, heads=2)).eval()
    tokens = torch.nn.functional.normalize(torch.randn(5, 4, 8), dim=-1)  # [B, k + 1, D]
    weights = model.aggregation_weights(tokens)
    assert weights.shape == (5, 4)
    np.testing.assert_allclose(weights.sum(dim=1).detach().numpy(), 1.0, rtol=1e-6)
    expanded = model(tokens)
    expected = torch.nn.functional.normalize((weights[..., None] * tokens).sum(dim=1), dim=-1)
    np.testing.assert_allclose(expanded.detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_lattqe_trains_saves_and_reranks(tmp_path):
    # small clusters, many neighbours: uniform weights (the untrained model) mix in other clusters' images
    db, labels = clustered(n_clusters=16, per_cluster=8, noise=0.5)
    neighbours = self_neighbours(db, 32)
    weights = lattqe.fit(
        db, neighbours, labels, K_train=32, epochs=8, batch_size=32, lr=1e-3, k=12, width=32, layers=1, heads=2
    )
    assert weights["losses"][-1] < 0.8 * weights["losses"][0]
    torch.save(weights, tmp_path / "lattqe.pt")
    loaded = torch.load(tmp_path / "lattqe.pt", weights_only=True)
    query = db[::16] + 0.01
    _, ranks = search(query, db, 100)
    new = lattqe.rerank(query, db, ranks, loaded)
    assert_permutations(new, ranks)
    np.testing.assert_array_equal(new, lattqe.rerank(query, db, ranks, weights))
    augmented = lattqe.augment_database(db, loaded)
    assert augmented.shape == db.shape
    np.testing.assert_allclose(np.linalg.norm(augmented, axis=1), 1.0, rtol=1e-5)
    assert_permutations(lattqe.rerank_dba(query, db, ranks, loaded), ranks)


# ----------------------------------------------------------------------------------------------------------------
# CRL


def test_crl_context_vectors_by_hand():
    query = torch.tensor([[1.0, 0.0]])
    db = torch.tensor([[0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    ranks = torch.tensor([[2, 1, 0]])
    affinity = build_test_affinity(query, db, ranks, K=3, L=2)  # anchors: the query, db[2]
    inputs = crl.pair_inputs(affinity)  # [1, 3, 4]: [a_j ; a_0 * a_j]
    a_0 = np.array([1.0, 0.8])  # q.q, q.db[2]
    a = np.array([[0.8, 1.0], [0.6, 0.96], [0.0, 0.6]])  # db[2], db[1], db[0] against (q, db[2])
    np.testing.assert_allclose(inputs[0].numpy(), np.hstack([a, a_0 * a]), rtol=1e-6)


def test_crl_listwise_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 2.0]])
    relevant = torch.tensor([[True, False], [False, False]])  # the second list has no relevant item: left out
    assert crl.listwise_loss(logits, relevant).item() == pytest.approx(math.log(4.0))
    assert crl.listwise_loss(logits, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0


def test_crl_trains_saves_and_reranks_the_top_k(tmp_path):
    db, labels = clustered()
    neighbours = self_neighbours(db, 32)
    weights = crl.fit(db, neighbours, labels, K_train=32, epochs=10, batch_size=32, lr=3e-3, anchors=16, hidden=32)
    assert weights["losses"][-1] < 0.9 * weights["losses"][0]
    torch.save(weights, tmp_path / "crl.pt")
    loaded = torch.load(tmp_path / "crl.pt", weights_only=True)
    query = db[::16] + 0.01
    _, ranks = search(query, db, 60)
    new = crl.rerank(query, db, ranks, loaded, K=32)
    assert_permutations(new[:, :32], ranks[:, :32])
    np.testing.assert_array_equal(new[:, 32:], ranks[:, 32:])
    np.testing.assert_array_equal(new, crl.rerank(query, db, ranks, weights, K=32))


# ----------------------------------------------------------------------------------------------------------------
# DSM


def test_dsm_connected_components_by_hand():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 1]], dtype=torch.bool)
    # 4-connectivity: {(0,0), (0,1), (1,1)}, {(1,3), (2,3)}, {(2,0)}; label = 1 + largest flat index
    expected = [[6, 6, 0, 0], [0, 6, 0, 12], [9, 0, 0, 12]]
    np.testing.assert_array_equal(dsm.connected_components(mask).numpy(), expected)


def blobs(height: int, width: int, centres, sigma: float = 2.0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) * a for cx, cy, a in centres)


def test_dsm_detects_planted_blobs_one_region_each():
    maps = np.zeros((3, 24, 32), dtype=np.float32)
    maps[0] = blobs(24, 32, [(8, 6, 1.0)])
    maps[1] = blobs(24, 32, [(20, 15, 1.0), (5, 18, 0.7)])  # two blobs of different heights; channel 2 is empty
    regions = dsm.detect_regions(maps)
    assert regions.word.tolist() == [0, 1, 1]
    found = sorted(zip(regions.word.tolist(), regions.centre.round(3).tolist(), strict=True))
    assert found == [(0, [8.0, 6.0]), (1, [5.0, 18.0]), (1, [20.0, 15.0])]
    for shape in regions.shape:  # round blobs: isotropic shapes
        assert shape[0, 1] == pytest.approx(0.0, abs=1e-9) and shape[0, 0] == pytest.approx(shape[1, 1])
    assert dsm.detect_regions(maps, channels=1).word.tolist() == [0]  # the channel of largest maximum
    assert len(dsm.detect_regions(np.zeros((2, 4, 4), dtype=np.float32)).word) == 0


def test_dsm_verification_recovers_a_planted_translation_and_scale():
    rng = np.random.default_rng(0)
    centre = rng.uniform(0, 20, size=(6, 2))
    shape = np.repeat(np.eye(2)[None], 6, axis=0) * rng.uniform(0.5, 2.0, size=(6, 1, 1))
    a = dsm.Regions(np.arange(6), centre, shape, np.full(6, 4))
    # b: the same features scaled by 1.5 and moved by (3, -2), plus 3 outliers on the same words
    outliers = rng.uniform(0, 30, size=(3, 2))
    b = dsm.Regions(
        np.concatenate([np.arange(6), [0, 1, 2]]),
        np.vstack([1.5 * centre + [3.0, -2.0], outliers]),
        np.concatenate([2.25 * shape, shape[:3]]),
        np.full(9, 4),
    )
    match = dsm.verify(a, b, inlier_threshold=0.5)
    assert match.inliers == 6
    np.testing.assert_allclose(match.matrix, 1.5 * np.eye(2), atol=1e-9)
    np.testing.assert_allclose(match.translation, [3.0, -2.0], atol=1e-9)
    assert dsm.verify(a, dsm.Regions(np.array([9]), np.zeros((1, 2)), np.eye(2)[None], np.ones(1))).inliers == 0


def _hypotheses(a_regions, b_regions):
    """Correspondences (a, b), hypotheses (matrices, translations) and centres (ca, cb), as dsm.verify forms them."""
    a, b = np.nonzero(a_regions.word[:, None] == b_regions.word[None, :])
    ca, cb = a_regions.centre[a], b_regions.centre[b]
    matrices = dsm._sqrtm(b_regions.shape[b], 0.5) @ dsm._sqrtm(a_regions.shape[a], -0.5)
    return a, b, matrices, cb - np.einsum("mij,mj->mi", matrices, ca), ca, cb


def _numpy_best_hypothesis(a, b, matrices, translations, ca, cb, n_a, n_b, threshold):
    """The hypothesis search as it was written in NumPy before it moved to torch (the reference): (index, inliers)."""
    projected = np.einsum("hij,mj->hmi", matrices, ca) + translations[:, None]
    rows, columns = np.nonzero(np.linalg.norm(projected - cb, axis=-1) <= threshold)
    seen_a, seen_b = np.zeros((len(a), n_a), dtype=bool), np.zeros((len(a), n_b), dtype=bool)
    seen_a[rows, a[columns]] = True
    seen_b[rows, b[columns]] = True
    counts = np.minimum(seen_a.sum(axis=1), seen_b.sum(axis=1))
    return int(counts.argmax()), int(counts.max())


def _grid_regions(rng, n, words, size):
    """Features on integer cells with one- and two-cell shapes: many equal distances and tied counts."""
    shape = np.repeat(np.eye(2)[None] / 12, n, axis=0) * rng.integers(1, 3, size=(n, 1, 1))
    return dsm.Regions(rng.integers(0, words, n), rng.integers(0, size, (n, 2)).astype(float), shape, np.ones(n, int))


@pytest.mark.parametrize("seed", range(6))
def test_dsm_hypotheses_scored_in_torch_equal_the_numpy_definition(seed):
    rng = np.random.default_rng(seed)
    regions_a, regions_b = _grid_regions(rng, 120, 6, 12), _grid_regions(rng, 110, 6, 12)
    a, b, matrices, translations, ca, cb = _hypotheses(regions_a, regions_b)
    assert len(a) > dsm.HYPOTHESIS_BLOCK  # several blocks
    sizes = (len(regions_a.word), len(regions_b.word), 1.0)
    expected = _numpy_best_hypothesis(a, b, matrices, translations, ca, cb, *sizes)
    on_device = [torch.as_tensor(x) for x in (matrices, translations, ca, cb, a, b)]
    assert dsm._best_hypothesis(*on_device, *sizes) == expected
    assert dsm.verify(regions_a, regions_b, 1.0).inliers >= expected[1]  # the refinement only keeps more


def test_dsm_rerank_moves_the_spatially_consistent_image_up():
    layout = [(5, 5, 1.0), (15, 8, 1.0), (9, 16, 1.0)]
    query = np.stack([blobs(24, 24, [c]) for c in layout]).astype(np.float32)
    same = np.stack([blobs(24, 24, [(x + 3, y + 2, a)]) for x, y, a in layout]).astype(np.float32)
    shuffled = np.stack([blobs(24, 24, [c]) for c in [layout[2], layout[0], layout[1]]]).astype(np.float32)
    db_regions = [dsm.detect_regions(m) for m in (shuffled, shuffled, same, shuffled)]
    ranks = np.array([[0, 1, 2, 3]])
    new = dsm.rerank(None, None, ranks, [dsm.detect_regions(query)], db_regions, top_n=3)
    np.testing.assert_array_equal(new, [[2, 0, 1, 3]])  # image 3 is beyond top_n: stays last


class ColourNet(nn.Module):
    """A stand-in network: ``features`` = the mean of each colour channel over 8 x 8 cells, after ReLU."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 3, kernel_size=8, stride=8, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            for c in range(3):
                conv.weight[c, c] = 1 / 64
        self.features = nn.Sequential(conv, nn.ReLU())


def draw(path, discs) -> str:
    image = Image.new("RGB", (96, 96))
    pen = ImageDraw.Draw(image)
    for (x, y), colour in discs:
        pen.ellipse((x - 10, y - 10, x + 10, y + 10), fill=colour)
    image.filter(ImageFilter.GaussianBlur(4)).save(path)
    return str(path)


def test_dsm_rerank_with_network_on_images(tmp_path):
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    layout = [((24, 24), red), ((64, 32), green), ((40, 72), blue)]
    query = draw(tmp_path / "q.png", layout)
    db = [
        draw(tmp_path / "0.png", [((70, 70), red), ((20, 80), green), ((70, 20), blue)]),
        draw(tmp_path / "1.png", [((x + 16, y + 8), c) for (x, y), c in layout]),
        draw(tmp_path / "2.png", [((48, 48), red)]),
    ]
    new = dsm.rerank_with_network(ColourNet(), [query], db, np.array([[0, 2, 1]]), top_n=3, image_size=96)
    np.testing.assert_array_equal(new, [[1, 0, 2]])


# ----------------------------------------------------------------------------------------------------------------
# real descriptors


@pytest.fixture(scope="module")
def roxford(lopq_descriptors, roxford_gnd):
    """(query, db, gnd, first-round ranks [70, 4993], landmark of each query)."""
    query, db = lopq_descriptors
    _, ranks = search(query, db, len(db))
    gnd = roxford_gnd["gnd"]
    return query, db, gnd, ranks, landmarks_of_queries(gnd)


def report(name: str, ranks: np.ndarray, reranked: np.ndarray, gnd) -> tuple[dict, dict]:
    before, after = evaluate(ranks, gnd), evaluate(reranked, gnd)
    print(
        f"\n{name}: mAP first round -> re-ranked: "
        + ", ".join(f"{p} {before[p]['mAP']:.2f} -> {after[p]['mAP']:.2f}" for p in ("easy", "medium", "hard"))
    )
    return {p: before[p]["mAP"] for p in before}, {p: after[p]["mAP"] for p in after}


def held_out_folds(roxford, fit, rerankers: dict, folds: int = 3) -> dict:
    """Train with ``fit(labels, queries)`` on the labelled db images of the landmarks not held out, re-rank the
    held-out landmarks' queries with every ``rerankers[name](query, ranks, weights)``; pooled rankings."""
    query, db, gnd, ranks, landmark = roxford
    out = {name: ranks.copy() for name in rerankers}
    for fold in range(folds):
        held_out = np.arange(fold, landmark.max() + 1, folds)
        labels = -1 - np.arange(len(db))  # unlabelled images: a cluster of their own
        for q, ground_truth in enumerate(gnd):
            if landmark[q] not in held_out:
                labels[np.concatenate([ground_truth["easy"], ground_truth["hard"]]).astype(int)] = landmark[q]
        weights = fit(labels, np.flatnonzero(labels >= 0))
        assert weights["losses"][-1] < weights["losses"][0]
        test = np.flatnonzero(np.isin(landmark, held_out))
        for name, reranker in rerankers.items():
            out[name][test] = reranker(query[test], ranks[test], weights)
    return out


def test_gss_on_real_descriptors(roxford):
    query, db, gnd, ranks, _ = roxford
    before, after = report("GSS", ranks, gss.rerank(query, db, ranks, epochs=30, loss_columns=256), gnd)
    assert after["medium"] > before["medium"] + 1.0
    assert after["hard"] > before["hard"] + 1.0


def test_lattqe_and_lattdba_on_real_descriptors(roxford):
    db = roxford[1]
    neighbours = self_neighbours(db, 32)

    def fit(labels, queries):
        return lattqe.fit(
            db, neighbours, labels, queries, K_train=32, epochs=10, batch_size=32, lr=1e-3, k=4, width=64, layers=1
        )

    rerankers = {
        "LAttQE": lambda q, r, w: lattqe.rerank(q, db, r, w),
        "LAttDBA + LAttQE": lambda q, r, w: lattqe.rerank_dba(q, db, r, w),
    }
    for name, reranked in held_out_folds(roxford, fit, rerankers).items():
        before, after = report(name, roxford[3], reranked, roxford[2])
        assert after["medium"] > before["medium"] + 0.5


def test_crl_on_real_descriptors(roxford):
    db = roxford[1]
    neighbours = self_neighbours(db, 64)

    def fit(labels, queries):
        return crl.fit(db, neighbours, labels, queries, K_train=64, epochs=20, lr=1e-3, anchors=64)

    reranked = held_out_folds(roxford, fit, {"CRL": lambda q, r, w: crl.rerank(q, db, r, w, K=64)})["CRL"]
    before, after = report("CRL", roxford[3], reranked, roxford[2])
    assert after["medium"] > before["medium"] + 0.5
