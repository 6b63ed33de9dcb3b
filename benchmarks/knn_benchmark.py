"""CPU benchmark of the first-round kNN: time and peak memory of the tiled exact search against bare matmul.

Run from the repository root::

    .venv/bin/python benchmarks/knn_benchmark.py --out /tmp/knn_bench.md   # full sizes, several minutes
    .venv/bin/python benchmarks/knn_benchmark.py --quick                    # smoke run, about a minute

Synthetic unit-norm float32 descriptors (seeded Gaussian rows, normalised) are written to HDF5 files in a
temporary folder first.  Each measurement then runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its
own; "above baseline" subtracts the RSS just before the timed call (interpreter, torch, the loaded queries).

Cases:

1. ``search``: :func:`csa_rerank.knn.search`, top-k of Q queries over an N x D database read from its HDF5 file
   tile by tile (as the kNN stage reads it), tile sizes from ``--memory-gb``; the same with the database in
   memory, and from the file within the smaller budget ``--tight-memory-gb``;
2. ``bare matmul``: the same products (queries @ db.T in the tiles of ``--memory-gb``, from memory) with no
   top-k: the floor;
3. ``reference``: the straightforward way of the authors' code, the full [Q, N] score matrix and an argsort of
   each row (numpy), on ``--reference-queries`` queries (it needs 16 bytes per score), time and memory
   extrapolated linearly to Q; also the share of its top-k ids our search reproduces;
4. ``training lists``: :func:`csa_rerank.knn.self_neighbours` on an rSfM120k-size training set (91,642 x D, top-k,
   the image first) read from HDF5, against its bare matmul timed on ``--bare-blocks`` query blocks and scaled
   to all of them (every block does the same work); the authors' N x N float32 matrix for the reference memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from csa_rerank import knn

GiB = 2**30
SEED = 0


# ----------------------------------------------------------------------------------------------------------------
# helpers


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def current_rss() -> int:
    """Resident set size of this process now, bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """High-water RSS of this process, bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_unit_rows(path: Path, name: str, n: int, dim: int, seed: int, chunk: int = 8192) -> None:
    """A dataset [n, dim] of random unit-norm float32 rows, generated and written ``chunk`` rows at a time."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "a") as handle:
        dataset = handle.create_dataset(name, shape=(n, dim), dtype=np.float32)
        for start in range(0, n, chunk):
            rows = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
            dataset[start : start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)


def read(path: str, name: str, rows: int | None = None) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        return handle[name][:rows]


# ----------------------------------------------------------------------------------------------------------------
# measurements, each in its own process


class Stopwatch:
    """Wall-clock and CPU seconds (this process, all threads) of a ``with`` block."""

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def result(self, scale: float = 1.0, **extra) -> dict:
        return {"seconds": self.wall * scale, "cpu_seconds": self.cpu * scale, **extra}


def measure_search(spec: dict) -> dict:
    queries = read(spec["data"], "query")
    with h5py.File(spec["data"], "r") as handle:
        db = handle["db"][()] if spec["db_in_memory"] else handle["db"]
        baseline = current_rss()
        with Stopwatch() as watch:
            _, ids = knn.search(queries, db, spec["k"], memory_bytes=spec["memory_bytes"])
    np.save(spec["ids_out"], ids[: spec["compare_queries"]])
    return watch.result(peak=peak_rss(), baseline=baseline)


def measure_self_neighbours(spec: dict) -> dict:
    with h5py.File(spec["data"], "r") as handle:
        features = handle["train"]
        baseline = current_rss()
        with Stopwatch() as watch:
            neighbours = knn.self_neighbours(features, spec["k"], memory_bytes=spec["memory_bytes"])
    assert np.array_equal(neighbours[:, 0], np.arange(len(neighbours)))
    return watch.result(peak=peak_rss(), baseline=baseline)


def measure_bare_matmul(spec: dict) -> dict:
    """Seconds of queries @ db.T in the given tiles, no selection; timed on ``blocks`` query blocks, scaled."""
    db = torch.from_numpy(read(spec["data"], spec["db"]))
    queries = torch.from_numpy(read(spec["data"], spec["queries"]))
    query_rows, db_rows = spec["tiles"]
    timed_rows = min(len(queries), spec["blocks"] * query_rows)
    with Stopwatch() as watch:
        for q_start in range(0, timed_rows, query_rows):
            block = queries[q_start : q_start + query_rows]
            for n_start in range(0, len(db), db_rows):
                block @ db[n_start : n_start + db_rows].T
    return watch.result(len(queries) / timed_rows, timed_queries=timed_rows)


