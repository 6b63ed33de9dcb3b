"""Losses, optimiser groups, schedule, training samples and the resumable training loop."""

import math
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch

from csa_rerank.model import CSAConfig, CSAReranker, load_model
from csa_rerank.training import (
    TrainConfig,
    TrainingSamples,
    contrastive_loss,
    learning_rate,
    paper_preset,
    parameter_groups,
    plot_loss_curve,
    reconstruction_loss,
    train,
    warmup_cosine,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models here run faster on one thread, and do not stall when other processes share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------
# Contrastive loss, on tokens whose cosines with the query are known: cos(z0, z1) = 1, cos(z0, z2) = 0.

Z = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])  # [1, 3, 2]


def test_contrastive_loss_with_the_query_term_by_hand():
    labels = torch.tensor([[1, 1, 0]])
    # numerator e^{1/2} (query) + e^{1/2} (z1); denominator adds e^0 (z2)
    expected = -math.log(2 * math.exp(0.5) / (2 * math.exp(0.5) + 1))
    assert contrastive_loss(Z, labels, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_without_the_query_term_is_eq_6():
    labels = torch.tensor([[1, 1, 0]])
    expected = -math.log(math.exp(0.5) / (math.exp(0.5) + 1))
    loss = contrastive_loss(Z, labels, temperature=2.0, include_query=False)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_is_the_batch_mean():
    z = torch.cat([Z, Z])
    labels = torch.tensor([[True, True, False], [True, False, True]])
    first = -math.log(2 * math.exp(0.5) / (2 * math.exp(0.5) + 1))
    second = -math.log((math.exp(0.5) + 1) / (2 * math.exp(0.5) + 1))
    assert contrastive_loss(z, labels, 2.0).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_eq_6_leaves_out_samples_without_a_positive_candidate():
    z = torch.cat([Z, Z]).requires_grad_()
    labels = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = -math.log(math.exp(0.5) / (math.exp(0.5) + 1))
    assert contrastive_loss(z, labels, 2.0, include_query=False).item() == pytest.approx(expected, rel=1e-6)
    none_positive = contrastive_loss(z, torch.tensor([[1, 0, 0], [1, 0, 0]]), 2.0, include_query=False)
    none_positive.backward()
    assert none_positive.item() == 0.0 and torch.all(z.grad == 0)


def test_contrastive_loss_is_stable_at_tiny_temperatures():
    # exp(1 / 0.001) overflows float32 and float64; the logsumexp form gives log(1 + e^{-1000} / 2) = 0.
    loss = contrastive_loss(Z, torch.tensor([[1, 1, 0]]), temperature=1e-3)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Reconstruction loss


def test_reconstruction_distance_by_hand_including_the_clamp():
    affinity = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]])
    # token 0: unit vectors (0.6, 0.8) and (0.8, -0.6), squared distance 0.04 + 1.96 = 2
    # token 1: identical directions, squared distance 0 clamped to 1e-4, distance 0.01
    recon = torch.tensor([[[4.0, -3.0], [2.0, 2.0]]])
    expected = (math.sqrt(2) + 0.01) / 2
    assert reconstruction_loss(affinity, recon, "distance").item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_squared_is_the_mean_over_tokens_of_squared_norms():
    affinity = torch.tensor([[[1.0, 2.0], [1.0, 1.0]], [[0.0, 0.0], [2.0, 0.0]]])
    recon = torch.tensor([[[0.0, 0.0], [1.0, 3.0]], [[0.0, 1.0], [2.0, 0.0]]])
    # squared norms per token: 5, 4, 1, 0
    assert reconstruction_loss(affinity, recon, "squared").item() == pytest.approx(10 / 4)


def test_unknown_reconstruction_loss_is_rejected():
    with pytest.raises(ValueError, match="squared"):
        reconstruction_loss(torch.ones(1, 1, 2), torch.ones(1, 1, 2), "l1")


# ---------------------------------------------------------------------------------------------------------
# Optimisation


def test_weight_decay_only_on_matrices_including_the_reconstruction_head():
    model = CSAReranker(CSAConfig(anchors=16, hidden=32, heads=4, depth=1))
    decay, no_decay = parameter_groups(model, 1e-6)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-6, 0.0)
    assert decayed == {
        "projection.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.out.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.weight",
        "reconstruction_head.0.weight",
    }
    assert not_decayed == set(names.values()) - decayed
    assert {"blocks.0.norm1.weight", "blocks.0.norm2.bias", "reconstruction_head.0.bias"} <= not_decayed


