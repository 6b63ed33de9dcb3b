"""bf16 CSA inference through oneDNN Graph: same scores as eager bf16, fused attention, cache, fallbacks."""

import logging

import numpy as np
import pytest
import torch

import csa_rerank.onednn_graph as onednn_graph
from csa_rerank.model import CSAConfig, CSAReranker
from csa_rerank.onednn_graph import fused_cpu_encoder
from csa_rerank.rerank import csa_scores

needs_onednn_graph = pytest.mark.skipif(
    not onednn_graph.onednn_graph_available(), reason="no oneDNN Graph bf16 in this PyTorch build or CPU"
)


@pytest.fixture
def model() -> CSAReranker:
    torch.manual_seed(0)
    return CSAReranker(CSAConfig(anchors=16, hidden=32, heads=4)).eval()


def random_affinity(Q: int, T: int, L: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(Q, T, L, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@needs_onednn_graph
@pytest.mark.parametrize("shape", [(1, 9), (3, 21)])
def test_fused_scores_match_eager_bf16_and_fp32(model, shape):
    affinity = random_affinity(*shape, 16)
    fp32 = csa_scores(model, affinity, precision="fp32")
    eager = csa_scores(model, affinity, precision="bf16", onednn_graph=False)
    for _ in range(3):  # TorchScript profiles a new shape first and runs the fused graph from the second call on
        fused = csa_scores(model, affinity, precision="bf16")
    assert fused.shape == fp32.shape and fused.dtype == np.float32
    np.testing.assert_allclose(fused, fp32, atol=0.03)
    np.testing.assert_allclose(fused, eager, atol=0.03)
    assert not torch.jit.onednn_fusion_enabled()  # the process-wide switch is restored


@needs_onednn_graph
def test_the_attention_runs_as_one_fused_partition(model):
    encoder = fused_cpu_encoder(model, "auto", torch.device("cpu"))
    affinity = random_affinity(2, 11, 16).bfloat16()
    for _ in range(2):
        encoder(affinity)
    with onednn_graph.onednn_fusion():
        graph = str(encoder.module.graph_for(affinity))
    partitions = graph.split("with prim::oneDNNFusionGroup")[1:]
    attention = [p for p in partitions if "aten::softmax" in p]
    # One partition per block holding Q K^T, the scale, the softmax and P V (oneDNN's SDPA pattern).
    assert len(attention) == model.config.depth
    assert all(p.count("aten::matmul") == 2 and "aten::mul" in p for p in attention)
    assert any("aten::gelu" in p and "aten::linear" in p for p in partitions)  # fc1 + GELU


@needs_onednn_graph
def test_the_fused_copy_follows_the_models_weights(model):
    device = torch.device("cpu")
    encoder = fused_cpu_encoder(model, "bf16", device)
    assert fused_cpu_encoder(model, "auto", device) is encoder  # built once
    affinity = random_affinity(2, 9, 16)
    before = csa_scores(model, affinity, precision="bf16")
    torch.manual_seed(5)
    model.load_state_dict(CSAReranker(model.config).state_dict())  # new weights, same parameter tensors
    assert fused_cpu_encoder(model, "bf16", device) is not encoder
    for _ in range(3):
        after = csa_scores(model, affinity, precision="bf16")
    expected = csa_scores(model, affinity, precision="fp32")
    assert np.abs(after - before).max() > 0.1
    np.testing.assert_allclose(after, expected, atol=0.03)


def test_other_precisions_and_devices_run_the_eager_model(model):
    cpu = torch.device("cpu")
    assert fused_cpu_encoder(model, "fp32", cpu) is None
    assert fused_cpu_encoder(model, "bf16", cpu, onednn_graph=False) is None
    assert fused_cpu_encoder(model, "auto", torch.device("cuda")) is None  # fp16 autocast on CUDA


@pytest.mark.parametrize("failure", ["unavailable", "trace fails"])
def test_falls_back_to_eager_bf16_with_a_warning(model, monkeypatch, caplog, failure):
    if failure == "unavailable":
        monkeypatch.setattr(onednn_graph, "onednn_graph_available", lambda: False)
    else:
        monkeypatch.setattr(onednn_graph, "onednn_graph_available", lambda: True)

        def broken_trace(*args, **kwargs):
            raise RuntimeError("TorchScript is gone")

        monkeypatch.setattr(torch.jit, "trace", broken_trace)
    affinity = random_affinity(2, 9, 16)
    with caplog.at_level(logging.WARNING, logger="csa_rerank.onednn_graph"):
        scores = csa_scores(model, affinity, precision="bf16")
    assert "eager bf16 instead" in caplog.text
    assert fused_cpu_encoder(model, "bf16", torch.device("cpu")) is None  # remembered: no retry per batch
    np.testing.assert_array_equal(scores, csa_scores(model, affinity, precision="bf16", onednn_graph=False))


@needs_onednn_graph
def test_a_wrong_affinity_width_is_rejected(model):
    encoder = fused_cpu_encoder(model, "bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="12 anchors, not 16"):
        encoder(random_affinity(1, 5, 12))
