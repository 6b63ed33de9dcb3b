"""Learned whitening (cirtorch's whitenlearn / whitenapply) checked by its defining properties."""

from __future__ import annotations

import numpy as np
import pytest

from csa_rerank.whitening import apply_whitening, fit_post_whitening, learn_whitening, precomputed_whitening


@pytest.fixture
def synthetic():
    """Correlated descriptors X [N, D] and matching pairs (q_i, p_i) whose differences are anisotropic."""
    rng = np.random.default_rng(0)
    N, D = 300, 6
    mixing = rng.standard_normal((D, D)) * np.array([3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
    X = rng.standard_normal((N, D)) @ mixing + rng.standard_normal(D)
    qidxs = rng.integers(0, N, size=400)
    pidxs = rng.integers(0, N, size=400)
    return X, qidxs, pidxs


def _pair_covariance(X, qidxs, pidxs):
    diff = X[qidxs] - X[pidxs]
    return diff.T @ diff / len(diff)


def test_mean_is_the_mean_of_the_query_side(synthetic):
    X, qidxs, pidxs = synthetic
    m, _ = learn_whitening(X, qidxs, pidxs)
    np.testing.assert_allclose(m, X[qidxs].mean(axis=0), atol=1e-12)


def test_pair_differences_are_white_after_projection(synthetic):
    X, qidxs, pidxs = synthetic
    m, P = learn_whitening(X, qidxs, pidxs)
    S = _pair_covariance(X, qidxs, pidxs)
    assert not np.allclose(S, np.eye(6), atol=0.1)  # the data is far from white to begin with
    # P S P^T = I: the covariance of P (x_q - x_p) over the pairs is the identity
    np.testing.assert_allclose(P @ S @ P.T, np.eye(6), atol=1e-8)


def test_projected_scatter_is_diagonal_in_decreasing_order(synthetic):
    X, qidxs, pidxs = synthetic
    m, P = learn_whitening(X, qidxs, pidxs)
    Y = (X - m) @ P.T
    C = Y.T @ Y
    eigenvalues = np.diag(C)
    off_diagonal = C - np.diag(eigenvalues)
    assert np.abs(off_diagonal).max() < 1e-8 * eigenvalues.max()
    assert np.all(np.diff(eigenvalues) < 0)  # strictly decreasing for this data


def test_apply_whitening_by_hand(synthetic):
    X, qidxs, pidxs = synthetic
    m, P = learn_whitening(X, qidxs, pidxs)
    out = apply_whitening(X, m, P)
    assert out.dtype == np.float32 and out.shape == X.shape
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    y = (X - m) @ P.T
    np.testing.assert_allclose(out, y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-6), atol=1e-6)


def test_apply_whitening_keeps_the_leading_dimensions(synthetic):
    X, qidxs, pidxs = synthetic
    m, P = learn_whitening(X, qidxs, pidxs)
    out = apply_whitening(X[:10], m, P, dims=3)
    assert out.shape == (10, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the first 3 rows of P (largest eigenvalues), re-normalised after the truncation
    y = (X[:10] - m) @ P[:3].T
    np.testing.assert_allclose(out, y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-5)
    full = apply_whitening(X[:10], m, P)
    assert not np.allclose(out, full[:, :3], atol=1e-3)  # truncation happens before the normalisation


def test_whitening_an_orthogonal_transform_of_white_pairs():
    # if pair differences are already white, P S P^T = I forces P to be orthogonal: distances are preserved
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 3))
    qidxs, pidxs = np.arange(0, 2000, 2), np.arange(1, 2000, 2)
    m, P = learn_whitening(X, qidxs, pidxs)
    S = _pair_covariance(X, qidxs, pidxs)
    np.testing.assert_allclose(P @ S @ P.T, np.eye(3), atol=1e-8)
    # S ~ 2 I for independent standard normals, so P ~ orthogonal / sqrt(2)
    np.testing.assert_allclose(P @ P.T * 2, np.eye(3), atol=0.15)


def test_singular_pair_covariance_gets_jitter():
    # one pair in 4-D: S has rank 1, Cholesky needs the diagonal jitter; the result must still be finite
    X = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    m, P = learn_whitening(X, [0], [1])
    assert np.all(np.isfinite(P)) and P.shape == (4, 4)
    out = apply_whitening(X, m, P)
    assert np.all(np.isfinite(out))


