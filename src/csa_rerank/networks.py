"""Global-descriptor networks in cirtorch's form: a torchvision CNN body, a pooling, L2 normalisation.

Pooling is written as plain functions (:func:`gem`, :func:`mac`, :func:`spoc`) beside thin modules that only own
their parameters (:class:`GeM` holds the learnable exponent ``p``), so the maths can be tested without a network.

Forward pass of :class:`RetrievalNet` (cirtorch ``ImageRetrievalNet``)::

    image [B, 3, H, W] -> body (conv1 ... layer4, ends with ReLU) -> [B, D, h, w]
                       -> pooling -> [B, D] -> L2N -> (optional whitening Linear(D, D) -> L2N) -> [B, D]

The bodies are torchvision architectures built with ``weights=None``; their weights come either from a cirtorch
checkpoint or, in the demo, from torchvision's default random initialisation under a fixed seed.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

ARCHITECTURES = ("resnet50", "resnet101", "resnet152", "vgg16")
POOLINGS = ("gem", "mac", "spoc")
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


def build_body(arch: str) -> tuple[nn.Sequential, int]:
    """The convolutional body of a torchvision architecture (no pooling, no classifier) and its output width."""
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
    pool = {"gem": lambda: GeM(gem_p), "mac": MAC, "spoc": SPoC}[pooling]()
    return RetrievalNet(body, pool, dim)


def load_cirtorch_network(path, arch: str, pooling: str = "gem", whitening: bool = False) -> tuple[RetrievalNet, dict]:
    """A network from a cirtorch checkpoint ``{'meta': ..., 'state_dict': ...}`` and its meta.

    The checkpoint is loaded with ``torch.load(weights_only=True)``: no code from the file can run.  Its keys
    (``features.*``, ``pool.p``, ``whiten.*``) are exactly this module's, so loading is strict.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"{path}: cannot load as a cirtorch checkpoint with weights_only=True ({err}); the file is corrupt, "
            "truncated or not a checkpoint: delete it and download it again."
        ) from err
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
