"""The CSA transformer: shapes, permutation equivariance, depth 0, parameter count, initialisation."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import csa_rerank.model as model_module
from csa_rerank.model import CSAConfig, CSAReranker, drop_path, explicit_attention

TINY = CSAConfig(anchors=16, hidden=32, depth=2, heads=4)


def tiny_model(**changes) -> CSAReranker:
    torch.manual_seed(0)
    return CSAReranker(replace(TINY, **changes))


def random_affinity(B: int, T: int, L: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(B, T, L, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("recon_head", ["linear", "mlp"])
def test_shapes(recon_head):
    model = tiny_model(recon_head=recon_head).eval()
    affinity = random_affinity(3, 9, 16)
    z = model(affinity)
    assert z.shape == (3, 9, 32)
    assert model.scores(affinity).shape == (3, 8)
    assert model.reconstruct(z).shape == (3, 9, 16)


def test_scores_are_cosines_between_refined_query_and_candidates():
    model = tiny_model().eval()
    affinity = random_affinity(2, 6, 16)
    z = model(affinity)
    expected = torch.stack(
        [torch.stack([F.cosine_similarity(z[b, 0], z[b, j], dim=0) for j in range(1, 6)]) for b in range(2)]
    )
    torch.testing.assert_close(model.scores(affinity), expected)


def test_permuting_candidates_permutes_scores_identically():
    model = tiny_model().eval()
    affinity = random_affinity(2, 12, 16)
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    permuted = torch.cat([affinity[:, :1], affinity[:, 1:][:, permutation]], dim=1)
    with torch.no_grad():
        scores, permuted_scores = model.scores(affinity), model.scores(permuted)
    assert not torch.equal(scores, scores[:, permutation])  # the check below is not vacuous
    torch.testing.assert_close(permuted_scores, scores[:, permutation], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens", [1, 2, 5, 40])
def test_model_built_for_L_accepts_any_number_of_tokens(tokens):
    model = tiny_model().eval()
    assert model.scores(random_affinity(2, tokens, 16)).shape == (2, tokens - 1)


def test_wrong_number_of_anchors_is_rejected():
    with pytest.raises(ValueError, match="anchors"):
        tiny_model()(random_affinity(1, 4, 15))


def test_depth_zero_is_the_input_projection_only():
    model = tiny_model(depth=0).eval()
    assert len(model.blocks) == 0
    affinity = random_affinity(2, 7, 16)
    torch.testing.assert_close(model(affinity), model.projection(affinity))
    assert model.scores(affinity).shape == (2, 6)


def test_default_config_has_the_authors_parameter_count():
    model = CSAReranker()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model) == 14_963_456
    assert count(model.projection) == 512 * 768 + 768 == 393_984
    assert [count(block) for block in model.blocks] == [7_087_872, 7_087_872]
    assert count(model.reconstruction_head) == 768 * 512 + 512 == 393_728


def test_paper_mlp_head_is_two_linear_layers_with_gelu():
    model = tiny_model(recon_head="mlp")
    first, activation, last = model.reconstruction_head
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (32, 32, 32, 16)
    assert isinstance(activation, torch.nn.GELU)


def test_initialisation():
    model = CSAReranker()
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert qkv.weight.mean().abs().item() < 1e-3
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(parameter == 0), name
        elif "norm" in name:
            assert torch.all(parameter == 1), name


def test_stochastic_depth_rates_grow_linearly_over_the_blocks():
    model = CSAReranker(CSAConfig(depth=3, drop_path=0.2))
    assert [block.drop_path_prob for block in model.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_drop_path_drops_whole_samples_and_rescales_the_kept_ones():
    x = torch.ones(2000, 3, 4)
    torch.manual_seed(0)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all((per_sample == 0).all(dim=1) | (per_sample == 1 / 0.75).all(dim=1))
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.04)
    assert torch.equal(drop_path(x, 0.25, training=False), x)


def test_dropout_acts_in_training_mode_only():
    model = tiny_model()
    affinity = random_affinity(2, 5, 16)
    model.train()
    assert not torch.equal(model(affinity), model(affinity))
    model.eval()
    assert torch.equal(model(affinity), model(affinity))


@pytest.mark.parametrize(
    "changes", [{"recon_head": "conv"}, {"hidden": 30, "heads": 4}, {"temperature": 0.0}, {"depth": -1}]
)
def test_invalid_configs_are_rejected(changes):
    with pytest.raises(ValueError):
        CSAConfig(**changes)


@pytest.mark.parametrize("block_bytes", [1, 3 * 7 * 7 * 4, 2**30])  # one head, three heads, all at a time
def test_explicit_attention_is_sdpa(monkeypatch, block_bytes):
    monkeypatch.setattr(model_module, "ATTENTION_BLOCK_BYTES", block_bytes)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(explicit_attention(q, k, v, 8**-0.5), expected, rtol=1e-5, atol=1e-6)
    by_hand = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v
    torch.testing.assert_close(explicit_attention(q, k, v, 8**-0.5), by_hand, rtol=1e-5, atol=1e-6)


def test_bf16_inference_on_cpu_uses_the_explicit_attention_and_matches_fp32(monkeypatch):
    calls = []
    monkeypatch.setattr(model_module, "explicit_attention", lambda *a: calls.append(1) or explicit_attention(*a))
    model = tiny_model(depth=2).eval()
    affinity = random_affinity(2, 33, 16)
    with torch.no_grad():
        fp32 = model.scores(affinity)
        assert calls == []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.scores(affinity)
    assert len(calls) == 2  # one per block
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=2e-2)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.scores(affinity)  # training mode keeps SDPA (attention dropout)
    assert len(calls) == 2
