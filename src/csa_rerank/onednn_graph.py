"""bf16 CSA inference on the CPU as fused oneDNN Graph partitions (TorchScript trace + freeze + oneDNN fusion).

Why: in eager mode a bf16 forward pass at K = 1024 on the 2-core benchmark machine spends ~34 ms in
``addmm`` (the weights are re-laid out for oneDNN at every call), ~8.5 ms in per-head attention matmuls,
~6 ms in a separate softmax and ~3.5 ms in copies: 54-57 ms, 1.4x the time of its FLOPs at matmul speed.
Traced, frozen and handed to oneDNN Graph, the same model runs as fused partitions: every linear layer
with prepacked bf16 weights, fc1 with its GELU, the whole attention of all heads (``Q K^T``, scale, softmax,
``P V``) as one oneDNN SDPA kernel, the LayerNorms, and each pair of residual adds: ~47 ms, 1.2x
(docs/benchmarks.md).  What is traced is :func:`csa_rerank.inference.forward_bf16` (blocks in bf16, input projection
and residual stream in fp32, branch outputs relative to the query's token), so the scores are those of the
eager bf16 path up to rounding.

The fused module is a frozen copy of the model, built on first use and rebuilt whenever a parameter of
the model changes (training steps and ``load_state_dict`` bump the parameters' version counters).
TorchScript is deprecated in recent PyTorch: where tracing fails or oneDNN fusion is missing,
:func:`fused_bf16_encoder` returns None and logs why, and the caller runs the eager bf16 path instead.
"""

from __future__ import annotations

import copy
import logging
import warnings
import weakref
from contextlib import contextmanager

import torch

from csa_rerank.inference import forward_bf16, precision_autocast_dtype
from csa_rerank.model import CSAReranker

log = logging.getLogger(__name__)

# model -> (parameter fingerprint, fused encoder); entries go away with their model.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def onednn_graph_available() -> bool:
    """Whether this PyTorch build and CPU can run bf16 models through oneDNN Graph."""
    try:
        return (
            hasattr(torch.jit, "enable_onednn_fusion")
            and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        )
    except (AttributeError, RuntimeError):
        return False


@contextmanager
def onednn_fusion():
    """Turn TorchScript's oneDNN fusion on (a process-wide switch) and restore its previous state on exit.

    Needed while a fused module runs, not only while it is built: TorchScript's profiling executor
    specialises the graph for each new input shape at call time.
    """
    previous = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(previous)


class _ForwardBF16(torch.nn.Module):
    """:func:`csa_rerank.inference.forward_bf16` as a module's forward, for tracing."""

    def __init__(self, model: CSAReranker):
        super().__init__()
        self.model = model

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        return forward_bf16(self.model, affinity)


class FusedBF16Encoder:
    """A frozen, traced copy of :func:`~csa_rerank.inference.forward_bf16`: affinity [B, T, L] -> z [B, T, d] float32.

    The trace records bf16 autocast's casts; freezing folds those of the weights, so the partitions hold bf16
    weights.  Any B and T (TorchScript re-specialises per shape; the first two calls with a new shape are slower).
    """

    def __init__(self, model: CSAReranker):
        self.anchors = model.config.anchors
        traced = _ForwardBF16(copy.deepcopy(model)).eval().requires_grad_(False)
        example = torch.zeros(1, 2, self.anchors)
        with warnings.catch_warnings(), torch.no_grad(), torch.autocast("cpu", enabled=False), onednn_fusion():
            # The trace freezes the input-width check (TracerWarning; checked in __call__ instead) and
            # torch.jit.freeze announces its deprecation (FutureWarning).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.freeze(torch.jit.trace(traced, example, check_trace=False))

    def __call__(self, affinity: torch.Tensor) -> torch.Tensor:
        if affinity.shape[-1] != self.anchors:
            raise ValueError(f"affinity has {affinity.shape[-1]} anchors, not {self.anchors}")
        # An enclosing autocast region must not recast the traced graph, which holds its own casts.
        with torch.no_grad(), torch.autocast("cpu", enabled=False), onednn_fusion():
            return self.module(affinity.float())


def _fingerprint(model: CSAReranker) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def fused_bf16_encoder(model: CSAReranker) -> FusedBF16Encoder | None:
    """The fused bf16 encoder of ``model`` (a CPU model), built once per state of its parameters; None where
    oneDNN Graph cannot run it (logged once per model state)."""
    fingerprint = _fingerprint(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    encoder = None
    if not onednn_graph_available():
        log.warning("oneDNN Graph bf16 is not available in this PyTorch build or CPU: eager bf16 instead")
    else:
        try:
            encoder = FusedBF16Encoder(model)
        except Exception as error:  # any TorchScript failure: the eager path computes the same scores
            log.warning("tracing the CSA model for oneDNN Graph failed (%s): eager bf16 instead", error)
    _CACHE[model] = (fingerprint, encoder)
    return encoder


def fused_cpu_encoder(
    model: CSAReranker, precision: str, device: torch.device, onednn_graph: bool = True
) -> FusedBF16Encoder | None:
    """The oneDNN Graph encoder that :func:`csa_rerank.rerank.csa_scores` runs for bf16 on the CPU; None where it
    runs the eager model (other precisions and devices, ``onednn_graph=False``, or oneDNN Graph unavailable)."""
    if onednn_graph and device.type == "cpu" and precision_autocast_dtype(precision, device) is torch.bfloat16:
        return fused_bf16_encoder(model)
    return None
