"""Training of the CSA re-ranker: losses (Eq. 6-9), optimiser groups, learning-rate schedule, samples, loop.

What the authors' code ran is the default of every setting; :func:`paper_preset` gives what the paper writes
(the differences are listed in :mod:`csa_rerank.model`).  The loop runs in one process or, started by
``torchrun`` (see :mod:`csa_rerank.distributed`), data-parallel over several: every process draws the same
shuffled order and takes its slice of each global batch, and DDP averages the gradients, so the update is the
one of a single process with the whole batch (the authors ran 4-GPU DDP with a global batch of 256).  The loop
is resumable: the full state is saved after every epoch, so a run can be cut into several calls
(``until_epoch``) or killed and restarted.
"""

from __future__ import annotations

import csv
import functools
import math
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from csa_rerank.affinity import train_affinity
from csa_rerank.atomic import atomic_path, save_figure
from csa_rerank.model import CSAConfig, CSAReranker, cosine_to_query, save_model

LR_RULES = ("code", "paper")
RECON_LOSSES = ("distance", "squared")
CHECKPOINT_NAME = "checkpoint-last.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "train_log.csv"
# One row per epoch: the lr of its last iteration, the losses averaged over its iterations, its duration.
LOG_COLUMNS = ("epoch", "lr", "contrastive", "reconstruction", "total", "seconds", "samples_per_s")
# The code's clamp of the squared distance between unit vectors, which bounds its square root to [0.01, 100].
DISTANCE_CLAMP = (1e-4, 1e4)


# ----------------------------------------------------------------------------------------------------------
# Losses


def contrastive_loss(
    z: torch.Tensor, labels: torch.Tensor, temperature: float, include_query: bool = True
) -> torch.Tensor:
    """Contrastive loss of Eq. 6, mean over the batch.

    Per sample: ``-log( sum_j y_j exp(cos(z_0, z_j) / tau) / sum_j exp(cos(z_0, z_j) / tau) )``.

    Args:
        z: [B, T, d] refined tokens, token 0 = the query.
        labels: [B, T] bool or 0/1, ``labels[:, 0]`` = 1 (the query is its own positive).
        temperature: tau.
        include_query: True (the code) sums over all T tokens, so the query's self term e^{1/tau} is in the
            numerator and the denominator; False (the paper's Eq. 6) sums over j >= 1 only.  Then a sample
            with no positive candidate has no defined loss and is left out of the mean (zero loss if no sample
            has one).
    Returns:
        scalar float32 tensor.
    """
    logits = cosine_to_query(z) / temperature  # [B, T]
    positive = labels.bool()
    if not include_query:
        logits, positive = logits[:, 1:], positive[:, 1:]
        has_positive = positive.any(dim=1)
        if not has_positive.any():
            return logits.sum() * 0.0  # keeps the graph connected, so backward() still works
        logits, positive = logits[has_positive], positive[has_positive]
    # -log(num / den) = logsumexp(all) - logsumexp(positives); stable for any tau.
    log_numerator = torch.logsumexp(logits.masked_fill(~positive, -math.inf), dim=1)
    log_denominator = torch.logsumexp(logits, dim=1)
    return (log_denominator - log_numerator).mean()


def reconstruction_loss(affinity: torch.Tensor, recon: torch.Tensor, kind: str = "distance") -> torch.Tensor:
    """Reconstruction ("MSE") loss of Eq. 8 between input affinities and reconstructions, mean over tokens.

    Args:
        affinity: [B, T, L] input affinities, before the input dropout.
        recon: [B, T, L] output of :meth:`CSAReranker.reconstruct`.
        kind: ``"distance"`` (the code): ``sqrt(clamp(||a/||a|| - r/||r||||^2, 1e-4, 1e4))``, a Euclidean
            distance between unit vectors (0.01 .. 2); ``"squared"`` (the paper): ``||a - r||^2``, the squared
            norm of Eq. 8. Both are averaged over the B x T tokens rather than summed as in Eq. 8, so that
            lambda does not have to change with K or the batch size.  Note that the "squared" value is a sum
            over the L entries, i.e. L times ``nn.MSELoss``.
    Returns:
        scalar float32 tensor.
    """
    affinity, recon = affinity.float(), recon.float()
    if kind == "distance":
        difference = F.normalize(affinity, dim=-1) - F.normalize(recon, dim=-1)
        return difference.pow(2).sum(dim=-1).clamp(*DISTANCE_CLAMP).sqrt().mean()
    if kind == "squared":
        return (affinity - recon).pow(2).sum(dim=-1).mean()
    raise ValueError(f"reconstruction loss kind={kind!r}; choose one of {', '.join(RECON_LOSSES)}")


