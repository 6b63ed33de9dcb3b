"""Global-descriptor networks in cirtorch's form: a torchvision CNN body, a pooling, L2 normalisation.

Pooling is written as plain functions (:func:`gem`, :func:`mac`, :func:`spoc`, :func:`rmac`) beside thin modules that
only own their parameters (:class:`GeM` holds the learnable exponent ``p``), so the maths can be tested without a
network.

Forward pass of :class:`RetrievalNet` (cirtorch ``ImageRetrievalNet``)::

    image [B, 3, H, W] -> body (conv1 ... layer4, ends with ReLU) -> [B, D, h, w]
                       -> pooling -> [B, D] -> L2N -> (optional whitening Linear(D, D) -> L2N) -> [B, D]

The bodies are torchvision architectures built with ``weights=None``; their weights come from a cirtorch checkpoint
(:func:`load_cirtorch_network`), from an ImageNet checkpoint of the body alone for the off-the-shelf "[O]" networks
(:func:`load_body_checkpoint`), or, in the demo, from torchvision's default random initialisation under a fixed seed.
Checkpoints are read with ``torch.load(weights_only=True)``; the numpy arrays that old cirtorch checkpoints keep in
their meta (precomputed whitening ``Lw``) are admitted through an explicit allow-list (:func:`safe_torch_load`).
"""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from csa_rerank.safe_pickle import NUMPY_GLOBALS

ARCHITECTURES = ("resnet50", "resnet101", "resnet152", "vgg16")
POOLINGS = ("gem", "mac", "spoc", "rmac")
L2N_EPS = 1e-6  # cirtorch's L2N adds eps to the norm, not to its square


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling: ``(mean_{h,w} clamp(x, eps)^p)^(1/p)``; [B, D, H, W] -> [B, D]."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: max over H, W; [B, D, H, W] -> [B, D]."""
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (as a mean, which L2N makes equivalent); [B, D, H, W] -> [B, D]."""
    return x.mean(dim=(-2, -1))


# Region counts R-MAC tries along the longer side of a non-square map at its coarsest level (Tolias et al. 2016).
RMAC_STEPS = (2, 3, 4, 5, 6, 7)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int]]:
    """The square regions of R-MAC on a ``height`` x ``width`` map, as ``(top, left, side)``, level by level.

    Level ``l`` (1 ... ``levels``) has regions of side ``floor(2 min(H, W) / (l + 1))`` on a uniform grid of ``l``
    positions along the shorter side and ``l + extra`` along the longer one (first region at 0, last one flush with
    the far edge, positions in between rounded down).  ``extra`` (0 for a square map) is chosen once: with ``s``
    regions of side ``min(H, W)`` along the longer side (``extra = s - 1``), neighbours would overlap by
    ``1 - (max - min) / ((s - 1) min)`` of their side; the ``s`` of :data:`RMAC_STEPS` closest to ``overlap`` wins
    (the first on a tie).  Regions of side 0 (tiny maps) are skipped.

    The arithmetic is done in float32, operation by operation, as cirtorch's tensors do it: rounding decides ties,
    both of ``s`` and of positions (on a 5 x 9 map, an exact tie of s = 2 and 3, float32 gives 2 but float64 3),
    and the point is to give exactly cirtorch's regions.
    """
    f32 = np.float32
    short, long_ = min(height, width), max(height, width)
    extra_h = extra_w = 0
    if height != width:
        steps = np.asarray(RMAC_STEPS, dtype=f32)
        stride = (f32(1) / (steps - f32(1))) * f32(long_ - short)  # cirtorch: int / tensor = reciprocal * int
        achieved = (f32(short * short) - f32(short) * stride) / f32(short * short)
        extra = int(np.argmin(np.abs(achieved - f32(overlap)))) + 1
        if height < width:
            extra_w = extra
        else:
            extra_h = extra
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        tops = _grid_starts(height, side, level + extra_h)
        lefts = _grid_starts(width, side, level + extra_w)
        regions.extend((top, left, side) for top in tops for left in lefts)
    return regions


def _grid_starts(length: int, side: int, count: int) -> list[int]:
    """First pixels of ``count`` windows of ``side`` spread evenly over ``length`` (float32, as in cirtorch)."""
    if count == 1:
        return [0]
    f32 = np.float32
    centre_offset = math.floor(side / 2 - 1)  # cirtorch rounds start + offset, then removes the offset again
    spacing = f32((length - side) / (count - 1))
    starts = np.floor(f32(centre_offset) + np.arange(count, dtype=f32) * spacing) - centre_offset
    return [int(v) for v in starts]


def rmac(x: torch.Tensor, levels: int = 3, overlap: float = 0.4, eps: float = 1e-6) -> torch.Tensor:
    """Regional maximum activation of convolutions (R-MAC, Tolias et al. 2016) as cirtorch computes it.

    The MAC of the whole map plus the MAC of every region of :func:`rmac_regions`, each L2-normalised
    (``v / (||v|| + eps)``) before the sum; no regional whitening.  [B, D, H, W] -> [B, D] (not normalised: the
    network's L2N follows).  The whole map is counted twice on a square map (it is also level 1's one region).
    """
    v = mac(x)
    v = v / (torch.linalg.vector_norm(v, dim=-1, keepdim=True) + eps)
    for top, left, side in rmac_regions(x.shape[-2], x.shape[-1], levels, overlap):
        r = x[..., top : top + side, left : left + side].amax(dim=(-2, -1))
        v = v + r / (torch.linalg.vector_norm(r, dim=-1, keepdim=True) + eps)
    return v


def l2n(x: torch.Tensor, eps: float = L2N_EPS) -> torch.Tensor:
    """cirtorch's L2 normalisation ``x / (||x|| + eps)`` along the last dimension."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


