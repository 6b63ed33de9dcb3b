"""CSA trained on real descriptors: the 128-D ROxf descriptors in ../shared/data (skipped without them).

The database images get landmark labels from the queries' positives (easy + hard); queries are grouped into
landmarks by overlapping positive sets.  One third of the landmarks is held out: the model trains on the
labelled images of the others (all images still appear as neighbours) and re-ranks the held-out landmarks'
queries, which it never saw as training queries or positives.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from csa_rerank.affinity import test_affinity as affinity_sequences
from csa_rerank.evaluate import evaluate
from csa_rerank.knn import search, self_neighbours
from csa_rerank.model import CSAConfig, load_model
from csa_rerank.rerank import csa_scores, rerank_topk
from csa_rerank.training import TrainConfig, TrainingSamples, train

K = L = 64
MODEL = CSAConfig(anchors=L, hidden=64, depth=2, heads=4)
TRAINING = TrainConfig(
    epochs=60, warmup_epochs=2, batch_size=64, lr=0.05, lr_rule="paper", K_train=K, seed=0, world_size=1
)


def landmarks_of_queries(gnd: list[dict], min_overlap: float = 0.3) -> np.ndarray:
    """Landmark id of each query: connected components of 'positive sets overlap by > min_overlap'."""
    positives = [set(q["easy"]) | set(q["hard"]) for q in gnd]
    parent = list(range(len(gnd)))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for a in range(len(gnd)):
        for b in range(a):
            if len(positives[a] & positives[b]) > min_overlap * min(len(positives[a]), len(positives[b])):
                parent[root(a)] = root(b)
    roots = [root(a) for a in range(len(gnd))]
    return np.unique(roots, return_inverse=True)[1]


@pytest.mark.e2e
def test_csa_trained_on_real_descriptors_improves_unseen_landmarks(lopq_descriptors, roxford_gnd, tmp_path):
    """Three folds, each holding out every third landmark; all 70 queries are re-ranked by a model that did not
    train on their landmark, and the pooled mAP is compared with the first round's."""
    torch.set_num_threads(1)
    query, db = lopq_descriptors
    gnd = roxford_gnd["gnd"]
    landmark = landmarks_of_queries(gnd)
    assert landmark.max() + 1 == 12  # 11 ROxf landmarks; one of them splits into two groups of queries
    neighbours = self_neighbours(db, K)
    _, ranks = search(query, db, len(db))
    reranked = ranks.copy()
    for fold in range(3):
        held_out = np.arange(fold, 12, 3)
        labels = -1 - np.arange(len(db))  # unlabelled images: a cluster of their own
        for q, ground_truth in enumerate(gnd):
            if landmark[q] not in held_out:
                labels[np.concatenate([ground_truth["easy"], ground_truth["hard"]]).astype(int)] = landmark[q]
        labelled = np.flatnonzero(labels >= 0)
        samples = TrainingSamples([db], [neighbours], [labels], queries=[labelled])
        out_dir = tmp_path / f"fold{fold}"
        model_path = train(MODEL, TRAINING, samples, out_dir, "cpu", log=lambda message: None, progress=False)
        log = pd.read_csv(out_dir / "train_log.csv")
        assert log["total"].iloc[-1] < 0.9 * log["total"].iloc[0]

        test_queries = np.flatnonzero(np.isin(landmark, held_out))
        affinity = affinity_sequences(
            torch.as_tensor(query[test_queries]), torch.as_tensor(db), torch.as_tensor(ranks[test_queries]), K, L
        )
        scores = csa_scores(load_model(model_path), affinity, precision="fp32")
        reranked[test_queries] = rerank_topk(ranks[test_queries], scores)
        fold_gnd = [gnd[q] for q in test_queries]
        before, after = evaluate(ranks[test_queries], fold_gnd), evaluate(reranked[test_queries], fold_gnd)
        print(
            f"\nfold {fold}: {len(labelled)} training queries, loss {log['total'].iloc[0]:.3f} -> "
            f"{log['total'].iloc[-1]:.3f}; {len(test_queries)} held-out queries, mAP first round -> CSA: "
            + ", ".join(f"{p} {before[p]['mAP']:.2f} -> {after[p]['mAP']:.2f}" for p in ("easy", "medium", "hard"))
        )
    before, after = evaluate(ranks, gnd), evaluate(reranked, gnd)
    print(
        "all 70 queries, mAP first round -> CSA: "
        + ", ".join(f"{p} {before[p]['mAP']:.2f} -> {after[p]['mAP']:.2f}" for p in ("easy", "medium", "hard"))
    )
    assert after["easy"]["mAP"] > before["easy"]["mAP"] + 0.5
    assert after["medium"]["mAP"] > before["medium"]["mAP"] + 0.5
