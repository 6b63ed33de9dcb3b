"""Low-precision inference (csa_rerank.inference): the bf16 forward pass, query-anchored branch outputs, precisions."""

import pytest
import torch

from csa_rerank.inference import forward_bf16, precision_autocast_dtype, query_anchored_linear
from csa_rerank.model import CSAConfig, CSAReranker


def test_precision_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_autocast_dtype("auto", cpu) is torch.bfloat16
    assert precision_autocast_dtype("auto", cuda) is torch.float16
    assert precision_autocast_dtype("fp32", cpu) is None
    with pytest.raises(ValueError, match="choose one of auto, bf16, fp16, fp32"):
        precision_autocast_dtype("int8", cpu)


def test_bf16_inference_keeps_the_input_projection_and_the_residual_stream_in_fp32():
    torch.manual_seed(0)
    model = CSAReranker(CSAConfig(anchors=16, hidden=32, depth=2, heads=4)).eval()
    affinity = torch.rand(2, 17, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1  # cosines in [-1, 1]
    with torch.no_grad():
        fp32 = model(affinity)
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):
            dtypes[name] = output.dtype

        return hook

    for name in ("projection", "blocks.0.attn.qkv", "blocks.1.mlp.fc2", "blocks.1.norm2"):
        model.get_submodule(name).register_forward_hook(record(name))
    with torch.no_grad():
        z = forward_bf16(model, affinity)
    assert dtypes == {
        "projection": torch.float32,
        "blocks.0.attn.qkv": torch.bfloat16,
        "blocks.1.mlp.fc2": torch.bfloat16,
        "blocks.1.norm2": torch.float32,  # LayerNorm of the fp32 residual stream
    }
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, fp32, rtol=0, atol=0.05)
    assert not torch.equal(z, fp32)  # the blocks did run in bf16


def test_query_anchored_linear_is_the_layer_and_keeps_differences_to_the_query_in_bf16():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    # Tokens 1.. differ from the query's token 0 by ~1e-3 of its size, as the best candidates of a trained model.
    query = torch.randn(1, 1, 64)
    a = query + 1e-3 * torch.randn(1, 9, 64)
    a[:, :1] = query
    with torch.no_grad():
        # In fp32 it is the layer itself: layer(a_0) + W (a - a_0) = W a + b.
        torch.testing.assert_close(query_anchored_linear(layer, a), layer(a), rtol=1e-5, atol=1e-5)
        a = a.bfloat16()
        exact = a.double() @ layer.weight.double().T + layer.bias.double()  # of the bf16 inputs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            anchored = query_anchored_linear(layer, a)
            plain = layer(a).float()
    assert anchored.dtype == torch.float32
    # What the scores depend on: each token's output relative to the query's.  Plain bf16 rounds every output
    # to 2^-9 of its size, independently per token; anchored, the error scales with the ~1e-3 differences.
    exact_difference = exact - exact[:, :1]
    plain_error = ((plain - plain[:, :1]).double() - exact_difference).abs().max()
    anchored_error = ((anchored - anchored[:, :1]).double() - exact_difference).abs().max()
    assert plain_error > 100 * anchored_error
