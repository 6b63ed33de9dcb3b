"""Extraction on a CPU that other work shares: thread count and OpenMP wait policy, idle and under load.

A job of the demo's ``extract`` rule (ResNet101-GeM, 128 px, two scales, batches of 16, one decoding worker) runs
in a fresh process per setting, as Snakemake starts it (``OMP_NUM_THREADS`` = the job's threads), on generated
JPEGs; the time per image is measured after a warm-up batch.  Each setting runs on an idle machine, with one busy
process and with one busy process per core beside it (``yes > /dev/null``, at the niceness ``--nice`` gives: a
user's other work); "jobs side by side" starts two such jobs together and counts the images of both.

OpenMP's default wait policy lets a thread that waits for the others spin for a while before it sleeps; when
another process holds the core those spins burn the time slices the job needs (GNU OpenMP: ``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT``).  ``PASSIVE`` makes waiting threads sleep at once.  Usage::

    python benchmarks/shared_cpu_benchmark.py --images 96
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

JOB = """
import json, sys, time
import torch
from csa_rerank.extract import extract_descriptors
from csa_rerank.jobs import prepare_job
from csa_rerank.networks import build_network
paths, threads = json.loads(sys.argv[1]), int(sys.argv[2])
prepare_job(threads)
net = build_network("resnet101", "gem", seed=0).eval()
settings = dict(image_size=128, scales=[1.0, 2**-0.5], batch_size=16, num_workers=1)
extract_descriptors(net, paths[:16], desc="warm-up", **settings)
started = time.perf_counter()
extract_descriptors(net, paths[16:], desc="timed", **settings)
print(json.dumps((time.perf_counter() - started) / len(paths[16:])))
"""
# (label, threads per job, OMP_WAIT_POLICY or None for OpenMP's default, jobs side by side)
SETTINGS = [
    ("2 threads, default wait (before)", 2, None, 1),
    ("2 threads, passive wait", 2, "PASSIVE", 1),
    ("1 thread, default wait", 1, None, 1),
    ("1 thread, passive wait", 1, "PASSIVE", 1),
    ("2 jobs side by side, 1 thread each, passive wait", 1, "PASSIVE", 2),
]


def write_images(folder: Path, count: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
        path = folder / f"image{i:04d}.jpg"
        Image.fromarray(coarse).resize((128, 96), Image.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def time_per_image(paths: list[str], threads: int, wait_policy: str | None, jobs: int) -> float:
    """Seconds per image of ``jobs`` identical jobs started together: the slowest job's time over all their images
    (for one job, its own time per image)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(threads)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    command = [sys.executable, "-c", JOB, json.dumps(paths), str(threads)]
    running = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    per_image = []
    for process in running:
        output, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"an extraction job failed (exit status {process.returncode})")
        per_image.append(float(output.strip().splitlines()[-1]))
    return max(per_image) / jobs


@contextmanager
def busy_cores(count: int, nice: int):
    """``count`` processes that keep one core busy each (``yes > /dev/null``), stopped on exit."""
    if not count:
        yield
        return
    processes = [subprocess.Popen(["nice", "-n", str(nice), "yes"], stdout=subprocess.DEVNULL) for _ in range(count)]
    try:
        time.sleep(1)
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="images per run, the first 16 a warm-up")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the busy processes")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (the fastest is kept)")
    args = parser.parse_args(argv)
    cores = os.cpu_count()
    loads = sorted({0, 1, cores})
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), args.images)
        for busy in loads:
            for label, threads, policy, jobs in SETTINGS:
                with busy_cores(busy, args.nice):
                    runs = [time_per_image(paths, threads, policy, jobs) for _ in range(args.repeats)]
                results[busy, label] = min(runs)
    print(f"{cores} cores; busy processes: `nice -n {args.nice} yes > /dev/null`; {args.images - 16} timed images, "
          f"best of {args.repeats}; ms per image (ratio to the first row)\n")  # fmt: skip
    print("| setting | " + " | ".join(f"{busy} busy" for busy in loads) + " |")
    print("|---|" + "---:|" * len(loads))
    before = SETTINGS[0][0]
    for label, *_ in SETTINGS:
        cells = [
            f"{1000 * results[busy, label]:.1f} ({results[busy, before] / results[busy, label]:.2f}x)" for busy in loads
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