def test_warmup_cosine_endpoints_and_shape():
    total, warmup, base, start, final = 100, 20, 0.1, 0.001, 0.0
    lrs = [warmup_cosine(step, total, warmup, base, start, final) for step in range(total)]
    assert lrs[0] == start
    assert lrs[10] == pytest.approx((start + base) / 2)
    assert lrs[warmup] == base
    assert 0 < lrs[-1] - final < base * (1 - math.cos(math.pi / 80)) / 2 + 1e-12  # within one step of final
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1], strict=True))
    assert all(a > b for a, b in zip(lrs[warmup:-1], lrs[warmup + 1 :], strict=True))
    assert lrs[warmup + 40] == pytest.approx((base + final) / 2)  # half-way through the cosine


def test_warmup_cosine_has_no_off_by_one():
    # The code's scheduler indexes one past its table on the last iteration; every step here is valid.
    assert warmup_cosine(99, 100, 20, 0.1, 0.001, 0.0) >= 0.0
    with pytest.raises(ValueError):
        warmup_cosine(100, 100, 20, 0.1, 0.001, 0.0)
    assert warmup_cosine(0, 10, 0, 0.1, 0.001, 0.0) == 0.1  # no warm-up: starts at base_lr


def test_learning_rate_rules():
    assert learning_rate(0.1, 64, "code") == pytest.approx(0.025)
    assert learning_rate(0.1, 256, "code") == pytest.approx(0.1)
    assert learning_rate(0.1, 64, "paper") == 0.1
    with pytest.raises(ValueError):
        learning_rate(0.1, 64, "linear")
    assert TrainConfig(world_size=4).scaled_lr(0.1) == pytest.approx(0.025)  # the authors' 4-GPU runs
    assert TrainConfig().scaled_lr(0.001) == pytest.approx(0.001)


def test_paper_preset():
    model_config, train_config = paper_preset()
    assert model_config.recon_head == "mlp" and model_config.temperature == 2.0
    assert (train_config.lr_rule, train_config.clip_grad_norm, train_config.weight_decay) == (
        "paper",
        1.0,
        1e-5,
    )
    assert (train_config.recon_loss, train_config.include_query) == ("squared", False)
    assert (train_config.epochs, train_config.batch_size, train_config.recon_weight) == (100, 256, 0.2)


# ---------------------------------------------------------------------------------------------------------
# Training samples


def clustered_features(n_images: int, clusters: int, dim: int, noise: float, width: int, seed: int):
    """Unit vectors scattered around cluster centres, exact neighbour lists (self first), cluster ids."""
    rng = np.random.default_rng(seed)
    cluster = rng.permutation(np.arange(n_images) % clusters)
    features = rng.normal(size=(clusters, dim))[cluster] + noise * rng.normal(size=(n_images, dim))
    features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    neighbours = np.argsort(-(features @ features.T), axis=1, kind="stable")[:, :width]
    assert np.array_equal(neighbours[:, 0], np.arange(n_images))
    return features, neighbours, cluster


@pytest.mark.parametrize(("K", "L"), [(3, 4), (4, 2)])
def test_training_samples_of_two_backbones_against_numpy(K, L):
    first = clustered_features(6, 2, 5, 0.5, width=5, seed=0)
    second = clustered_features(5, 2, 5, 0.5, width=4, seed=1)
    samples = TrainingSamples(*zip(first, second, strict=True))
    assert len(samples) == 11
    sample_ids = torch.tensor([1, 7, 10, 0])
    affinity, labels = samples.batch(sample_ids, K, L, "cpu")
    assert affinity.shape == (4, K, L) and labels.shape == (4, K) and labels.dtype == torch.bool
    for row, sample in enumerate(sample_ids.tolist()):
        features, neighbours, cluster = first if sample < 6 else second
        image = sample if sample < 6 else sample - 6
        tokens, anchors = neighbours[image, :K], neighbours[image, :L]
        np.testing.assert_allclose(affinity[row].numpy(), features[tokens] @ features[anchors].T, rtol=1e-6)
        np.testing.assert_array_equal(labels[row].numpy(), cluster[tokens] == cluster[image])
        assert labels[row, 0]


