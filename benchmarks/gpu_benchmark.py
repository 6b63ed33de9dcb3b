"""CUDA figures of the CSA re-ranker: per-query latency, matmul throughput and one rSfM120k-size training epoch.

Run on a machine with an NVIDIA GPU (results go to ``docs/benchmarks.md`` by hand)::

    python benchmarks/gpu_benchmark.py --epoch

1. latency per query of the paper-size model (``CSAConfig()``) for K in {128, ..., 1536}, L = 512, in the default
   precision (fp16 autocast on CUDA, as the authors ran) and fp32, through :func:`csa_rerank.rerank.measure_latency`
   (warm-up, median, peak device memory), with the analytic FLOPs and the matmul throughput of each precision
   measured in the same run, and their ratio;
2. with ``--epoch``: one training epoch of the paper configuration on synthetic rSfM120k-size samples (91,642 unit
   descriptors of 2048 dimensions in 551 clusters, exact top-512 neighbour lists, global batch 256, K_train = 512,
   AMP), through :func:`csa_rerank.training.train`: samples per second and epoch time.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from csa_rerank.knn import self_neighbours
from csa_rerank.model import CSAConfig, CSAReranker
from csa_rerank.rerank import measure_latency
from csa_rerank.training import TrainConfig, TrainingSamples, train

KS = (128, 256, 512, 1024, 1536)


def analytic_flops(K: int, c: CSAConfig) -> float:
    """Forward FLOPs of one query (multiply-add = 2): projection, per block qkv, attention, output, MLP."""
    T, d = K + 1, c.hidden
    per_block = 2 * T * d * 3 * d + 2 * 2 * T * T * d + 2 * T * d * d + 2 * 2 * T * d * int(c.mlp_ratio * d)
    return 2 * T * c.anchors * d + c.depth * per_block


def matmul_throughput(dtype: torch.dtype, n: int = 8192, repeats: int = 20) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def latency_table() -> None:
    model = CSAReranker().eval()
    throughput = {"auto": matmul_throughput(torch.float16), "fp32": matmul_throughput(torch.float32)}
    print(f"matmul 8192^3: fp16 {throughput['auto'] / 1e12:.1f} TFLOP/s, fp32 {throughput['fp32'] / 1e12:.1f} TFLOP/s")
    print("| K | precision | median ms | p90 ms | peak MB | GFLOP | ratio latency / (FLOPs / matmul rate) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for K in KS:
        flops = analytic_flops(K, model.config)
        for precision in ("auto", "fp32"):
            result = measure_latency(model, K, 512, "cuda", precision=precision, repeats=50, warmup=10)
            ratio = result["median_ms"] / 1000 / (flops / throughput[precision])
            print(
                f"| {K} | {precision} | {result['median_ms']:.2f} | {result['p90_ms']:.2f} | "
                f"{result['peak_mem_mb']:.0f} | {flops / 1e9:.2f} | {ratio:.1f} |"
            )


def training_epoch() -> None:
    rng = np.random.default_rng(0)
    n, dim, clusters = 91_642, 2048, 551
    cluster = rng.integers(0, clusters, size=n)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    features = centres[cluster] + 2.0 * rng.normal(size=(n, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    started = time.perf_counter()
    neighbours = self_neighbours(features, 512, device="cuda")
    print(f"top-512 neighbour lists of {n} x {dim} on CUDA: {time.perf_counter() - started:.1f} s")
    samples = TrainingSamples([features], [neighbours], [cluster])
    config = TrainConfig(epochs=1, warmup_epochs=0, batch_size=256, K_train=512, amp=True)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train(CSAConfig(), config, samples, out, "cuda", log=print, progress=False)
        seconds = time.perf_counter() - started
    steps = n // 256
    print(f"one epoch: {steps} steps of 256 samples in {seconds:.1f} s = {steps * 256 / seconds:.0f} samples/s")
    print(f"peak device memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch", action="store_true", help="also time one rSfM120k-size training epoch")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the CUDA paths")
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    latency_table()
    if args.epoch:
        training_epoch()


if __name__ == "__main__":
    main()
