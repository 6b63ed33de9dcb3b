"""Benchmark of ``csa-rerank`` on a 1M-row database: ``search`` and ``rerank --method Ours`` within a memory budget.

Run from the repository root (about 10 GB of disk in ``--workdir`` for the default 1M x 2048 float32 database)::

    .venv/bin/python benchmarks/own_descriptors_benchmark.py --workdir /tmp/own_bench --out /tmp/own_bench.md
    .venv/bin/python benchmarks/own_descriptors_benchmark.py --rows 100000 --dim 256    # a quick run

Synthetic unit-norm float32 descriptors (seeded Gaussian rows, normalised) are written block by block to
``db.npy`` and ``query.npy``; a CSA model of the paper's size (``CSAConfig()``: L = 512, d = 768, depth 2, random
weights: speed does not depend on them) to ``model.pt``.  Then two commands run, each in a fresh process through
:func:`csa_rerank.cli.main`, exactly as a user types them:

1. ``csa-rerank search query.npy db.npy --k 1024 --memory-gb B --out first.h5``
2. ``csa-rerank rerank query.npy db.npy --ranks first.h5 --method Ours --model model.pt --K 1024 --L 512
   --memory-gb B --out csa.h5``

The database is memory-mapped (``.npy``), checked (finite, unit norm) by block and read by tile (search) or by the
gathered top-ranked rows of a block of queries (re-ranking).  Reported per command: wall seconds (the checks
included), ms per query, and two memory figures sampled every 20 ms from ``/proc/self/status``: the peak RSS
(``VmHWM``, which counts the pages of the memory-mapped database file the kernel keeps resident while they are
in use: page cache, reclaimable) and the peak of anonymous memory (``RssAnon``: what the process allocated, the
figure the budget bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

GiB = 2**30


def write_unit_rows(path: Path, n: int, dim: int, seed: int, chunk: int = 32768) -> None:
    """``path`` (.npy) of n random unit-norm float32 rows, generated and written ``chunk`` rows at a time."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, chunk):
        rows = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    out.flush()
    del out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(report: str, argv: list[str]) -> None:
    """Run one ``csa-rerank`` command in this process; write its wall time and memory peaks to ``report``."""
    from csa_rerank.cli import main

    peak_anon, running = [0], [True]

    def sample() -> None:
        while running[0]:
            peak_anon[0] = max(peak_anon[0], _status_kib("RssAnon"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    status = main(argv)
    seconds = time.perf_counter() - started
    running[0] = False
    sampler.join()
    result = {"status": status, "seconds": seconds, "peak_rss_kib": _status_kib("VmHWM"), "peak_anon_kib": peak_anon[0]}
    Path(report).write_text(json.dumps(result))


def run_command(workdir: Path, name: str, argv: list[str]) -> dict:
    report = workdir / f"{name}.json"
    command = [sys.executable, __file__, "--child", str(report), "--", *argv]
    subprocess.run(command, check=True)
    return json.loads(report.read_text())


def prepare(workdir: Path, rows: int, dim: int, queries: int) -> None:
    import torch

    from csa_rerank.model import CSAConfig, CSAReranker, save_model

    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "db.npy").exists():
        started = time.perf_counter()
        write_unit_rows(workdir / "db.npy", rows, dim, seed=0)
        print(f"wrote db.npy ({rows} x {dim}) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    write_unit_rows(workdir / "query.npy", queries, dim, seed=1)
    torch.manual_seed(0)
    save_model(CSAReranker(CSAConfig()), workdir / "model.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/own_descriptors_benchmark"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--memory-gb", type=float, default=2.0)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    prepare(args.workdir, args.rows, args.dim, args.queries)
    w, budget = args.workdir, str(args.memory_gb)
    commands = {
        "search": ["search", w / "query.npy", w / "db.npy", "--k", "1024", "--memory-gb", budget, "--out",
                   w / "first.h5"],
        "rerank --method Ours": ["rerank", w / "query.npy", w / "db.npy", "--ranks", w / "first.h5", "--method",
                                 "Ours", "--model", w / "model.pt", "--K", "1024", "--L", "512", "--memory-gb",
                                 budget, "--out", w / "csa.h5"],
    }  # fmt: skip
    lines = [
        f"Database {args.rows} x {args.dim} float32 ({args.rows * args.dim * 4 / GiB:.1f} GiB, memory-mapped .npy), "
        f"{args.queries} queries, --memory-gb {budget}, {os.cpu_count()} CPU cores, torch threads = cores.",
        "",
        "| command | wall (s) | ms / query | peak RSS (GiB) | peak anonymous memory (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, argv in commands.items():
        result = run_command(w, name.split()[0], [str(a) for a in argv])
        lines.append(
            f"| `{name}` | {result['seconds']:.1f} | {1000 * result['seconds'] / args.queries:.1f} | "
            f"{result['peak_rss_kib'] / 2**20:.2f} | {result['peak_anon_kib'] / 2**20:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:])
    else:
        main()
