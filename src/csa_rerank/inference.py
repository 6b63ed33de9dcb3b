"""Low-precision inference of the CSA re-ranker: precision names, and the eager bf16 forward pass.

The architecture (:mod:`csa_rerank.model`) runs in fp32, or under fp16 autocast on CUDA as the authors ran it.
bf16 (the CPU's fast low precision) gets its own forward pass, :func:`forward_bf16`: the same function as the
model's ``forward`` in eval mode, with the affinities, the input projection and the residual stream kept in fp32
and the branch outputs computed relative to the query's token (:func:`query_anchored_linear`), so that the
order of near-tied candidates survives the rounding (docs/benchmarks.md, "Precision and mAP").
:mod:`csa_rerank.onednn_graph` traces this function into fused oneDNN Graph partitions;
:func:`csa_rerank.rerank.csa_scores` picks the path of a precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from csa_rerank.model import CSAReranker, EncoderBlock

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def precision_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of a precision name on a device; None = plain fp32.

    "auto" is fp16 on CUDA (as the authors ran) and bf16 on CPU, where fp16 matmuls are slow or unsupported.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return AUTOCAST_DTYPES[precision]


def query_anchored_linear(layer: nn.Linear, a: torch.Tensor) -> torch.Tensor:
    """``layer(a)`` in bf16, returned in fp32, as ``layer(a_0) + W (a - a_0)`` where a_0 is the query's token.

    ``a`` [B, T, n] (bf16 under autocast) -> [B, T, m] float32.  Why: the scores are cosines with the query's
    token, and a trained model gives its best candidates cosines like 0.99919, 0.99917, 0.99913, so their
    order rests on small differences between near-identical rows.  A bf16 matmul rounds each output to 8 bits
    of mantissa relative to the whole row, independently per row, and these roundings of the branch outputs
    were the main source of order flips against fp32 (docs/benchmarks.md, "Precision and mAP").  Computed on
    the differences to the query's row, the rounding error scales with those differences instead, and the
    rounding of ``layer(a_0)`` is the same for every token.
    """
    anchor = a[:, :1]
    difference = F.linear(a - anchor, layer.weight)
    return difference.float() + layer(anchor).float()


def block_forward_bf16(block: EncoderBlock, x: torch.Tensor) -> torch.Tensor:
    """An encoder block in eval mode under bf16 autocast, residual stream in fp32: x [B, T, d] float32 -> same.

    The same function as ``block.forward``; the two branch outputs that are added to the residual stream
    (attention output projection, fc2) go through :func:`query_anchored_linear`.
    """
    x = x + query_anchored_linear(block.attn.out, block.attn.attend(block.norm1(x)))
    hidden = block.mlp.act(block.mlp.fc1(block.norm2(x)))
    return x + query_anchored_linear(block.mlp.fc2, hidden)


def forward_bf16(model: CSAReranker, affinity: torch.Tensor) -> torch.Tensor:
    """Refined tokens for bf16 inference: affinity [B, T, L] -> z [B, T, d] float32.

    The blocks run under bf16 autocast (their linear layers and attention in bf16); the affinities, the
    input projection (2 % of the FLOPs at L = 512, d = 768) and the residual stream stay in fp32, and with
    them the LayerNorms.  Rounding the affinities (cosines) to bf16 was the largest source of the
    difference to fp32: bf16 keeps 8 bits of mantissa where the authors' fp16 autocast kept 11, and some
    tokens whose residual stream nearly cancels amplify it.  The branch outputs added to the residual
    stream are computed relative to the query's token (:func:`query_anchored_linear`), which halves the
    order flips among the best candidates (docs/benchmarks.md, "Precision and mAP").
    """
    with torch.autocast(affinity.device.type, enabled=False):
        x = model.embed(affinity.float())
    with torch.autocast(affinity.device.type, dtype=torch.bfloat16):
        for block in model.blocks:
            x = block_forward_bf16(block, x)
    return x