def test_training_samples_restricted_to_some_queries():
    first = clustered_features(6, 2, 5, 0.5, width=5, seed=0)
    second = clustered_features(5, 2, 5, 0.5, width=4, seed=1)
    samples = TrainingSamples(*zip(first, second, strict=True), queries=[[4, 1], [3]])
    assert len(samples) == 3
    affinity, labels = samples.batch(torch.tensor([2, 0, 1]), 3, 4, "cpu")
    for row, (features, neighbours, cluster, image) in enumerate([(*second, 3), (*first, 4), (*first, 1)]):
        tokens, anchors = neighbours[image, :3], neighbours[image, :4]
        np.testing.assert_allclose(affinity[row].numpy(), features[tokens] @ features[anchors].T, rtol=1e-6)
        np.testing.assert_array_equal(labels[row].numpy(), cluster[tokens] == cluster[image])
    with pytest.raises(ValueError, match="query indices outside"):
        TrainingSamples(*zip(first, strict=True), queries=[[6]])


def test_training_samples_validation():
    features, neighbours, cluster = clustered_features(6, 2, 5, 0.5, width=3, seed=0)
    with pytest.raises(ValueError, match="outside"):
        TrainingSamples([features], [neighbours + 1], [cluster])
    with pytest.raises(ValueError, match="same"):
        TrainingSamples([features], [neighbours], [cluster[:5]])
    with pytest.raises(ValueError, match="columns"):
        TrainingSamples([features], [neighbours], [cluster]).batch(torch.tensor([0]), 4, 3, "cpu")


# ---------------------------------------------------------------------------------------------------------
# Training loop

TINY_MODEL = CSAConfig(anchors=16, hidden=32, heads=4, input_dropout=0.0, dropout=0.0, attn_dropout=0.0, drop_path=0.0)
TINY_TRAINING = TrainConfig(epochs=20, warmup_epochs=1, batch_size=32, lr=0.1, lr_rule="paper", K_train=16)


@pytest.fixture(scope="module")
def synthetic_samples() -> TrainingSamples:
    """320 images in 20 clusters; about a third of each 16-neighbour list shares the query's cluster."""
    return TrainingSamples(*zip(clustered_features(320, 20, 16, 1.5, width=16, seed=0), strict=True))


def all_samples_loss(model: CSAReranker, samples: TrainingSamples) -> float:
    affinity, labels = samples.batch(torch.arange(len(samples)), 16, 16, "cpu")
    with torch.no_grad():
        return contrastive_loss(model.eval()(affinity), labels, 2.0).item()