def measure_reference(spec: dict) -> dict:
    """The authors' way: the whole [Q, N] score matrix, then an argsort of each row (top-k kept)."""
    queries = read(spec["data"], "query", spec["queries"])
    db = read(spec["data"], "db")
    baseline = current_rss()
    with Stopwatch() as watch:
        scores = queries @ db.T
        ranks = np.argsort(-scores, axis=1)
    np.save(spec["ids_out"], ranks[:, : spec["k"]])
    return watch.result(peak=peak_rss(), baseline=baseline)


MEASUREMENTS = {
    "search": measure_search,
    "self_neighbours": measure_self_neighbours,
    "bare": measure_bare_matmul,
    "reference": measure_reference,
}


def run_child(kind: str, spec: dict, threads: int) -> dict:
    """One measurement in a fresh interpreter (numpy's BLAS limited to ``threads`` too); its JSON result."""
    command = [sys.executable, __file__, "--child", kind, json.dumps(spec), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{kind}: {result}", file=sys.stderr)
    return result


# ----------------------------------------------------------------------------------------------------------------
# report


def gb(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.2f}"


def timing_cells(result: dict, bare: dict, scale: float = 1.0) -> list[str]:
    """Wall and CPU seconds, and their ratios to the bare matmul's."""
    wall, cpu = result["seconds"] * scale, result["cpu_seconds"] * scale
    return [f"{wall:.1f}", f"{cpu:.1f}", f"{wall / bare['seconds']:.2f} / {cpu / bare['cpu_seconds']:.2f}"]


def bare_cells(bare: dict, flops: float) -> list[str]:
    return [f"{bare['seconds']:.1f} ({flops / bare['seconds'] / 1e9:.0f} GFLOP/s)", f"{bare['cpu_seconds']:.1f}", "1"]


def benchmark(args: argparse.Namespace, workdir: Path) -> str:
    data = workdir / "descriptors.h5"
    Q, N, D, k, budget = args.queries, args.db, args.dim, args.k, int(args.memory_gb * GiB)
    started = time.perf_counter()
    write_unit_rows(data, "db", N, D, SEED)
    write_unit_rows(data, "query", Q, D, SEED + 1)
    if args.train:
        write_unit_rows(data, "train", args.train, D, SEED + 2)
    print(f"data written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    load_before = os.getloadavg()

    common = {"data": str(data), "k": k, "memory_bytes": budget}
    tiles = knn.tile_sizes(Q, N, D, k, budget)
    ref_q = min(args.reference_queries, Q)
    searches = {"db read from HDF5": (False, budget), "db in memory": (True, budget)}  # (in memory, budget)
    if args.tight_memory_gb:
        tight = int(args.tight_memory_gb * GiB)
        searches[f"db read from HDF5, `--tight-memory-gb {args.tight_memory_gb:g}`"] = (False, tight)
    results = {}
    for name, (in_memory, memory_bytes) in searches.items():
        spec = {
            **common,
            "memory_bytes": memory_bytes,
            "db_in_memory": in_memory,
            "ids_out": str(workdir / "ids.npy"),
            "compare_queries": ref_q,
        }
        results[name] = run_child("search", spec, args.threads)
    bare = run_child(
        "bare", {"data": str(data), "db": "db", "queries": "query", "tiles": tiles, "blocks": Q}, args.threads
    )
    ref = run_child("reference", {**common, "queries": ref_q, "ids_out": str(workdir / "ref_ids.npy")}, args.threads)
    same_ids = float(np.mean(np.load(workdir / "ids.npy") == np.load(workdir / "ref_ids.npy")))

    rows = []
    for name, (_, memory_bytes) in searches.items():
        r = results[name]
        search_tiles = knn.tile_sizes(Q, N, D, k, memory_bytes)
        rows.append(
            [
                f"`knn.search`, {name}",
                f"{Q:,} x {N:,}, top-{k}",
                f"{search_tiles[0]} x {search_tiles[1]}",
                *timing_cells(r, bare),
                gb(r["peak"]),
                gb(r["peak"] - r["baseline"]),
                gb(memory_bytes),
            ]
        )
    rows.append(
        [
            "bare matmul (same tiles, no top-k)",
            f"{Q:,} x {N:,}",
            f"{tiles[0]} x {tiles[1]}",
            *bare_cells(bare, 2 * Q * N * D),
            "",
            "",
            "",
        ]
    )
    scale = Q / ref_q
    ref_bytes = (ref["peak"] - ref["baseline"]) * scale
    measured = "" if ref_q == Q else f" (run on {ref_q:,} queries, x{scale:g})"
    rows.append(
        [
            f"reference: [Q, N] scores + argsort{measured}",
            f"{Q:,} x {N:,}, full ranking",
            "-",
            *timing_cells(ref, bare, scale),
            gb(ref["baseline"] + ref_bytes),
            gb(ref_bytes),
            "",
        ]
    )

    if args.train:
        n = args.train
        train_tiles = knn.graph_tiles(n, D, k, budget)
        train = run_child("self_neighbours", common, args.threads)
        spec = {"data": str(data), "db": "train", "queries": "train", "tiles": train_tiles, "blocks": args.bare_blocks}
        train_bare = run_child("bare", spec, args.threads)
        timed = "" if train_bare["timed_queries"] == n else f", timed on {train_bare['timed_queries']:,} queries"
        rows.append(
            [
                "`knn.self_neighbours` (training lists, from HDF5)",
                f"{n:,} x {n:,}, top-{k}, self first",
                f"{train_tiles[0]} x {train_tiles[1]}",
                *timing_cells(train, train_bare),
                gb(train["peak"]),
                gb(train["peak"] - train["baseline"]),
                gb(budget),
            ]
        )
        rows.append(
            [
                f"bare matmul (same tiles, no top-k{timed})",
                f"{n:,} x {n:,}",
                f"{train_tiles[0]} x {train_tiles[1]}",
                *bare_cells(train_bare, 2 * n * n * D),
                "",
                "",
                "",
            ]
        )
        rows.append(
            [
                "reference: the authors' N x N float32 score matrix alone",
                f"{n:,} x {n:,}",
                "-",
                "",
                "",
                "",
                "",
                gb(4 * n * n),
                "",
            ]
        )

    header = [
        "case",
        "size",
        "tiles (q x n)",
        "wall (s)",
        "CPU (s)",
        "ratio to bare matmul (wall / CPU)",
        "peak RSS (GiB)",
        "above baseline (GiB)",
        "budget (GiB)",
    ]
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, threads {args.threads}; torch {torch.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}",
        f"D = {D}, k = {k}, memory budget `--memory-gb {args.memory_gb:g}`; load average before/after: "
        f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s",
        f"top-{k} ids of the search identical to the reference's on {ref_q:,} queries: {100 * same_ids:.3f} %",
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of about a minute")
    parser.add_argument("--db", type=int, default=100_000, help="database rows N")
    parser.add_argument("--queries", type=int, default=10_000, help="queries Q")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("-k", type=int, default=512)
    parser.add_argument("--train", type=int, default=91_642, help="training-set size for self_neighbours (0: skip)")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="the search's memory budget (knn.memory_gb)")
    parser.add_argument("--tight-memory-gb", type=float, default=0.25, help="a second budget for search (0: skip)")
    parser.add_argument("--reference-queries", type=int, default=1000, help="queries the reference is run on")
    parser.add_argument("--bare-blocks", type=int, default=4, help="query blocks of the training bare matmul timed")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch and BLAS threads")
    parser.add_argument("--workdir", type=Path, help="folder for the descriptor file (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        kind, spec = args.child
        print(json.dumps(MEASUREMENTS[kind](json.loads(spec))))
        return
    if args.quick:
        args.db, args.queries, args.train, args.reference_queries = 20_000, 2_000, 10_000, 500
    workdir = Path(tempfile.mkdtemp(prefix="knn_bench_", dir=args.workdir))
    try:
        report = benchmark(args, workdir)
    finally:
        shutil.rmtree(workdir)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
