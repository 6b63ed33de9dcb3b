"""Descriptor extraction throughput: the batched pipeline against a batch-1 loop over the same images.

Both paths compute the same descriptors (checked: the maximum absolute difference is printed):

- **batched**: :func:`csa_rerank.extract.extract_descriptors` (images decoded in DataLoader workers, collected
  into buckets of equal size, ``--batch-size`` images per forward pass), as the ``extract`` rule runs it;
- **batch-1 loop**: what cirtorch's ``extract_vectors`` does, one image at a time in the main process
  (decode, normalise, multi-scale forward).

Images are generated (random smooth colour fields, JPEG) in a few distinct sizes, as photos of a dataset come in a
few common sizes (Oxford: 1024x768 and 768x1024 for most).  Usage::

    python benchmarks/extract_benchmark.py --arch resnet101 --images 32 --image-size 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from csa_rerank.extract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    extract_descriptors,
    load_image,
    multiscale_descriptor,
    pick_device,
    to_tensor,
)
from csa_rerank.networks import build_network

SIZES = ((1024, 768), (768, 1024), (1024, 683))  # the common Oxford/Paris photo sizes (width, height)


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs cycling through :data:`SIZES`: low-frequency noise upsampled, so JPEG decoding is realistic."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        coarse = rng.integers(0, 256, size=(height // 32, width // 32, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        path = folder / f"image{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def batch_one_loop(net, paths, image_size, scales, msp, device) -> np.ndarray:
    """cirtorch's way: one image at a time, decoded in the main process."""
    out = np.zeros((len(paths), net.dim), dtype=np.float32)
    with torch.no_grad():
        for i, path in enumerate(paths):
            tensor = to_tensor(load_image(path, image_size), IMAGENET_MEAN, IMAGENET_STD)[None].to(device)
            out[i] = multiscale_descriptor(net, tensor, scales, msp).float().cpu().numpy()[0]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet101")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2**0.5, 2**-0.5])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(not args.cpu)
    net = build_network(args.arch, "gem", seed=0).eval().to(device)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), args.images)
        settings = dict(image_size=args.image_size, scales=args.scales, msp=1.0)
        # warm-up: first-call allocations and kernel selection stay out of both timings
        batch_one_loop(net, paths[:1], device=device, **settings)

        started = time.perf_counter()
        batched = extract_descriptors(
            net,
            paths,
            device=device,
            batch_size=args.batch_size,
            num_workers=args.workers,
            desc="batched",
            **settings,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        batched_s = time.perf_counter() - started

        started = time.perf_counter()
        looped = batch_one_loop(net, paths, device=device, **settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        looped_s = time.perf_counter() - started

    n = len(paths)
    print(
        f"{args.arch}, {n} images ({len(SIZES)} sizes), longest side {args.image_size}, scales {args.scales}, "
        f"device {device}, {args.threads} threads, batch {args.batch_size}, {args.workers} workers\n"
    )
    print("| path | seconds | descriptors/s |\n|---|---:|---:|")
    print(f"| batched pipeline | {batched_s:.1f} | {n / batched_s:.3f} |")
    print(f"| batch-1 loop | {looped_s:.1f} | {n / looped_s:.3f} |")
    difference = np.abs(batched - looped).max()
    print(f"\nspeed-up {looped_s / batched_s:.2f}x; max |difference| of the descriptors {difference:.2e}")


if __name__ == "__main__":
    main()
