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


def measure_search(spec: dict) -> dict:
    queries = read(spec["data"], "query")
    with h5py.File(spec["data"], "r") as handle:
        db = handle["db"][()] if spec["db_in_memory"] else handle["db"]
        baseline = current_rss()
        start = time.perf_counter()
        _, ids = knn.search(queries, db, spec["k"], memory_bytes=spec["memory_bytes"])
        seconds = time.perf_counter() - start
    np.save(spec["ids_out"], ids[: spec["compare_queries"]])
    return {"seconds": seconds, "peak": peak_rss(), "baseline": baseline}


def measure_self_neighbours(spec: dict) -> dict:
    with h5py.File(spec["data"], "r") as handle:
        features = handle["train"]
        baseline = current_rss()
        start = time.perf_counter()
        neighbours = knn.self_neighbours(features, spec["k"], memory_bytes=spec["memory_bytes"])
        seconds = time.perf_counter() - start
    assert np.array_equal(neighbours[:, 0], np.arange(len(neighbours)))
    return {"seconds": seconds, "peak": peak_rss(), "baseline": baseline}


def measure_bare_matmul(spec: dict) -> dict:
    """Seconds of queries @ db.T in the given tiles, no selection; timed on ``blocks`` query blocks, scaled."""
    db = torch.from_numpy(read(spec["data"], spec["db"]))
    queries = torch.from_numpy(read(spec["data"], spec["queries"]))
    query_rows, db_rows = spec["tiles"]
    timed_rows = min(len(queries), spec["blocks"] * query_rows)
    start = time.perf_counter()
    for q_start in range(0, timed_rows, query_rows):
        block = queries[q_start : q_start + query_rows]
        for n_start in range(0, len(db), db_rows):
            block @ db[n_start : n_start + db_rows].T
    seconds = time.perf_counter() - start
    return {"seconds": seconds * len(queries) / timed_rows, "timed_queries": timed_rows}


def measure_reference(spec: dict) -> dict:
    """The authors' way: the whole [Q, N] score matrix, then an argsort of each row (top-k kept)."""
    queries = read(spec["data"], "query", spec["queries"])
    db = read(spec["data"], "db")
    baseline = current_rss()
    start = time.perf_counter()
    scores = queries @ db.T
    ranks = np.argsort(-scores, axis=1)
    seconds = time.perf_counter() - start
    np.save(spec["ids_out"], ranks[:, : spec["k"]])
    return {"seconds": seconds, "peak": peak_rss(), "baseline": baseline}


MEASUREMENTS = {
    "search": measure_search,
    "self_neighbours": measure_self_neighbours,
    "bare": measure_bare_matmul,
    "reference": measure_reference,
}


def run_child(kind: str, spec: dict, threads: int) -> dict:
    """One measurement in a fresh interpreter; its JSON result."""
    command = [sys.executable, __file__, "--child", kind, json.dumps(spec), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# report


def gb(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.2f}"


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
    results = {}
    searches = {"db read from HDF5": (False, budget), "db in memory": (True, budget)}  # (in memory, budget)
    if args.tight_memory_gb:
        searches[f"db read from HDF5, `--tight-memory-gb {args.tight_memory_gb:g}`"] = (
            False,
            int(args.tight_memory_gb * GiB),
        )
    for name, (in_memory, memory_bytes) in searches.items():
        spec = {**common, "memory_bytes": memory_bytes, "db_in_memory": in_memory,
                "ids_out": str(workdir / "ids.npy"), "compare_queries": ref_q}  # fmt: skip
        results[name] = run_child("search", spec, args.threads)
        print(f"search, {name}: {results[name]}", file=sys.stderr)
    spec = {"data": str(data), "db": "db", "queries": "query", "tiles": tiles, "blocks": Q}
    results["bare"] = run_child("bare", spec, args.threads)
    spec = {**common, "queries": ref_q, "ids_out": str(workdir / "ref_ids.npy")}
    results["reference"] = run_child("reference", spec, args.threads)
    same_ids = float(np.mean(np.load(workdir / "ids.npy") == np.load(workdir / "ref_ids.npy")))
    print(f"bare, reference: {results['bare']}, {results['reference']}", file=sys.stderr)

    bare = results["bare"]["seconds"]
    matmul_flops = 2 * Q * N * D
    rows = []
    for name, (_, memory_bytes) in searches.items():
        r = results[name]
        search_tiles = knn.tile_sizes(Q, N, D, k, memory_bytes)
        rows.append([f"`knn.search`, {name}",
                     f"{Q:,} x {N:,}, top-{k}", f"{search_tiles[0]} x {search_tiles[1]}", f"{r['seconds']:.1f}",
                     f"{r['seconds'] / bare:.2f}", gb(r["peak"]), gb(r["peak"] - r["baseline"]),
                     gb(memory_bytes)])  # fmt: skip
    rows.append(["bare matmul (same tiles, no top-k)", f"{Q:,} x {N:,}", f"{tiles[0]} x {tiles[1]}",
                 f"{bare:.1f} ({matmul_flops / bare / 1e9:.0f} GFLOP/s)", "1.00", "", "", ""])  # fmt: skip
    ref = results["reference"]
    scale = Q / ref_q
    ref_seconds, ref_bytes = ref["seconds"] * scale, (ref["peak"] - ref["baseline"]) * scale
    measured = "" if ref_q == Q else f" (measured on {ref_q:,} queries: {ref['seconds']:.1f} s, x{scale:g})"
    rows.append([f"reference: [Q, N] scores + argsort{measured}", f"{Q:,} x {N:,}, full ranking", "-",
                 f"{ref_seconds:.1f}", f"{ref_seconds / bare:.2f}", gb(ref["baseline"] + ref_bytes),
                 gb(ref_bytes), ""])  # fmt: skip

    if args.train:
        n = args.train
        train_tiles = knn.tile_sizes(n, n, D, k, budget, result_bytes=8)
        train = run_child("self_neighbours", {**common}, args.threads)
        print(f"self_neighbours: {train}", file=sys.stderr)
        spec = {"data": str(data), "db": "train", "queries": "train", "tiles": train_tiles, "blocks": args.bare_blocks}
        train_bare = run_child("bare", spec, args.threads)
        print(f"bare: {train_bare}", file=sys.stderr)
        scaled = "" if train_bare["timed_queries"] == n else f", timed on {train_bare['timed_queries']:,} queries"
        rows.append(["`knn.self_neighbours` (training lists, from HDF5)", f"{n:,} x {n:,}, top-{k}, self first",
                     f"{train_tiles[0]} x {train_tiles[1]}", f"{train['seconds']:.1f}",
                     f"{train['seconds'] / train_bare['seconds']:.2f}", gb(train["peak"]),
                     gb(train["peak"] - train["baseline"]), gb(budget)])  # fmt: skip
        rows.append([f"bare matmul (same tiles, no top-k{scaled})", f"{n:,} x {n:,}",
                     f"{train_tiles[0]} x {train_tiles[1]}",
                     f"{train_bare['seconds']:.1f} ({2 * n * n * D / train_bare['seconds'] / 1e9:.0f} GFLOP/s)",
                     "1.00", "", "", ""])  # fmt: skip
        rows.append(["reference: the authors' N x N float32 score matrix", f"{n:,} x {n:,}", "-", "", "",
                     "", gb(4 * n * n), ""])  # fmt: skip

    header = ["case", "size", "tiles (q x n)", "time (s)", "ratio to bare matmul", "peak RSS (GiB)",
              "above baseline (GiB)", "budget (GiB)"]  # fmt: skip
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}; torch {torch.__version__}, "
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
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
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
