"""CUDA figures of the CSA re-ranker: per-query latency, matmul throughput and one rSfM120k-size training epoch.

Run on a machine with an NVIDIA GPU (results go to ``docs/benchmarks.md`` by hand)::

    python benchmarks/gpu_benchmark.py --epoch

1. latency per query of the paper-size model (``CSAConfig()``) for K in {128, ..., 1536}, L = 512, in the default
   precision (fp16 autocast on CUDA, as the authors ran) and fp32, through :func:`csa_rerank.rerank.measure_latency`
   (warm-up, median, peak device memory), with the analytic FLOPs and the matmul throughput of each precision
   measured in the same run, and their ratio;
2. the speed-up of the default path (8 queries per batch, affinities built batched on the GPU, fp16 autocast) over
   the fp32 one-query-at-a-time reference, on the synthetic descriptors of ``rerank_benchmark.py`` section 4;
3. the mAP difference between the default precision (fp16) and fp32 on the demo test sets, for every model of the
   demo run (needs ``results/demo`` and ``data/demo`` of a ``make demo`` run; skipped without them);
4. with ``--epoch``: one training epoch of the paper configuration on synthetic rSfM120k-size samples (91,642 unit
   descriptors of 2048 dimensions in 551 clusters, exact top-512 neighbour lists, global batch 256, K_train = 512,
   AMP), through :func:`csa_rerank.training.train`: samples per second and epoch time.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from rerank_benchmark import (
    ROOT,
    default_path_scores,
    demo_test_sets,
    map_by_precision,
    precision_changes,
    reference_scores,
)

from csa_rerank.knn import self_neighbours
from csa_rerank.model import CSAConfig, CSAReranker, load_model
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


def reference_speedup(n_queries: int = 64, batch: int = 8) -> None:
    """fp32 one query at a time (the authors' test loop) vs the default batched fp16 path, K = 1024, L = 512."""
    N, D, K, L = 5000, 2048, 1024, 512
    model = CSAReranker().eval().cuda()
    generator = torch.Generator(device="cuda").manual_seed(1)
    db = F.normalize(torch.randn(N, D, generator=generator, device="cuda"), dim=-1)
    noise = torch.randn(n_queries, D, generator=generator, device="cuda")
    query = F.normalize(db[:n_queries] + 0.5 * noise / D**0.5, dim=-1)
    ranks = torch.argsort(query @ db.T, dim=1, descending=True)

    paths = {
        "reference": lambda: reference_scores(model, query, db, ranks, K, L),
        "default": lambda: default_path_scores(model, query, db, ranks, K, L, batch=batch),
    }
    seconds = {}
    for name, path in paths.items():
        path()  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        path()
        torch.cuda.synchronize()
        seconds[name] = (time.perf_counter() - started) / n_queries
    print(
        f"fp32 reference, 1 query at a time: {seconds['reference'] * 1000:.2f} ms/query; default (batch {batch}, "
        f"fp16): {seconds['default'] * 1000:.2f} ms/query; speed-up {seconds['reference'] / seconds['default']:.2f}x"
    )


def demo_map(K: int = 128) -> None:
    """mAP of fp16 (the default on CUDA) minus fp32 on the demo test sets, for every demo model."""
    demo = ROOT / "results" / "demo"
    models = sorted(demo.glob("models/*/model.pt"))
    if not models or not (ROOT / "data" / "demo" / "test").is_dir():
        print(f"no demo run under {demo}: mAP check skipped")
        return
    sets = demo_test_sets(demo)
    anchors = load_model(demo / "models" / "rSfM120k" / "model.pt").config.anchors
    print(f"mAP fp16 - fp32 on the demo test sets (K = {K}; roxford5k M, H, rparis6k M, H) and top-20 order flips")
    for path in models:
        model = load_model(path)
        if model.config.anchors != anchors:
            continue  # a variant with another L
        changes, flips = precision_changes(map_by_precision(model, sets, K, device="cuda"), sets)
        print(f"{path.parent.name:20s}", " ".join(f"{c:+.3f}" for c in changes), f"flips {flips}")


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
    reference_speedup()
    demo_map()
    if args.epoch:
        training_epoch()


if __name__ == "__main__":
    main()