class GeM(nn.Module):
    """GeM pooling with a learnable exponent (stored as ``p`` of shape [1], as in cirtorch checkpoints)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, p=self.p, eps=self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class RMAC(nn.Module):
    """R-MAC pooling (:func:`rmac`); no parameters."""

    def __init__(self, levels: int = 3, overlap: float = 0.4, eps: float = 1e-6):
        super().__init__()
        self.levels, self.overlap, self.eps = levels, overlap, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmac(x, levels=self.levels, overlap=self.overlap, eps=self.eps)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, overlap={self.overlap}, eps={self.eps}"


def build_body(arch: str) -> tuple[nn.Sequential, int]:
    """The convolutional body of a torchvision architecture (no pooling, no classifier) and its output width."""
    # imported here: torchvision pulls in torch._dynamo (~1 s), a cost every re-ranking job would pay otherwise
    import torchvision

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if arch == "vgg16":
        net = torchvision.models.vgg16(weights=None)
        # cirtorch drops VGG's last max-pool: the body ends with the ReLU of conv5_3.
        return nn.Sequential(*list(net.features.children())[:-1]), 512
    net = getattr(torchvision.models, arch)(weights=None)
    # conv1, bn1, relu, maxpool, layer1..layer4 = cirtorch's features.0 ... features.7
    return nn.Sequential(*list(net.children())[:-2]), 2048


class RetrievalNet(nn.Module):
    """CNN body + pooling + L2N (+ whitening + L2N); maps images [B, 3, H, W] to unit descriptors [B, D]."""

    def __init__(self, body: nn.Module, pool: nn.Module, dim: int, whiten: nn.Linear | None = None):
        super().__init__()
        self.features = body
        self.pool = pool
        self.whiten = whiten
        self.dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = l2n(self.pool(self.features(images)))
        if self.whiten is not None:
            x = l2n(self.whiten(x))
        return x


def build_network(arch: str, pooling: str = "gem", gem_p: float = 3.0, seed: int | None = None) -> RetrievalNet:
    """A retrieval network; with ``seed`` the weights are torchvision's random initialisation under that seed."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if seed is not None:
        # fork_rng keeps the caller's global RNG stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            body, dim = build_body(arch)
    else:
        body, dim = build_body(arch)
    pool = {"gem": lambda: GeM(gem_p), "mac": MAC, "spoc": SPoC, "rmac": RMAC}[pooling]()
    return RetrievalNet(body, pool, dim)