# ----------------------------------------------------------------------------------------------------------
# Optimisation


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """SGD parameter groups: weight decay on every parameter with ndim >= 2 (all Linear weights, including the
    reconstruction head's, as in the code), none on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float, final_lr: float
) -> float:
    """Learning rate of iteration ``step`` (0-based, < total_steps).

    Linear warm-up from ``warmup_lr`` (step 0) towards ``base_lr`` (reached at step ``warmup_steps``), then a
    half-cosine from ``base_lr`` to ``final_lr`` over the remaining steps (the last step is within one step's
    decrement of ``final_lr``).  The code's scheduler returns the value of the *next* step and runs past its
    table on the very last iteration; here step i simply gets value i.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} outside [0, total_steps={total_steps}]")
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def learning_rate(lr: float, batch_size: int, rule: str) -> float:
    """Learning rate actually used: ``"code"`` = lr x per-process batch / 256 (the code's scaling, with the
    batch after DDP division: 0.1 x 64 / 256 = 0.025 in the 4-GPU scripts); ``"paper"`` = lr as written."""
    if rule == "code":
        return lr * batch_size / 256
    if rule == "paper":
        return lr
    raise ValueError(f"lr rule={rule!r}; choose one of {', '.join(LR_RULES)}")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults are those of the authors' scripts (see :func:`paper_preset`)."""

    epochs: int = 100
    warmup_epochs: int = 20
    batch_size: int = 256  # global batch
    lr: float = 0.1  # before the lr rule
    lr_rule: str = "code"  # "code": x per-process batch / 256; "paper": as written
    warmup_lr: float = 0.001  # before the lr rule
    final_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 1e-6
    clip_grad_norm: float = 0.0  # 0 = no clipping
    recon_weight: float = 0.2  # lambda of Eq. 9 (the code's alpha)
    recon_loss: str = "distance"  # "distance" (code) or "squared" (paper)
    include_query: bool = True  # the query's self term in the contrastive loss (code) or not (Eq. 6)
    K_train: int = 512  # tokens per training sample (the image itself + K_train - 1 neighbours)
    amp: bool = True  # fp16 autocast + GradScaler; only takes effect on CUDA
    seed: int = 0
    world_size: int = 1  # processes the global batch is divided over, for the "code" lr rule (4 = as run)

    def __post_init__(self) -> None:
        if self.lr_rule not in LR_RULES:
            raise ValueError(f"lr_rule={self.lr_rule!r}; choose one of {', '.join(LR_RULES)}")
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss={self.recon_loss!r}; choose one of {', '.join(RECON_LOSSES)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} outside [0, epochs={self.epochs}]")
        if self.batch_size % self.world_size != 0:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by world_size={self.world_size}")

    def scaled_lr(self, lr: float) -> float:
        """``lr`` after the configured lr rule."""
        return learning_rate(lr, self.batch_size // self.world_size, self.lr_rule)

    def schedule(self, steps_per_epoch: int) -> Callable[[int], float]:
        """The learning rate of each iteration (:func:`warmup_cosine` over the whole run, after the lr rule)."""
        return functools.partial(
            warmup_cosine,
            total_steps=self.epochs * steps_per_epoch,
            warmup_steps=self.warmup_epochs * steps_per_epoch,
            base_lr=self.scaled_lr(self.lr),
            warmup_lr=self.scaled_lr(self.warmup_lr),
            final_lr=self.scaled_lr(self.final_lr),
        )


def paper_preset() -> tuple[CSAConfig, TrainConfig]:
    """The settings as the paper (and README) write them: lr 0.1 as is, gradient clipping 1.0, weight decay
    1e-5, a two-layer GELU MLP reconstruction head, a squared-error reconstruction loss and Eq. 6's
    contrastive loss without the query's own term."""
    return (
        CSAConfig(recon_head="mlp"),
        TrainConfig(lr_rule="paper", clip_grad_norm=1.0, weight_decay=1e-5, recon_loss="squared", include_query=False),
    )


def configs_from_settings(reranker: dict, training: dict) -> tuple[CSAConfig, TrainConfig]:
    """The model and training configurations of the pipeline's ``reranker`` and ``training`` config sections
    (``anchors`` = L in ``reranker``; ``code_world_size``, the processes the "code" lr rule divides the batch
    over, becomes ``world_size``; ``processes`` only says how to run, not what)."""
    settings = {key: value for key, value in training.items() if key != "processes"}
    world_size = settings.pop("code_world_size", 1)
    return CSAConfig(**reranker), TrainConfig(**settings, world_size=world_size)


# ----------------------------------------------------------------------------------------------------------
# Training samples


class TrainingSamples:
    """Training samples of one or several backbones (the paper's data augmentation: their union).

    A sample is a query image described with one backbone's features: its tokens are its first K neighbours
    and its anchors its first L neighbours under that backbone (position 0 = itself).  By default every image
    of every backbone is a query (as in the authors' code); ``queries`` restricts that, e.g. to the labelled
    images of a partly labelled database, whose other images still appear as (negative) neighbours.

    Args:
        features: per backbone, [N, D] float32 unit-norm descriptors (same D for all backbones).
        neighbours: per backbone, [N, >= max(K, L)] int64 neighbour lists of that backbone, position 0 = the
            image itself.
        clusters: per backbone, [N] cluster id of each image (positives share the query's cluster).
        queries: per backbone, the indices of the images used as queries; None = all.
    """

    def __init__(
        self,
        features: Sequence[torch.Tensor | np.ndarray],
        neighbours: Sequence[torch.Tensor | np.ndarray],
        clusters: Sequence[torch.Tensor | np.ndarray],
        queries: Sequence[torch.Tensor | np.ndarray] | None = None,
    ):
        if not (len(features) == len(neighbours) == len(clusters) >= 1):
            raise ValueError("give features, neighbours and clusters for the same (>= 1) number of backbones")
        if queries is None:
            queries = [torch.arange(len(feats)) for feats in features]
        if len(queries) != len(features):
            raise ValueError(f"queries are given for {len(queries)} backbones, features for {len(features)}")
        all_features, all_neighbours, all_clusters, all_queries = [], [], [], []
        offset = 0
        for b, (feats, neigh, clust) in enumerate(zip(features, neighbours, clusters, strict=True)):
            feats = torch.as_tensor(feats, dtype=torch.float32)
            neigh = torch.as_tensor(neigh, dtype=torch.int64)
            clust = torch.as_tensor(clust, dtype=torch.int64)
            n = feats.shape[0]
            if neigh.ndim != 2 or neigh.shape[0] != n or clust.shape != (n,):
                raise ValueError(
                    f"backbone {b}: features {tuple(feats.shape)}, neighbours {tuple(neigh.shape)} and "
                    f"clusters {tuple(clust.shape)} do not describe the same {n} images"
                )
            if neigh.numel() and (neigh.min() < 0 or neigh.max() >= n):
                raise ValueError(f"backbone {b}: neighbour indices outside [0, {n})")
            if all_features and feats.shape[1] != (dim := all_features[0].shape[1]):
                raise ValueError(f"backbone {b}: {feats.shape[1]}-d descriptors, backbone 0 has {dim}-d")
            query = torch.as_tensor(queries[b], dtype=torch.int64)
            if query.numel() and (query.min() < 0 or query.max() >= n):
                raise ValueError(f"backbone {b}: query indices outside [0, {n})")
            all_features.append(feats)
            all_neighbours.append(neigh + offset)  # rows of the concatenated feature matrix
            all_clusters.append(clust)
            all_queries.append(query + offset)
            offset += n
        self.features = torch.cat(all_features)  # [sum N, D]
        width = min(n.shape[1] for n in all_neighbours)  # cut longer lists to a common width to stack them
        self.neighbours = torch.cat([n[:, :width] for n in all_neighbours])  # [sum N, width]
        self.clusters = torch.cat(all_clusters)  # [sum N]
        self.queries = torch.cat(all_queries)  # [number of samples], rows of the concatenated images

    def __len__(self) -> int:
        return self.queries.shape[0]

    def to(self, device: torch.device | str) -> TrainingSamples:
        """Move the stored tensors to ``device`` (in place; returns self), so batches are gathered there."""
        self.features = self.features.to(device)
        self.neighbours = self.neighbours.to(device)
        self.clusters = self.clusters.to(device)
        self.queries = self.queries.to(device)
        return self

    def batch(
        self, sample_ids: torch.Tensor, K: int, L: int, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Affinities and labels of a batch of samples, built on ``device``.

        Args:
            sample_ids: [B] int64 sample indices in [0, len(self)).
        Returns:
            affinity [B, K, L] float32 (row r = neighbour r vs the first L neighbours) and labels [B, K] bool
            (``labels[:, j]`` = neighbour j is in the query's cluster; ``labels[:, 0]`` is True).

        The code shuffles rows 1..K-1 of each sample; that is not done here because it changes nothing: the
        model has no positional embedding (permutation-equivariant over tokens) and both losses are sums over
        rows.
        """
        width = max(K, L)
        if self.neighbours.shape[1] < width:
            raise ValueError(f"neighbour lists have {self.neighbours.shape[1]} columns, max(K, L) = {width}")
        rows = self.neighbours[self.queries[sample_ids.to(self.queries.device)], :width]  # [B, width]
        labels = self.clusters[rows[:, :K]] == self.clusters[rows[:, :1]]  # [B, K]
        # Gather the descriptors where they are stored, move only those, and build the affinity on the device.
        descriptors = self.features[rows].to(device)  # [B, width, D]
        B = descriptors.shape[0]
        local_rows = torch.arange(B * width, device=descriptors.device).view(B, width)
        affinity = train_affinity(descriptors.reshape(B * width, -1), local_rows, K, L)
        return affinity, labels.to(device)


# ----------------------------------------------------------------------------------------------------------
# Training loop


class _TrainingForward(torch.nn.Module):
    """The model's two training outputs in one ``forward``, so that DDP sees every parameter used:
    affinity [B, T, L] -> (z [B, T, d], reconstruction [B, T, L])."""

    def __init__(self, model: CSAReranker):
        super().__init__()
        self.model = model

    def forward(self, affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.model(affinity)
        return z, self.model.reconstruct(z)


def _process_group() -> tuple[int, int]:
    """(rank, number of processes) of the running ``torch.distributed`` job, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state(sampler: torch.Generator) -> dict:
    """All random states the loop consumes, as plain types / tensors (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": sampler.get_state(),
        "python": random.getstate(),
        "numpy": {"name": name, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached},
    }


def _set_rng_state(state: dict, sampler: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler.set_state(state["sampler"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )


def _save_atomically(obj: dict, path: Path) -> None:
    """torch.save through a temporary name, so a killed run never leaves a truncated file."""
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def _log_rows(log_csv: Path) -> list[dict]:
    if not log_csv.exists():
        return []
    with log_csv.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_log(log_csv: Path, rows: list[dict]) -> None:
    """The whole log, rewritten through a temporary name (one row per epoch: a few kB at most)."""
    with atomic_path(log_csv) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _truncate_log(log_csv: Path, last_epoch: int) -> None:
    """Drop the log rows of epochs after ``last_epoch`` (written after the checkpoint a run resumes from)."""
    if log_csv.exists():
        _write_log(log_csv, [row for row in _log_rows(log_csv) if int(row["epoch"]) <= last_epoch])


def _append_log(log_csv: Path, row: dict) -> None:
    _write_log(log_csv, [*_log_rows(log_csv), row])


@dataclass
class _Run:
    """What a training run updates: the model, its training forward (DDP-wrapped with several processes), the
    optimiser, the AMP grad scaler and the generator of the batch order (the same in every process)."""

    model: CSAReranker
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: torch.Generator

    def checkpoint(self, configs: dict, epoch: int, step: int, rng_states: list[dict]) -> dict:
        """The full state after ``epoch`` epochs (``step`` iterations), ``rng_states`` one entry per process."""
        return {
            "configs": configs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "rng": rng_states,
        }


def _start_run(model_config: CSAConfig, train_config: TrainConfig, device: torch.device) -> _Run:
    """A fresh run: every random stream seeded with ``train_config.seed``, the same initial weights in every
    process, then a dropout stream of each process's own (``seed + rank``)."""
    rank, processes = _process_group()
    random.seed(train_config.seed)
    np.random.seed(train_config.seed)
    torch.manual_seed(train_config.seed)
    sampler = torch.Generator().manual_seed(train_config.seed)  # the same batch order in every process
    model = CSAReranker(model_config).to(device)  # the same initial weights in every process
    torch.manual_seed(train_config.seed + rank)  # but a dropout stream of its own
    forward = _TrainingForward(model)
    if processes > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    groups = parameter_groups(model, train_config.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=0.0, momentum=train_config.momentum, nesterov=False)
    scaler = torch.amp.GradScaler("cuda", enabled=train_config.amp and device.type == "cuda")
    return _Run(model, forward, optimizer, scaler, sampler)


# what an unreadable checkpoint raises: a truncated zip (RuntimeError), a cut or garbled pickle, a missing entry
CORRUPT_CHECKPOINT_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError)


def _read_checkpoint(path: Path, log: Callable[[str], None]) -> dict | None:
    """The checkpoint at ``path``, None if there is none or it cannot be read; process 0 sets an unreadable one
    aside as ``<name>.corrupt`` (kept for inspection), so that the rerun after this one does not meet it again."""
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint["configs"], checkpoint["epoch"]  # noqa: B018 - a checkpoint without them is no checkpoint
        return checkpoint
    except CORRUPT_CHECKPOINT_ERRORS as error:
        if _process_group()[0] == 0:
            path.replace(path.with_name(path.name + ".corrupt"))
        log(f"WARNING: {path} cannot be read ({type(error).__name__}: {error}); set aside as {path.name}.corrupt, "
            "training starts from scratch")  # fmt: skip
        return None


def _resumable(checkpoint: dict, configs: dict, epochs: int, path: Path, log: Callable[[str], None]) -> bool:
    """Whether to continue from ``checkpoint``: only a run of the same configurations (settings, code, inputs)
    that stopped before its last epoch.  A finished one is never continued: a training job that runs although its
    checkpoint is final was forced or found its outputs stale (Snakemake deletes them before it runs a job), and
    either way asks for the training again."""
    if checkpoint["configs"] != configs:
        log(f"{path} was saved with other configurations, code or input files; starting from scratch")
        return False
    if checkpoint["epoch"] >= epochs:
        log(f"{path} is the end of a finished training, which this job was asked to redo; starting from scratch")
        return False
    return True


def _load_state(run: _Run, checkpoint: dict, seed: int, path: Path, log: Callable[[str], None]) -> tuple[int, int]:
    """Load ``checkpoint`` into ``run``; returns its (epoch, step)."""
    rank, processes = _process_group()
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scaler"]:  # empty when saved without AMP
        run.scaler.load_state_dict(checkpoint["scaler"])
    start_epoch, step = checkpoint["epoch"], checkpoint["step"]
    rng_states = checkpoint["rng"]
    if len(rng_states) == processes:
        _set_rng_state(rng_states[rank], run.sampler)
    else:  # the batches stay those of an uninterrupted run; only the dropout draws change
        _set_rng_state(rng_states[0], run.sampler)
        torch.manual_seed(seed + rank + 1000 * start_epoch)
        log(
            f"{path} was saved by {len(rng_states)} processes, resuming with {processes}: "
            "dropout random streams are re-seeded, so weights will differ from an uninterrupted run"
        )
    return start_epoch, step


def _restore(
    run: _Run, out_dir: Path, configs: dict, train_config: TrainConfig, log: Callable[[str], None]
) -> tuple[int, int]:
    """Load the checkpoint of ``out_dir`` into ``run`` if :func:`_resumable`; returns the (epoch, step) to
    continue from, (0, 0) for a fresh start (whose stale log process 0 deletes)."""
    rank, _ = _process_group()
    checkpoint_path, log_csv = out_dir / CHECKPOINT_NAME, out_dir / LOG_NAME
    checkpoint = _read_checkpoint(checkpoint_path, log)
    start_epoch, step = 0, 0
    if checkpoint is not None and _resumable(checkpoint, configs, train_config.epochs, checkpoint_path, log):
        start_epoch, step = _load_state(run, checkpoint, train_config.seed, checkpoint_path, log)
        if rank == 0:
            _truncate_log(log_csv, start_epoch)
        log(f"resuming from {checkpoint_path} after epoch {start_epoch}")
    if start_epoch == 0 and rank == 0:
        log_csv.unlink(missing_ok=True)
    return start_epoch, step


def train_one_epoch(
    run: _Run,
    samples: TrainingSamples,
    lr_at: Callable[[int], float],
    step: int,
    epoch: int,
    model_config: CSAConfig,
    train_config: TrainConfig,
    device: torch.device,
    progress: bool = True,
) -> tuple[list[float], float]:
    """One pass over shuffled global batches, from iteration ``step`` (learning rate ``lr_at(step)``).

    Process r of P computes its slice of each global batch; the losses are averaged over the epoch's iterations
    and the processes.  Returns the means (contrastive, reconstruction, total) and the last learning rate.
    """
    rank, processes = _process_group()
    local_batch = train_config.batch_size // processes
    steps_per_epoch = len(samples) // train_config.batch_size
    K, L = train_config.K_train, model_config.anchors
    use_amp = train_config.amp and device.type == "cuda"
    run.model.train()
    order = torch.randperm(len(samples), generator=run.sampler)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # contrastive, reconstruction, total
    bar = tqdm(range(steps_per_epoch), f"epoch {epoch + 1}/{train_config.epochs}", disable=not progress or rank > 0)
    for i in bar:
        lr = lr_at(step + i)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        first = i * train_config.batch_size + rank * local_batch
        affinity, labels = samples.batch(order[first : first + local_batch], K, L, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            z, recon = run.forward(affinity)
        contrastive = contrastive_loss(z, labels, model_config.temperature, train_config.include_query)
        reconstruction = reconstruction_loss(affinity, recon, train_config.recon_loss)
        loss = contrastive + train_config.recon_weight * reconstruction
        # With AMP the grad scaler skips steps with inf/NaN gradients (as in the code); without it, stop.
        if not use_amp and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step + i}")

        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if train_config.clip_grad_norm > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), train_config.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()

        sums += torch.stack([contrastive.detach(), reconstruction.detach(), loss.detach()]).double()
        if progress and (i % 10 == 0 or i == steps_per_epoch - 1):
            bar.set_postfix(loss=f"{sums[2].item() / (i + 1):.4f}", lr=f"{lr:.2e}")
    if processes > 1:  # the means over the global batches
        dist.all_reduce(sums)
        sums /= processes
    return (sums / steps_per_epoch).tolist(), lr


def _save_checkpoint(run: _Run, out_dir: Path, configs: dict, epoch: int, step: int, row: dict) -> None:
    """Process 0 appends the epoch's log row and saves the full state, random streams of every process
    included; every process waits until the checkpoint is complete."""
    rank, processes = _process_group()
    rng_states = [_rng_state(run.sampler)]
    if processes > 1:
        rng_states = [None] * processes
        dist.all_gather_object(rng_states, _rng_state(run.sampler))
    if rank == 0:
        _append_log(out_dir / LOG_NAME, row)
        _save_atomically(run.checkpoint(configs, epoch, step, rng_states), out_dir / CHECKPOINT_NAME)
    if processes > 1:
        dist.barrier()  # the checkpoint is complete before any process goes on (or returns)


def train(
    model_config: CSAConfig,
    train_config: TrainConfig,
    samples: TrainingSamples,
    out_dir: str | Path,
    device: torch.device | str,
    log: Callable[[str], None] = print,
    progress: bool = True,
    until_epoch: int | None = None,
    identity: dict | None = None,
) -> Path:
    """Train a CSA re-ranker; resumable, data-parallel when called in every process of a ``torch.distributed``
    job.

    SGD with momentum on :func:`parameter_groups`, per-iteration :func:`warmup_cosine` learning rate, shuffled
    batches (drop_last) from a generator seeded with ``train_config.seed``, fp16 AMP on CUDA.  After every
    epoch (:func:`train_one_epoch`) the full state goes to ``out_dir/checkpoint-last.pt`` and one row to
    ``out_dir/train_log.csv``.  A call finding an unfinished checkpoint saved with the same configurations and
    ``identity`` continues from it, so a run killed or stopped early (``until_epoch``) and started again ends with
    the same weights as an uninterrupted one (bit-exact on CPU); an unreadable checkpoint is set aside.

    With P processes, process r computes samples [r B/P, (r+1) B/P) of each global batch of B and DDP averages
    the gradients; the losses are means over samples, so this is the single-process update up to float
    rounding.  Dropout draws differ (each process has its own stream, seeded with ``seed + r``), so with
    dropout the two runs are equal in distribution only.  Process 0 writes the files; every process returns
    the same path.

    Args:
        samples: moved to ``device`` (in place) before the first batch.
        until_epoch: stop once this many epochs (counted from the start of the run) are done; None = all.
        identity: what else must be equal for a checkpoint to be continued (the training stage: the code's digest
            and the input files' stamps), saved with the configurations.  A finished checkpoint is never
            continued: a second call with the same arguments trains again.
    Returns:
        ``out_dir/model.pt`` (config + weights) when all epochs are done, else ``out_dir/checkpoint-last.pt``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    configs = {"model_config": asdict(model_config), "train_config": asdict(train_config), "identity": identity or {}}
    rank, processes = _process_group()
    if train_config.batch_size % processes != 0:
        raise ValueError(f"batch_size={train_config.batch_size} is not divisible by {processes} processes")
    run = _start_run(model_config, train_config, device)
    steps_per_epoch = len(samples) // train_config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(samples)} samples give no full batch of {train_config.batch_size}")
    start_epoch, step = _restore(run, out_dir, configs, train_config, log)
    samples = samples.to(device)
    lr_at = train_config.schedule(steps_per_epoch)
    stop_epoch = train_config.epochs if until_epoch is None else min(until_epoch, train_config.epochs)
    for epoch in range(start_epoch, stop_epoch):
        started = time.perf_counter()
        means, lr = train_one_epoch(run, samples, lr_at, step, epoch, model_config, train_config, device, progress)
        step += steps_per_epoch
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "contrastive": means[0],
            "reconstruction": means[1],
            "total": means[2],
            "seconds": seconds,
            "samples_per_s": steps_per_epoch * train_config.batch_size / seconds,
        }
        _save_checkpoint(run, out_dir, configs, epoch + 1, step, row)
        log(
            f"epoch {epoch + 1}/{train_config.epochs}: loss {means[2]:.4f} (contrastive {means[0]:.4f}, "
            f"reconstruction {means[1]:.4f}), lr {lr:.3e}, {seconds:.1f} s"
        )
    if stop_epoch < train_config.epochs:
        return out_dir / CHECKPOINT_NAME
    if rank == 0:
        save_model(run.model, out_dir / MODEL_NAME)
        log(f"wrote {out_dir / MODEL_NAME}")
    if processes > 1:
        dist.barrier()
    return out_dir / MODEL_NAME


def plot_loss_curve(log_csv: str | Path, png_path: str | Path) -> None:
    """Plot the per-epoch losses and the learning rate of ``train_log.csv`` into a PNG."""
    # imported here, not by every job that loads a model; the object API needs no pyplot backend (Agg)
    from matplotlib.figure import Figure

    log = pd.read_csv(log_csv)
    figure = Figure(figsize=(10, 4), layout="constrained")
    losses, lrs = figure.subplots(1, 2)
    for column in ("contrastive", "reconstruction", "total"):
        losses.plot(log["epoch"], log[column], label=column)
    losses.set(xlabel="epoch", ylabel="mean loss over the epoch", title="training losses")
    losses.legend()
    losses.grid(True)
    lrs.plot(log["epoch"], log["lr"])
    lrs.set(xlabel="epoch", ylabel="learning rate (last iteration)", title="learning rate")
    lrs.grid(True)
    save_figure(figure, png_path, dpi=100)
