"""Descriptor extraction as cirtorch does it (``ImagesFromList`` + ``extract_vectors``).

Per image:
1. PIL open -> RGB; ``full = max(w, h)`` of the uncropped image.
2. A query is cropped to its revisitop ``bbx`` (x1, y1, x2, y2; PIL rounds the floats) and then shrunk with the
   scale the full image would get: longest side ``image_size * max(crop.w, crop.h) / full``.  A database image is
   shrunk to longest side ``image_size``.  Shrinking only, never enlarging (``Image.thumbnail``), with LANCZOS
   (Pillow's new name for cirtorch's ANTIALIAS) and without Pillow >= 7's reducing-gap shortcut, which old Pillow
   did not have and which changes pixels.
3. ToTensor, normalise with the network's mean/std.
4. For each scale s: bilinear resize of the normalised tensor by s (align_corners=False), descriptor
   ``v_s = net(x_s)``; ``v = (mean_s v_s^msp)^(1/msp)``, L2-normalised.  cirtorch uses ``msp`` = the GeM exponent
   only for GeM networks without whitening, 1 otherwise (see :func:`multiscale_power`).

Unlike cirtorch (batch size 1), images of equal size are batched; decoding happens in DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .networks import GeM, RetrievalNet, l2n

logger = logging.getLogger("csa_rerank")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(RuntimeError):
    """An image file is missing, truncated or not an image."""


def load_image(path: str | Path, image_size: int, bbx: Sequence[float] | None = None) -> Image.Image:
    """Load ``path`` as RGB, crop to ``bbx`` when given, and shrink as cirtorch does (see the module docstring)."""
    try:
        with Image.open(path) as handle:
            img = handle.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ImageReadError(
            f"cannot read image {path}: {err}. The file is missing, truncated or not an image; "
            "download (or regenerate) it again."
        ) from err
    full = max(img.size)
    target = float(image_size)
    if bbx is not None:
        img = img.crop(_query_box(path, bbx, img.size))
        target = image_size * max(img.size) / full
    img.thumbnail((target, target), Image.Resampling.LANCZOS, reducing_gap=None)
    return img


def _query_box(path: str | Path, bbx: Sequence[float], size: tuple[int, int]) -> tuple[float, ...]:
    """The box as given (cirtorch crops it as is, padding what lies outside with black: the published numbers),
    with a warning when it reaches outside the image, refused when nothing of it is inside."""
    box = tuple(float(v) for v in bbx)
    width, height = size
    if box[0] >= width or box[1] >= height or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"query image {path}: its box {box} lies outside the image ({width} x {height})")
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        logger.warning("query image %s: its box %s reaches outside the image (%d x %d)", path, box, width, height)
    return box


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """PIL RGB image -> normalised float tensor [3, H, W] (torchvision's ToTensor + Normalize)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean_t) / std_t


def multiscale_power(net: RetrievalNet) -> float:
    """cirtorch's ``msp``: the GeM exponent for GeM networks without whitening, otherwise 1."""
    if isinstance(net.pool, GeM) and net.whiten is None:
        return float(net.pool.p.detach().item())
    return 1.0


@torch.no_grad()
def multiscale_descriptor(net: RetrievalNet, images: torch.Tensor, scales: Sequence[float], msp: float) -> torch.Tensor:
    """Descriptors of a batch of equal-size images [B, 3, H, W] averaged over ``scales`` -> [B, D], unit norm."""
    acc = None
    for s in scales:
        x = images if s == 1 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        v = net(x)
        v = v.pow(msp) if msp != 1 else v
        acc = v if acc is None else acc + v
    acc = acc / len(scales)
    if msp != 1:
        acc = acc.pow(1.0 / msp)
    return l2n(acc)


class _ImageList(Dataset):
    def __init__(self, paths, image_size, bbxs, mean, std):
        self.paths, self.image_size, self.bbxs, self.mean, self.std = paths, image_size, bbxs, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        bbx = None if self.bbxs is None else self.bbxs[i]
        return i, to_tensor(load_image(self.paths[i], self.image_size, bbx), self.mean, self.std)


def _first(batch):
    return batch[0]


def extract_descriptors(
    net: RetrievalNet,
    paths: Sequence[str | Path],
    image_size: int,
    scales: Sequence[float] = (1.0,),
    msp: float = 1.0,
    bbxs: Sequence[Sequence[float]] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    desc: str = "extract",
) -> np.ndarray:
    """Descriptors of ``paths`` (rows in the same order) as float32 [N, D], unit norm.

    Images are decoded in ``num_workers`` DataLoader workers and collected into per-size buckets; a bucket is
    sent through the network when it holds ``batch_size`` images (and at the end).  Batching does not change the
    result: every image is processed exactly as alone, up to floating-point summation order.
    """
    if bbxs is not None and len(bbxs) != len(paths):
        raise ValueError(f"{len(paths)} images but {len(bbxs)} bounding boxes")
    net = net.eval().to(device)
    out = np.zeros((len(paths), net.dim), dtype=np.float32)
    loader = DataLoader(
        _ImageList(list(paths), image_size, bbxs, mean, std),
        batch_size=1,
        collate_fn=_first,
        num_workers=num_workers,
        persistent_workers=False,
    )
    buckets: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}

    def flush(key):
        items = buckets.pop(key)
        idx = [i for i, _ in items]
        images = torch.stack([t for _, t in items]).to(device, non_blocking=True)
        out[idx] = multiscale_descriptor(net, images, scales, msp).float().cpu().numpy()

    for i, tensor in tqdm(loader, total=len(paths), desc=desc, unit="img", mininterval=2.0):
        key = tuple(tensor.shape[1:])
        buckets.setdefault(key, []).append((i, tensor))
        if len(buckets[key]) >= batch_size:
            flush(key)
    for key in list(buckets):
        flush(key)
    return out


def pick_device(use_gpu: bool = True) -> torch.device:
    """CUDA when it is available and allowed, CPU otherwise."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