def test_training_lowers_the_loss(synthetic_samples, tmp_path):
    messages = []
    model_path = train(TINY_MODEL, TINY_TRAINING, synthetic_samples, tmp_path, "cpu", messages.append, False)
    assert model_path == tmp_path / "model.pt"
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert list(log["epoch"]) == list(range(1, 21))
    assert log["total"].iloc[-1] < 0.9 * log["total"].iloc[0]
    np.testing.assert_allclose(log["total"], log["contrastive"] + 0.2 * log["reconstruction"], rtol=1e-6)

    torch.manual_seed(TINY_TRAINING.seed)  # train() builds its model right after seeding, so this is its init
    initial = all_samples_loss(CSAReranker(TINY_MODEL), synthetic_samples)
    trained = load_model(model_path, "cpu")
    assert not trained.training
    assert all_samples_loss(trained, synthetic_samples) < initial - 0.1

    content = torch.load(model_path, weights_only=True)
    assert content["config"] == asdict(TINY_MODEL)

    plot_loss_curve(tmp_path / "train_log.csv", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resumed_training_ends_with_the_same_weights(synthetic_samples, tmp_path):
    model_config = replace(TINY_MODEL, dropout=0.1, drop_path=0.1)  # RNG-consuming layers must resume too
    train_config = replace(TINY_TRAINING, epochs=2, warmup_epochs=1)
    quiet = dict(log=lambda message: None, progress=False)
    uninterrupted = train(model_config, train_config, synthetic_samples, tmp_path / "a", "cpu", **quiet)

    messages = []
    stopped = train(
        model_config,
        train_config,
        synthetic_samples,
        tmp_path / "b",
        "cpu",
        messages.append,
        progress=False,
        until_epoch=1,
    )
    assert stopped == tmp_path / "b" / "checkpoint-last.pt" and not (tmp_path / "b" / "model.pt").exists()
    resumed = train(
        model_config, train_config, synthetic_samples, tmp_path / "b", "cpu", messages.append, progress=False
    )
    assert any("resuming" in message for message in messages)

    expected = torch.load(uninterrupted, weights_only=True)["state_dict"]
    actual = torch.load(resumed, weights_only=True)["state_dict"]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    columns = ["epoch", "lr", "contrastive", "reconstruction", "total"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a" / "train_log.csv")[columns],
        pd.read_csv(tmp_path / "b" / "train_log.csv")[columns],
    )


def test_checkpoint_of_other_configs_is_not_resumed(synthetic_samples, tmp_path):
    train_config = replace(TINY_TRAINING, epochs=2)
    quiet = dict(log=lambda message: None, progress=False)
    train(TINY_MODEL, train_config, synthetic_samples, tmp_path, "cpu", **quiet, until_epoch=1)
    messages = []
    train(
        TINY_MODEL,
        replace(train_config, seed=1),
        synthetic_samples,
        tmp_path,
        "cpu",
        messages.append,
        progress=False,
        until_epoch=1,
    )
    assert any("other configurations" in message for message in messages)
    assert len(pd.read_csv(tmp_path / "train_log.csv")) == 1


def test_finished_or_foreign_checkpoint_trains_every_epoch_again(synthetic_samples, tmp_path):
    """A job that runs again after a finished training (forced, or new code or inputs) trains from scratch."""
    train_config = replace(TINY_TRAINING, epochs=2)
    quiet = dict(log=lambda message: None, progress=False)
    first = torch.load(train(TINY_MODEL, train_config, synthetic_samples, tmp_path, "cpu", **quiet), weights_only=True)
    for identity in ({}, {"code": "another digest"}):
        messages = []
        train(TINY_MODEL, train_config, synthetic_samples, tmp_path, "cpu", messages.append, False, identity=identity)
        assert not any("resuming" in message for message in messages)
        assert sum(message.startswith("epoch ") for message in messages) == 2, messages
        assert list(pd.read_csv(tmp_path / "train_log.csv")["epoch"]) == [1, 2]
    again = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first["state_dict"][name], again[name]) for name in again)  # CPU: the same weights


def test_corrupt_checkpoint_is_set_aside(synthetic_samples, tmp_path):
    train_config = replace(TINY_TRAINING, epochs=2)
    quiet = dict(log=lambda message: None, progress=False)
    train(TINY_MODEL, train_config, synthetic_samples, tmp_path, "cpu", **quiet, until_epoch=1)
    checkpoint = tmp_path / "checkpoint-last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated, as by a full disk outside atomic_path
    messages = []
    train(TINY_MODEL, train_config, synthetic_samples, tmp_path, "cpu", messages.append, progress=False)
    warning = next(message for message in messages if "cannot be read" in message)
    assert str(checkpoint) in warning and "checkpoint-last.pt.corrupt" in warning
    assert (tmp_path / "checkpoint-last.pt.corrupt").stat().st_size == 1000
    assert list(pd.read_csv(tmp_path / "train_log.csv")["epoch"]) == [1, 2]
    assert (tmp_path / "model.pt").exists()


def test_load_model_rejects_other_files(tmp_path):
    not_csa = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, not_csa)
    with pytest.raises(ValueError, match="other.pt"):
        load_model(not_csa)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_model(garbage)
    mismatched = tmp_path / "mismatched.pt"
    state_dict = CSAReranker(TINY_MODEL).state_dict()
    torch.save({"config": asdict(replace(TINY_MODEL, hidden=64)), "state_dict": state_dict}, mismatched)
    with pytest.raises(ValueError, match="mismatched.pt"):
        load_model(mismatched)


def test_training_with_the_papers_settings(synthetic_samples, tmp_path):
    """The paper's side of every switch (MLP head, squared loss, Eq. 6, clipping) trains and reloads."""
    paper_model, paper_training = paper_preset()
    model_config = replace(paper_model, anchors=16, hidden=32, heads=4)
    train_config = replace(paper_training, epochs=2, warmup_epochs=1, batch_size=32, K_train=16)
    model_path = train(model_config, train_config, synthetic_samples, tmp_path, "cpu", lambda m: None, False)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert np.all(np.isfinite(log[["contrastive", "reconstruction", "total"]].to_numpy()))
    assert load_model(model_path).config == model_config


