"""What the methods share: L2 normalisation, the scores of a ranked list, re-sorting a list, the minibatch loop
and the weights file of the learned ones.

All arrays are query-major: ``ranks`` [Q, N'] holds database indices, best first (N' <= N).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

SCORE_BLOCK_BYTES = 256 * 2**20  # bound on one block of full score rows in :func:`list_scores`


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """float32 CPU tensor sharing memory with ``x`` when it already is a contiguous float32 array."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows (last dimension) scaled to unit L2 norm; a zero row stays zero."""
    return torch.nn.functional.normalize(x, dim=-1)


def list_scores(vectors: torch.Tensor, db: torch.Tensor, ranks: np.ndarray) -> torch.Tensor:
    """Inner products of each query vector with the database items of its list.

    Args:
        vectors: [Q, D] one (expanded) vector per query; db: [N, D]; ranks: [Q, N'] database indices.
    Returns:
        [Q, N'] float32, entry (i, j) = vectors[i] · db[ranks[i, j]].

    Whole score rows [b, N] are computed ``b`` queries at a time (b·N·4 bytes <= SCORE_BLOCK_BYTES), then the
    list's columns are gathered: the same work as a first-round search, and no [Q, N', D] gather.
    """
    ranks_t = torch.as_tensor(ranks, dtype=torch.int64)
    rows = max(1, SCORE_BLOCK_BYTES // (4 * db.shape[0]))
    out = torch.empty(ranks_t.shape, dtype=torch.float32)
    for start in range(0, len(vectors), rows):
        block = vectors[start : start + rows] @ db.T  # [b, N]
        out[start : start + rows] = torch.take_along_dim(block, ranks_t[start : start + rows], dim=1)
    return out


def sort_list(ranks: np.ndarray, scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each row of ``ranks`` [Q, N'] reordered by descending ``scores`` [Q, N']; ties keep their list order."""
    order = torch.sort(torch.as_tensor(scores), dim=1, descending=True, stable=True).indices.numpy()
    return np.take_along_axis(np.asarray(ranks), order, axis=1)


def train_minibatches(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n_samples: int,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Train ``epochs`` passes of shuffled minibatches (the last incomplete one dropped) and return the mean loss
    of every epoch, [epochs] float64.  ``batch_loss`` maps a batch's sample ids [B] to its scalar loss."""
    batches = max(1, n_samples // batch_size)
    losses = torch.zeros(epochs, dtype=torch.float64)
    for epoch in range(epochs):
        order = torch.randperm(n_samples, generator=generator)
        for batch in range(batches):
            loss = batch_loss(order[batch * batch_size : (batch + 1) * batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[epoch] += loss.item() / batches
    return losses


def fitted_weights(config, model: torch.nn.Module, losses: torch.Tensor) -> dict:
    """A learned method's weights file: ``{"config": dict, "state_dict": {name: tensor}, "losses": tensor}``,
    plain tensors and builtins only, so that ``torch.load(weights_only=True)`` reads it."""
    state_dict = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return {"config": asdict(config), "state_dict": state_dict, "losses": losses}
