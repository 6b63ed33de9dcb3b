"""The CSA re-ranker: a small transformer encoder over affinity sequences (paper Sec. 3.1, authors' model).

Forward pass, with B sequences of T tokens (token 0 = the query, tokens 1..T-1 = its candidates), L anchors::

    affinity [B, T, L] -> input dropout -> Linear(L, d) -> dropout    (no positional embedding, no CLS token)
        -> depth x pre-LN block:  x = x + DropPath(Attn(LN(x)));  x = x + DropPath(MLP(LN(x)))
        -> z [B, T, d]                                                (no final LayerNorm)
    scores [B, T-1] = cos(z_0, z_j), j = 1..T-1                       (paper Eq. 10)
    recon  [B, T, L] = reconstruction head(z)                         (compared with the input, Eq. 8)

Without positional embeddings every layer treats each token alike, so the model is permutation-equivariant
over tokens and accepts any T; only L (the input width) is fixed by the weights.  With ``depth = 0`` the
encoder is just the input projection, the paper's "no self-attention" ablation (Fig. 2a).

Paper vs the authors' released code, and the switch that selects each (defaults = what the code ran):

- reconstruction head ("MLP" in Fig. 1 and Eq. 8): a two-layer MLP with GELU in the paper, a single
  Linear(d, L) in the code -> ``CSAConfig.recon_head = "mlp"`` (paper, d -> d -> L) or ``"linear"`` (code).
- reconstruction loss: the paper's squared error vs the code's clamped Euclidean distance between
  L2-normalised vectors -> ``TrainConfig.recon_loss = "squared"`` or ``"distance"``.
- contrastive loss: Eq. 6 sums over the candidates only; the code also counts the query's own token (as a
  positive, in numerator and denominator) -> ``TrainConfig.include_query`` (False or True).
- learning rate: "0.1" in the paper; the code scales it by per-process batch / 256, i.e. 0.025 in the
  4-GPU runs -> ``TrainConfig.lr_rule = "paper"`` or ``"code"`` (with ``TrainConfig.world_size``).
- gradient clipping: 1.0 in the README, none in the code -> ``TrainConfig.clip_grad_norm`` (1.0 or 0).
- weight decay: 1e-5 in the paper, 1e-6 in the scripts -> ``TrainConfig.weight_decay``.
- schedule length: the README's "200 epoch schedule" vs 100 epochs (20 of warm-up) in the scripts and the
  log -> ``TrainConfig.epochs`` / ``TrainConfig.warmup_epochs``.
- data augmentation: the paper's "new scheme" is, in the code, pooling the training samples of several
  backbones -> the list of backbones given to :class:`csa_rerank.training.TrainingSamples`.
- positives: "relevant images" in the paper, same rSfM120k cluster id in the code (the only labels there are).
- Eq. 5 writes a post-norm residual ``S' = S' + LN(MHA(S'))``; the code (timm ViT blocks) is pre-LN, the only
  form implemented here because it is what produced the published numbers.
- Fig. 2b finds d = 1024 best, yet the paper's settings and the code use d = 768 -> ``CSAConfig.hidden``.

:func:`csa_rerank.training.paper_preset` returns the paper's side of every switch at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from csa_rerank.atomic import atomic_path

RECON_HEADS = ("linear", "mlp")


@dataclass(frozen=True)
class CSAConfig:
    """Architecture of the re-ranker; the defaults are those of the authors' training and test scripts."""

    anchors: int = 512  # L: length of an affinity vector = model input width
    hidden: int = 768  # d: transformer width
    depth: int = 2  # number of encoder blocks (0 = projection only)
    heads: int = 12  # attention heads (head width = hidden / heads = 64)
    mlp_ratio: float = 4.0  # MLP width = mlp_ratio * hidden
    qkv_bias: bool = True
    input_dropout: float = 0.1  # on the raw affinities ("sim_drop")
    dropout: float = 0.1  # after the input projection, in the MLP and after the attention output projection
    attn_dropout: float = 0.1  # on the attention probabilities
    drop_path: float = 0.1  # stochastic depth: block i drops with linspace(0, drop_path, depth)[i]
    recon_head: str = "linear"  # "linear" (code: Linear(d, L)) or "mlp" (paper: d -> d -> L with GELU)
    temperature: float = 2.0  # tau of the contrastive loss (hard-coded in the code, stated in the paper)

    def __post_init__(self) -> None:
        if self.recon_head not in RECON_HEADS:
            raise ValueError(f"recon_head={self.recon_head!r}; choose one of {', '.join(RECON_HEADS)}")
        if self.depth > 0 and self.hidden % self.heads != 0:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.anchors < 1 or self.hidden < 1 or self.depth < 0:
            raise ValueError(f"bad sizes: anchors={self.anchors}, hidden={self.hidden}, depth={self.depth}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


ATTENTION_BLOCK_BYTES = 4 * 2**20  # score block of explicit_attention in eager mode: a few heads' [T, T] at a time


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v, written out: q, k, v [B, heads, T, d_head] -> [B, heads, T, d_head].

    The same function as ``F.scaled_dot_product_attention`` without dropout, for bf16 inference on the CPU:
    there torch's fused kernel runs at fp32 speed whatever the dtype (~180 GFLOP/s on the benchmark machine),
    while batched matmuls run at bf16 matmul speed (~650-750 GFLOP/s).  Softmax accumulates in fp32
    internally and returns the input dtype.

    In eager mode the (B x heads) score matrices are formed a few at a time (at most ``ATTENTION_BLOCK_BYTES``,
    which stays in cache; all [B, heads, T, T] at once is 2.3x slower at T = 1537).  When traced
    (:mod:`csa_rerank.onednn_graph`), one matmul-scale-softmax-matmul chain over all heads: the pattern that
    oneDNN Graph fuses into its SDPA kernel.
    """
    if torch.jit.is_tracing():
        return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
    B, H, T, d_head = q.shape
    q, k, v = (t.reshape(B * H, T, d_head) for t in (q * scale, k, v))
    out = torch.empty_like(q)
    step = max(1, ATTENTION_BLOCK_BYTES // (T * T * q.element_size()))
    for start in range(0, B * H, step):
        block = slice(start, start + step)
        torch.matmul(torch.softmax(q[block] @ k[block].transpose(-2, -1), dim=-1), v[block], out=out[block])
    return out.reshape(B, H, T, d_head)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of a sample with probability ``drop_prob``.

    ``x`` is [B, ...]; kept samples are scaled by 1 / (1 - drop_prob) so the expectation is unchanged.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * keep / keep_prob


class SelfAttention(nn.Module):
    """Multi-head self-attention (Eq. 2-4) without mask: [B, T, d] -> [B, T, d]."""

    def __init__(self, hidden: int, heads: int, qkv_bias: bool, attn_dropout: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = (hidden // heads) ** -0.5  # as the code (and SDPA's default)
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=qkv_bias)
        self.out = nn.Linear(hidden, hidden)  # W_M of Eq. 3
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_dropout(self.out(self.attend(x)))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The heads' outputs before the output projection, concatenated: x [B, T, d] -> [B, T, d]."""
        B, T, d = x.shape
        # [B, T, 3d] -> [B, T, 3, heads, d/heads] -> [3, B, heads, T, d/heads]
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu" and not self.training:
            x = explicit_attention(q, k, v, self.scale)
        else:
            dropout_p = self.attn_dropout if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=self.scale)
        return x.transpose(1, 2).reshape(B, T, d)  # concatenate the heads