# ---------------------------------------------------------------------------------------------------------
# Data-parallel training (torchrun, gloo on the CPU) through the training stage


def write_training_inputs(folder, n_images=96, clusters=8, dim=16, width=16):
    """The training stage's inputs: a rSfM120k-style database pickle, descriptors and neighbour lists."""
    import pickle

    from csa_rerank import h5io

    features, neighbours, cluster = clustered_features(n_images, clusters, dim, 1.0, width=width, seed=3)
    db = {
        split: {"cids": [f"{split}{i}" for i in range(n_images)], "cluster": cluster.tolist()}
        for split in ("train", "val")
    }
    (folder / "db.pkl").write_bytes(pickle.dumps(db))
    h5io.write_arrays(folder / "features.h5", {"train": features, "val": features})
    h5io.write_arrays(folder / "neighbours.h5", {"train": neighbours, "val": neighbours})
    return folder / "db.pkl", folder / "features.h5", folder / "neighbours.h5"


def run_training_stage(inputs, out_dir, processes):
    from csa_rerank import stages

    db_file, features_file, neighbours_file = inputs
    out_dir.mkdir(exist_ok=True)
    reranker = asdict(replace(TINY_MODEL, attn_dropout=0.0))
    training = {**asdict(replace(TINY_TRAINING, epochs=3, warmup_epochs=1, batch_size=16)), "code_world_size": 4}
    training.pop("world_size")
    return stages.train(
        db_file=str(db_file),
        feature_files=[str(features_file)],
        neighbour_files=[str(neighbours_file)],
        reranker=reranker,
        training=training,
        model_path=str(out_dir / "model.pt"),
        summary_path=str(out_dir / "summary.json"),
        log_csv=str(out_dir / "train_log.csv"),
        curve_png=str(out_dir / "loss.png"),
        use_gpu=False,
        processes=processes,
        threads=processes,
    )


def test_training_stage_trains_again_when_run_again_and_never_beside_another(tmp_path, caplog):
    """What ``--forcerun train`` runs: all epochs again; and a training whose run/ another process trains in is
    refused before it reads anything."""
    from test_run_lock import hold_lock

    inputs = write_training_inputs(tmp_path)
    run_training_stage(inputs, tmp_path / "model", processes=1)
    caplog.clear()
    with caplog.at_level("INFO", logger="csa_rerank"):
        run_training_stage(inputs, tmp_path / "model", processes=1)
    assert "end of a finished training" in caplog.text and "resuming" not in caplog.text
    assert [line.split(":")[0] for line in caplog.messages if line.startswith("epoch ")] == ["epoch 1/3", "epoch 2/3",
                                                                                          "epoch 3/3"]  # fmt: skip
    holder = hold_lock(tmp_path / "model" / "run")
    try:
        with pytest.raises(RuntimeError, match=f"process {holder.pid} on "):
            run_training_stage(inputs, tmp_path / "model", processes=1)
    finally:
        holder.kill()
        holder.wait()
    assert list(pd.read_csv(tmp_path / "model" / "run" / "train_log.csv")["epoch"]) == [1, 2, 3]


@pytest.mark.e2e
def test_two_gloo_processes_give_the_weights_of_one_process(tmp_path):
    inputs = write_training_inputs(tmp_path)
    single = run_training_stage(inputs, tmp_path / "one", processes=1)
    double = run_training_stage(inputs, tmp_path / "two", processes=2)
    assert (single["processes"], double["processes"]) == (1, 2)
    assert single["n_samples"] == double["n_samples"] == 96

    expected = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    actual = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    assert expected.keys() == actual.keys()
    torch.manual_seed(TINY_TRAINING.seed)  # train() builds its model right after seeding: its initial weights
    initial = CSAReranker(TINY_MODEL).state_dict()  # the weights moved, so the comparison is not vacuous
    assert max((expected[name] - initial[name]).abs().max().item() for name in expected) > 1e-2
    for name in expected:  # equal up to the rounding of a mean over 16 vs two means over 8
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-5)
    columns = ["epoch", "lr", "contrastive", "reconstruction", "total"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "two" / "train_log.csv")[columns],
        pd.read_csv(tmp_path / "one" / "train_log.csv")[columns],
        rtol=1e-5,
    )
    checkpoint = torch.load(tmp_path / "two" / "run" / "checkpoint-last.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # each process's random state, for an exact resume