def _numpy_safe_globals() -> list[tuple[object, str]]:
    """:data:`csa_rerank.safe_pickle.NUMPY_GLOBALS` as ``torch.serialization.safe_globals`` takes them: (object,
    "module.name") pairs.

    Old cirtorch checkpoints keep their precomputed whitening as numpy arrays in ``meta['Lw']``; pickles written
    under numpy 1 name ``numpy.core.multiarray._reconstruct``, under numpy 2 ``numpy._core.multiarray._reconstruct``:
    each name is admitted with the object of the installed numpy, so either loads under either numpy.
    """
    allowed = []
    for module, name in NUMPY_GLOBALS:
        for alias in (module, module.replace("numpy._core", "numpy.core"), module.replace("numpy.core", "numpy._core")):
            try:
                with warnings.catch_warnings():  # numpy 2 warns that numpy.core is deprecated
                    warnings.simplefilter("ignore", DeprecationWarning)
                    allowed.append((getattr(importlib.import_module(alias), name), f"{module}.{name}"))
                break
            except (ImportError, AttributeError):  # the other numpy's module name, or a type it lacks
                continue
    return allowed


def safe_torch_load(path, what: str = "a checkpoint"):
    """``torch.load(path, weights_only=True)`` admitting numeric numpy arrays; errors name the file.

    ``weights_only`` means no code from the file can run; the allow-list (:func:`_numpy_safe_globals`) only adds
    numeric numpy arrays and scalars, which old cirtorch checkpoints hold in their meta.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} not found; download it or place it there (docs/data.md)")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"{path}: cannot load as {what} with weights_only=True ({err}); the file is corrupt, "
            "truncated or not a checkpoint: delete it and download it again."
        ) from err


def load_cirtorch_network(path, arch: str, pooling: str = "gem", whitening: bool = False) -> tuple[RetrievalNet, dict]:
    """A network from a cirtorch checkpoint ``{'meta': ..., 'state_dict': ...}`` and its meta.

    The checkpoint is loaded with ``torch.load(weights_only=True)`` (:func:`safe_torch_load`): no code from the file
    can run.  Its keys (``features.*``, ``pool.p``, ``whiten.*``) are exactly this module's, so loading is strict.
    The meta is returned as stored, including a precomputed whitening ``meta['Lw']`` of old checkpoints.
    """
    checkpoint = safe_torch_load(path, "a cirtorch checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RuntimeError(f"{path}: not a cirtorch checkpoint (no 'state_dict')")
    meta = checkpoint.get("meta", {})
    for key, expected in (("architecture", arch), ("pooling", pooling)):
        if key in meta and meta[key] != expected:
            raise ValueError(f"{path}: checkpoint is {key}={meta[key]!r} but the config says {expected!r}")
    net = build_network(arch, pooling)
    if whitening:
        net.whiten = nn.Linear(net.dim, net.dim, bias=True)
    try:
        missing, unexpected = net.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        raise ValueError(f"{path}: checkpoint does not match {arch}/{pooling}/whitening={whitening}: {err}") from err
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match {arch}/{pooling}/whitening={whitening}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return net, meta


# torchvision ResNet children -> their index in the body (cirtorch's ``features.<i>``); 2 and 3 (ReLU, max-pool)
# have no parameters.
_RESNET_CHILDREN = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
# Entries of whole-network state_dicts that are not part of the body: classifiers, pooling, whitening.
_NOT_BODY = ("fc", "classifier", "pool", "whiten", "lwhiten")


def body_state_dict(state: dict, arch: str) -> dict:
    """The entries of ``state`` that make the convolutional body, keyed as :func:`build_body`'s ``nn.Sequential``.

    Layouts accepted:

    - cirtorch's ImageNet feature files (``imagenet-caffe-<arch>-features-<hash>.pth``): the state_dict of the
      network's ``features`` itself, keys ``0.weight``, ``1.running_mean``, ``4.0.conv1.weight``, ... (ResNet) or
      ``0.weight`` ... ``28.bias`` (VGG16), used as they are;
    - ``features.*`` keys (a cirtorch network's state_dict, torchvision's VGG16): the prefix is removed;
    - torchvision's ResNets: ``conv1``, ``bn1``, ``layer1`` ... ``layer4`` become ``0``, ``1``, ``4`` ... ``7``.

    Classifier, pooling and whitening entries (``fc``, ``classifier``, ``pool``, ``whiten``) are dropped; anything
    else is kept so that the strict load reports it.
    """

    def top(key: str) -> str:
        return key.split(".", 1)[0]

    body = {k: v for k, v in state.items() if top(k) not in _NOT_BODY}
    if any(top(k) == "features" for k in body):
        return {(k[len("features.") :] if top(k) == "features" else k): v for k, v in body.items()}
    if arch.startswith("resnet") and "conv1.weight" in body:
        return {
            (f"{_RESNET_CHILDREN[top(k)]}.{k.split('.', 1)[1]}" if top(k) in _RESNET_CHILDREN else k): v
            for k, v in body.items()
        }
    return body


def load_body_checkpoint(path, arch: str, pooling: str = "gem", gem_p: float = 3.0) -> RetrievalNet:
    """An off-the-shelf ("[O]") network: its body from an ImageNet checkpoint, then ``pooling``, no whitening FC.

    The checkpoint is a state_dict of the body in one of the layouts of :func:`body_state_dict` (cirtorch's
    ``imagenet-caffe-resnet101-features-10a101d.pth`` and ``imagenet-caffe-vgg16-features-d369c8e.pth`` are
    state_dicts of ``net.features``), or a cirtorch checkpoint ``{'meta', 'state_dict'}`` whose body is taken.
    Loaded with ``torch.load(weights_only=True)``.  BatchNorm's ``num_batches_tracked`` counters (absent from
    checkpoints older than torch 0.4.1, unused in eval mode) may be missing; every other body weight must be there.
    """
    state = safe_torch_load(path, "an ImageNet body checkpoint")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path}: not a state_dict of tensors (nor a checkpoint holding one)")
    net = build_network(arch, pooling, gem_p)
    try:
        missing, unexpected = net.features.load_state_dict(body_state_dict(state, arch), strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        raise ValueError(f"{path}: does not hold a {arch} body: {err}") from err
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not hold a {arch} body: missing {sorted(missing)[:5]} ({len(missing)} in all), "
            f"unexpected {sorted(unexpected)[:5]} ({len(unexpected)} in all)"
        )
    return net


def build_configured_network(spec: dict, checkpoint: str | None = None, body_checkpoint: str | None = None):
    """The network a config entry describes, with its input mean/std (None: ImageNet's) and checkpoint meta.

    A cirtorch checkpoint (``checkpoint``), an ImageNet body with the configured pooling (``body_checkpoint``, the
    off-the-shelf "[O]" networks), or random weights from ``seed``.
    """
    pooling = spec.get("pooling", "gem")
    if checkpoint:
        net, meta = load_cirtorch_network(checkpoint, spec["arch"], pooling, spec.get("whitening", False))
        return net, meta.get("mean", None), meta.get("std", None), meta
    if body_checkpoint:
        return load_body_checkpoint(body_checkpoint, spec["arch"], pooling, spec.get("gem_p", 3.0)), None, None, {}
    net = build_network(spec["arch"], pooling, spec.get("gem_p", 3.0), seed=spec["seed"])
    return net, None, None, {}