class FeedForward(nn.Module):
    """Position-wise MLP, Linear(d, r*d) -> GELU -> Dropout -> Linear(r*d, d) -> Dropout; shape-preserving."""

    def __init__(self, hidden: int, mlp_hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as timm's default
        self.fc2 = nn.Linear(mlp_hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(x)))))


class EncoderBlock(nn.Module):
    """Pre-LN block, x + DropPath(Attn(LN(x))) then x + DropPath(MLP(LN(x))): [B, T, d] -> [B, T, d]."""

    def __init__(self, config: CSAConfig, drop_path_prob: float):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.norm1 = nn.LayerNorm(config.hidden)
        self.attn = SelfAttention(config.hidden, config.heads, config.qkv_bias, config.attn_dropout, config.dropout)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.mlp = FeedForward(config.hidden, int(config.hidden * config.mlp_ratio), config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_prob, self.training)


def cosine_to_query(z: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every token with token 0 (the query): [B, T, d] -> [B, T], column 0 = 1.

    Computed in float32 whatever the autocast dtype of ``z``, so that close scores keep their order.
    """
    z = F.normalize(z.float(), dim=-1)
    return (z * z[:, :1]).sum(dim=-1)


class CSAReranker(nn.Module):
    """Transformer encoder refining affinity sequences; see the module docstring for the forward pass."""

    def __init__(self, config: CSAConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else CSAConfig()
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.projection = nn.Linear(config.anchors, config.hidden)  # W_p of Sec. 3.1
        self.projection_dropout = nn.Dropout(config.dropout)
        drop_path_probs = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.blocks = nn.ModuleList(EncoderBlock(config, p) for p in drop_path_probs)
        if config.recon_head == "linear":
            self.reconstruction_head = nn.Sequential(nn.Linear(config.hidden, config.anchors))
        else:
            self.reconstruction_head = nn.Sequential(
                nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.anchors)
            )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # Cut at +-2 in absolute value (timm's default), i.e. +-100 std: practically untruncated.
            nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        """Refined tokens: affinity [B, T, L] -> z [B, T, d] (input dropout is active in training mode)."""
        x = self.embed(affinity)
        for block in self.blocks:
            x = block(x)
        return x

    def embed(self, affinity: torch.Tensor) -> torch.Tensor:
        """Input tokens: affinity [B, T, L] -> input dropout -> Linear(L, d) -> dropout -> x [B, T, d]."""
        if affinity.shape[-1] != self.config.anchors:
            raise ValueError(f"affinity has {affinity.shape[-1]} anchors, not {self.config.anchors}")
        return self.projection_dropout(self.projection(self.input_dropout(affinity)))

    def scores(self, affinity: torch.Tensor) -> torch.Tensor:
        """Re-ranking scores (Eq. 10): affinity [B, T, L] -> cos(z_0, z_j), j = 1..T-1, [B, T-1] float32."""
        return cosine_to_query(self(affinity))[:, 1:]

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """Map refined tokens back to affinity space: z [B, T, d] -> [B, T, L]."""
        return self.reconstruction_head(z)


# ----------------------------------------------------------------------------------------------------------
# Model files: ``{"config": asdict(CSAConfig), "state_dict": {name: tensor}}``, loadable with weights_only=True


def save_model(model: CSAReranker, path: str | Path) -> None:
    """Write ``model``'s config and weights (on the CPU) to ``path``, through a temporary name."""
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as temporary:
        torch.save({"config": asdict(model.config), "state_dict": state_dict}, temporary)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> CSAReranker:
    """Load a model file written by :func:`save_model` (the training's ``model.pt``), in eval mode on ``device``.

    Raises:
        ValueError: naming ``path``, if the file is not a CSA model file or its weights do not fit its config.
    """
    path = Path(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors of many kinds: report them all with the file name
        raise ValueError(f"{path} is not a CSA model file (weights_only loading failed): {error}") from error
    if not isinstance(content, dict) or set(content) != {"config", "state_dict"}:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} is not a CSA model file: expected keys config, state_dict; found {found}")
    try:
        model = CSAReranker(CSAConfig(**content["config"]))
        model.load_state_dict(content["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} is not a valid CSA model file: {error}") from error
    return model.to(device).eval()