def test_pairs_must_be_non_empty_and_matching():
    X = np.eye(3)
    with pytest.raises(ValueError, match="non-empty"):
        learn_whitening(X, [], [])
    with pytest.raises(ValueError, match="got 2 and 1"):
        learn_whitening(X, [0, 1], [2])


def test_centring_removes_the_shared_direction():
    # descriptors = one common unit direction + small individual parts: cosines ~1 before, spread after
    rng = np.random.default_rng(2)
    common = np.zeros(16)
    common[0] = 1.0
    X = common + 0.01 * rng.standard_normal((50, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    params = fit_post_whitening("centre", X)
    assert set(params) == {"mean"}
    np.testing.assert_allclose(params["mean"], X.mean(axis=0))
    Y = apply_whitening(X, params["mean"])
    # unit norm up to cirtorch's 1e-6 added to the norm (relative 2.5e-5 here: centred norms are ~0.04)
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, atol=1e-4)
    expected = (X - X.mean(0)) / (np.linalg.norm(X - X.mean(0), axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(Y, expected, atol=1e-6)
    assert (X @ X.T).min() > 0.99 and (Y @ Y.T).min() < 0


def test_fit_post_whitening_learned_and_errors():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 4))
    params = fit_post_whitening("learned", X, np.arange(0, 200, 2), np.arange(1, 200, 2))
    m, P = learn_whitening(X, np.arange(0, 200, 2), np.arange(1, 200, 2))
    np.testing.assert_allclose(params["mean"], m)
    np.testing.assert_allclose(params["projection"], P)
    with pytest.raises(ValueError, match="matching pairs"):
        fit_post_whitening("learned", X)
    with pytest.raises(ValueError, match="unknown post-whitening"):
        fit_post_whitening("pca", X)


# ----------------------------------------------------------------------------------------------------------------
# the precomputed Lw of old cirtorch checkpoints (meta['Lw'][<set>]['ss' | 'ms'] = {'m': [D, 1], 'P': [D, D]})


def _lw(m, P):
    return {"m": np.asarray(m, dtype=np.float64).reshape(-1, 1), "P": np.asarray(P, dtype=np.float64)}


def test_precomputed_whitening_picks_the_scale_entry():
    ss, ms = _lw([1, 0], [[2, 0], [0, 1]]), _lw([0, 1], [[1, 0], [0, 3]])
    meta = {"Lw": {"retrieval-SfM-120k": {"ss": ss, "ms": ms}, "retrieval-SfM-30k": {"ss": ms, "ms": ss}}}
    single = precomputed_whitening(meta, multiscale=False)
    np.testing.assert_array_equal(single["mean"], [1, 0])  # [D, 1] -> [D]
    np.testing.assert_array_equal(single["projection"], [[2, 0], [0, 1]])
    np.testing.assert_array_equal(precomputed_whitening(meta, multiscale=True)["mean"], [0, 1])
    # applied as cirtorch's whitenapply: x = (3, 4) -> P (x - m) = (2 * 2, 4) = (4, 4) -> (1, 1)/sqrt(2)
    out = apply_whitening(np.array([[3.0, 4.0]]), single["mean"], single["projection"])
    np.testing.assert_allclose(out, [[4 / (np.sqrt(32) + 1e-6)] * 2], atol=1e-7)
    # one set of another name is used as it is
    only = {"Lw": {"retrieval-SfM-30k": {"ss": ss, "ms": ms}}}
    np.testing.assert_array_equal(precomputed_whitening(only, multiscale=True)["mean"], [0, 1])


def test_precomputed_whitening_errors():
    with pytest.raises(ValueError, match=r"net.pth: the checkpoint has no precomputed whitening \(meta\['Lw'\]\)"):
        precomputed_whitening({"architecture": "resnet101"}, multiscale=True, source="net.pth")
    two = {"Lw": {"a": {}, "b": {}}}
    with pytest.raises(ValueError, match="no 'retrieval-SfM-120k' entry and several others"):
        precomputed_whitening(two, multiscale=True)
    with pytest.raises(ValueError, match="lacks the 'ms' whitening"):
        precomputed_whitening({"Lw": {"retrieval-SfM-120k": {"ss": _lw([0, 0], np.eye(2))}}}, multiscale=True)
    with pytest.raises(ValueError, match=r"m of 3 values but P of shape \(2, 2\)"):
        precomputed_whitening({"Lw": {"x": {"ss": _lw([0, 0, 0], np.eye(2))}}}, multiscale=False)
