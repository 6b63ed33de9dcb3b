"""Evaluation on the training set's val split (supplementary Fig. 1): rankings, ground truth and mAP by hand."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict

import numpy as np
import pytest
import torch

from csa_rerank import h5io, stages
from csa_rerank.model import CSAConfig, CSAReranker
from csa_rerank.validation import cluster_metrics, cluster_positives, evaluate_split, rank_others

# Four unit vectors at 0, 10, 90 and 100 degrees: two clusters of two images each.
ANGLES = np.deg2rad([0.0, 10.0, 90.0, 100.0])
FEATURES = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1).astype(np.float32)
CLUSTERS = np.array([7, 7, 3, 3])


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    yield


def test_rank_others_leaves_out_the_query():
    # cosines from image 0: 10 deg -> 0.98, 90 deg -> 0, 100 deg -> -0.17; from image 2: 100 deg (image 3) is
    # 10 deg away, image 1 is 80 deg away, image 0 90 deg
    ranks = rank_others(torch.as_tensor(FEATURES), [0, 2])
    assert ranks.tolist() == [[1, 2, 3], [3, 1, 0]]


def test_cluster_positives_are_the_other_images_of_the_cluster():
    clusters = np.array([1, 2, 1, 1, 2])
    assert cluster_positives(clusters, 0).tolist() == [2, 3]
    assert cluster_positives(clusters, 4).tolist() == [1]
    assert cluster_positives(np.array([1, 2]), 0).tolist() == []


def test_cluster_metrics_by_hand():
    # one positive (image 1) at position 2 of [2, 3, 1]: trapezoid (0/2 + 1/3) / 2 = 1/6; P@1 = 0, P@5 over the
    # first min(5, 3) = 3 items = 1/3.  Image 0 first in [0, 2, 3] for query 1: AP 1.
    metrics = cluster_metrics(np.array([[2, 3, 1], [0, 2, 3]]), np.array([0, 1]), CLUSTERS)
    assert metrics[0][0] == pytest.approx(1 / 6)
    assert metrics[0][1] == pytest.approx([0.0, 1 / 3, 1 / 3])
    assert metrics[1][0] == pytest.approx(1.0)
    # a query alone in its cluster has no positives and is left out
    assert cluster_metrics(np.array([[1]]), np.array([0]), np.array([5, 6])) == []


def reverse_first_round(affinity: torch.Tensor) -> np.ndarray:
    """Scores that reverse the first-round order of the candidates: minus their similarity to the query."""
    return (-affinity[:, 1:, 0]).numpy()


def test_evaluate_split_by_hand():
    seen = []

    def scorer(affinity):
        seen.append(affinity.clone())
        return reverse_first_round(affinity)

    result = evaluate_split(FEATURES, CLUSTERS, K=10, L=2, scorer=scorer, batch_size=3)
    # every query's only positive is first in its first-round list (AP 1), and last (position 2 of 3) once the
    # block is reversed: AP 1/6, P@1 0, P@5 and P@10 over the 3 items up to it: 1/3
    assert result["first_round"] == pytest.approx({"mAP": 100.0, "mP@1": 100.0, "mP@5": 100.0, "mP@10": 100.0})
    assert result["rerank"] == pytest.approx({"mAP": 100 / 6, "mP@1": 0.0, "mP@5": 100 / 3, "mP@10": 100 / 3})
    assert (result["K"], result["L"], result["n_queries"], result["n_images"], result["n_clusters"]) == (3, 2, 4, 4, 2)
    # K capped at the 3 other images; batches of 3 then 1 queries; row 0 and anchor 0 are the query
    assert [a.shape for a in seen] == [(3, 4, 2), (1, 4, 2)]
    affinity = torch.cat(seen)
    assert torch.allclose(affinity[:, 0, 0], torch.ones(4))
    # query 2 (90 deg): candidates 3, 1, 0 (100, 10, 0 deg); anchor 1 is image 3, 0, 90 and 100 deg from them
    assert affinity[2, 1:, 1].numpy() == pytest.approx([1.0, 0.0, np.cos(np.deg2rad(100))], abs=1e-6)


def test_evaluate_split_checks_its_inputs():
    with pytest.raises(ValueError, match="L=5 anchors"):
        evaluate_split(FEATURES, CLUSTERS, K=3, L=5, scorer=reverse_first_round)
    with pytest.raises(ValueError, match="cluster labels"):
        evaluate_split(FEATURES, CLUSTERS[:3], K=3, L=2, scorer=reverse_first_round)


def test_evaluate_val_stage_writes_the_json(tmp_path):
    h5io.write_arrays(tmp_path / "features.h5", {"train": FEATURES, "val": FEATURES})
    split = {"cids": [f"image{i:04d}" for i in range(4)], "cluster": CLUSTERS.tolist()}
    (tmp_path / "db.pkl").write_bytes(pickle.dumps({"train": split, "val": split}))
    config = CSAConfig(anchors=2, hidden=8, depth=1, heads=2)
    torch.manual_seed(0)
    model = CSAReranker(config)
    torch.save({"config": asdict(config), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    out = tmp_path / "eval" / "val.json"
    result = stages.evaluate_val(
        str(tmp_path / "features.h5"), str(tmp_path / "db.pkl"), str(tmp_path / "model.pt"), str(out),
        K=3, L=2, precision="fp32", use_gpu=False,
    )  # fmt: skip
    written = json.loads(out.read_text())
    assert written["first_round"]["mAP"] == pytest.approx(100.0)
    assert written["rerank"] == pytest.approx(result["rerank"])
    assert 0 < written["rerank"]["mAP"] <= 100 and written["K"] == 3
    with pytest.raises(ValueError, match="L=2 anchors, not L=3"):
        stages.evaluate_val(
            str(tmp_path / "features.h5"), str(tmp_path / "db.pkl"), str(tmp_path / "model.pt"), str(out),
            K=3, L=3, use_gpu=False,
        )  # fmt: skip
