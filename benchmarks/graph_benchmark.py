"""Benchmark of the shared database graph: one graph for all graph-reading methods against each building its own.

Run from the repository root::

    .venv/bin/python benchmarks/graph_benchmark.py --rows 200000            # hours on 2 cores
    .venv/bin/python benchmarks/graph_benchmark.py --rows 200000 --method-rows 20000   # the graph at 200,000 rows,
                                                                                        # the methods at 20,000
    .venv/bin/python benchmarks/graph_benchmark.py --rows 1006000 --method-rows 0 --device cuda   # +R1M graph

A synthetic database (seeded Gaussian rows, normalised, every tenth row a copy of the one before it: exact ties)
and ``--queries`` queries are written to HDF5 files in a temporary folder, or in ``--workdir``.  Then, each in a
fresh process (so its peak RSS, ``ru_maxrss``, is its own):

1. the graph of the ``--rows`` database, as rule db_graph computes it (:func:`csa_rerank.graph.build`, read from
   the file tile by tile on the CPU), at the widths the paper configuration's methods read
   (:attr:`csa_rerank.plan.core.Plan.graph_widths` of config.yaml, unless ``--near``/``--far`` are given): time
   and peak RSS;
2. on a ``--method-rows`` database (the same by default; 0: skipped), every graph-reading method of the registry,
   once given that database's graph and once building its own (the API's way, i.e. what each job did before the
   graph was shared): the time and peak RSS of each call, and whether both rankings are identical;
3. on the same database, every method that reads descriptors but no graph (the query expansions, LAttQE, CRL,
   SuperGlobal; not DSM, which reads images): the time and peak RSS of its call.  With those of 2, these are the
   large-database figures that rule rerank_method's per-method memory and time limits derive from
   (:mod:`csa_rerank.plan.resources`).

The learned methods' models are fitted first (small LAttQE and CRL models on the database's own neighbour lists,
their fits not timed); GSS
runs ``--gss-epochs`` epochs with ``--gss-loss-columns`` sampled loss columns, as config.yaml asks for at +R1M
scale.  Prints a Markdown report (``--out`` also writes it).  Methods run on the CPU unless ``--device cuda``
(the graph then too).

With ``--workdir`` a run that is stopped can be resumed: the data, the graph, the rankings and every finished
measurement stay there (``measurements.json``), and a rerun with the same arguments measures only what is missing.
A workdir made with other data arguments is refused.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from csa_rerank import atomic

SEED = 0


def write_data(folder: Path, rows: int, queries: int, dim: int) -> None:
    from csa_rerank import h5io

    rng = np.random.default_rng(SEED)
    db = rng.standard_normal((rows, dim), dtype=np.float32)
    db[1::10] = db[0::10][: len(db[1::10])]
    query = db[rng.choice(rows, queries, replace=False)] + 0.1 * rng.standard_normal((queries, dim), dtype=np.float32)
    for array in (db, query):
        array /= np.linalg.norm(array, axis=1, keepdims=True)
    h5io.write_arrays(str(folder / "testset.h5"), {"db": db, "query": query})


def paper_widths() -> tuple[int, int]:
    import yaml

    from csa_rerank.plan import Plan

    return Plan(yaml.safe_load(Path("config.yaml").read_text())).graph_widths


def run_graph(folder: Path, near: int, far: int, device: str) -> dict:
    from csa_rerank import graph

    started = time.perf_counter()
    lists = graph.build(str(folder / "testset.h5"), None, near, far, memory_gb=4, device=device)
    seconds = time.perf_counter() - started
    graph.write(str(folder / graph_name((near, far))), lists)
    return {"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_method(folder: Path, label: str, params: dict, graph_file: str | None, device: str) -> dict:
    import torch

    from csa_rerank import graph, h5io, knn, registry
    from csa_rerank.methods import METHODS

    query, db = h5io.read_array(folder / "testset.h5", "query"), h5io.read_array(folder / "testset.h5", "db")
    _, ranks = knn.search(query, db, min(len(db), 1000))
    kwargs = dict(params)
    if fitted_by := registry.method(label).fitted_by:
        kwargs["weights"] = torch.load(folder / f"{fitted_by}.pt", weights_only=True)
    if label == "GSS":
        kwargs["device"] = device
    if graph_file:
        kwargs["graph"] = graph.read(str(folder / graph_file))
    started = time.perf_counter()
    new_ranks = METHODS[label](query, db, ranks, **kwargs)
    seconds = time.perf_counter() - started
    np.save(folder / f"{label}-{'shared' if graph_file else 'own'}.npy".replace(" ", "_"), np.asarray(new_ranks))
    return {"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def fit_models(folder: Path) -> dict:
    """The learned methods' models (LAttQE, CRL), small and fitted on the database's own neighbour lists."""
    import torch

    from csa_rerank import h5io, knn
    from csa_rerank.methods import crl, lattqe

    db = h5io.read_array(folder / "testset.h5", "db")
    sample = np.random.default_rng(SEED).choice(len(db), min(len(db), 4000), replace=False)
    neighbours = knn.self_neighbours(db[sample], 64)
    clusters = np.arange(len(sample)) // 10
    models = {
        "lattqe": lattqe.fit(db[sample], neighbours, clusters, K_train=32, epochs=1, width=32, layers=1, heads=2),
        "crl": crl.fit(db[sample], neighbours, clusters, epochs=1),
    }
    for name, weights in models.items():
        with atomic.atomic_path(folder / f"{name}.pt") as temporary:  # a run stopped here leaves no partial file
            torch.save(weights, temporary)
    return {}


def in_subprocess(task: str, folder: Path, *args) -> dict:
    """Run ``task`` of this script in a fresh interpreter; its JSON result."""
    command = [sys.executable, __file__, "--task", task, "--folder", str(folder), "--args", json.dumps(args)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def methods(gss_epochs: int, gss_loss_columns: int) -> list[tuple[str, dict]]:
    from csa_rerank import registry

    settings = {"GSS": {"epochs": gss_epochs, "loss_columns": gss_loss_columns}}
    return [(m.label, settings.get(m.label, {})) for m in registry.METHODS if m.graph]


def graphless_methods() -> list[str]:
    """The compared methods that read descriptors but no graph (DSM, which reads images, and CSA left out)."""
    from csa_rerank import registry

    return [m.label for m in registry.METHODS if not (m.graph or m.needs_images or m.kind == registry.CSA)]


def rss(result: dict) -> str:
    """Peak RSS in GiB, or "-" for a measurement kept from a version of this script that did not record it."""
    return f"{result['peak_rss_gib']:.2f}" if "peak_rss_gib" in result else "-"


def report(args, widths, graph_result: dict, rows: list, method_rows: int, method_graph: dict | None) -> str:
    lines = [
        f"{platform.processor() or platform.machine()}, device {args.device}, torch's default threads; widths near "
        f"{widths[0]} / far {widths[1]}; {args.queries} queries, D = {args.dim}.",
        "",
        f"Graph of {args.rows:,} rows (graph.build from the file): **{graph_result['seconds']:.1f} s**, peak RSS "
        f"**{graph_result['peak_rss_gib']:.2f} GiB**.",
    ]
    if not rows:
        return "\n".join(lines)
    own_total = sum(own["seconds"] for _, _, own, _ in rows)
    shared_total = sum(shared["seconds"] for _, shared, _, _ in rows)
    lines += [
        "",
        f"Methods on {method_rows:,} rows (their graph: {method_graph['seconds']:.1f} s):",
        "",
        "| method | with the shared graph (s) | building its own (s) | peak RSS shared / own (GiB) | rankings "
        "identical |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {label} | {shared['seconds']:.1f} | {own['seconds']:.1f} | {rss(shared)} / {rss(own)} | "
              f"{'yes' if same else 'NO'} |" for label, shared, own, same in rows]  # fmt: skip
    with_graph = shared_total + method_graph["seconds"]
    lines += [
        f"| **sum** | **{shared_total:.1f}** + graph {method_graph['seconds']:.1f} = **{with_graph:.1f}** | "
        f"**{own_total:.1f}** | | |",
        "",
        f"Each method building its own graph takes {own_total / with_graph:.2f}x the time of all of them with the "
        "shared one (its graph included).",
    ]
    return "\n".join(lines)


class Measurements:
    """The finished measurements of one data folder, in its ``measurements.json``, saved after each one."""

    def __init__(self, folder: Path, data: dict):
        self.file = folder / "measurements.json"
        stored = json.loads(self.file.read_text()) if self.file.exists() else {"data": data, "results": {}}
        if stored["data"] != data:
            raise SystemExit(f"error: {folder} holds the data of {stored['data']}, not of {data}; give another "
                             "--workdir or empty this one")  # fmt: skip
        self.stored = stored

    def get(self, key: str, measure) -> dict:
        """The stored result of ``key``, or ``measure()``'s, stored first."""
        results = self.stored["results"]
        if key in results:
            print(f"{key}: kept from an earlier run", file=sys.stderr, flush=True)
        else:
            results[key] = measure()
            atomic.write_json(self.file, self.stored)
        return results[key]


def prepare(workdir: Path, rows: int, args) -> tuple[Path, Measurements]:
    """The folder of the ``rows``-row data (written unless there) and its measurements."""
    folder = workdir / f"rows-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    measurements = Measurements(folder, {"rows": rows, "queries": args.queries, "dim": args.dim, "seed": SEED})
    if not (folder / "testset.h5").exists():
        write_data(folder, rows, args.queries, args.dim)
    return folder, measurements


def graph_name(widths: tuple[int, int]) -> str:
    return f"graph-{widths[0]}-{widths[1]}.h5"


def measure_graph(folder: Path, measurements: Measurements, widths: tuple[int, int], device: str) -> dict:
    key = f"graph near={widths[0]} far={widths[1]} device={device}"
    return measurements.get(key, lambda: in_subprocess("graph", folder, *widths, device))


def report_graphless(rows: list[tuple[str, dict]], method_rows: int) -> str:
    lines = [
        "",
        f"Methods that read no graph, on {method_rows:,} rows:",
        "",
        "| method | time (s) | peak RSS (GiB) |",
        "|---|---:|---:|",
    ]
    return "\n".join(lines + [f"| {label} | {result['seconds']:.1f} | {rss(result)} |" for label, result in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=70)
    parser.add_argument("--method-rows", type=int, help="database rows of the method comparison (default: --rows)")
    parser.add_argument("--near", type=int, help="graph columns of nearest rows (default: config.yaml's)")
    parser.add_argument("--far", type=int, help="graph columns of least similar rows (default: config.yaml's)")
    parser.add_argument("--gss-epochs", type=int, default=2)
    parser.add_argument("--gss-loss-columns", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, help="keep data and measurements here, and resume from them")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:  # a measurement in this fresh process
        task = {"graph": run_graph, "method": run_method, "fit": fit_models}[args.task]
        print(json.dumps(task(args.folder, *json.loads(args.args))))
        return
    default_near, default_far = paper_widths()
    widths = (args.near or default_near, default_far if args.far is None else args.far)
    method_rows = args.rows if args.method_rows is None else args.method_rows
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        folder, measurements = prepare(workdir, args.rows, args)
        graph_result = measure_graph(folder, measurements, widths, args.device)
        print(f"graph of {args.rows:,} rows: {graph_result}", file=sys.stderr, flush=True)
        rows, method_graph = [], None
        if method_rows:
            if method_rows != args.rows:
                folder, measurements = prepare(workdir, method_rows, args)
                method_graph = measure_graph(folder, measurements, widths, args.device)
            else:
                method_graph = graph_result
            rows, rows_graphless = compare_methods(folder, measurements, widths, args)
    text = report(args, widths, graph_result, rows, method_rows, method_graph)
    if method_rows:
        text += "\n" + report_graphless(rows_graphless, method_rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def compare_methods(folder: Path, measurements: Measurements, widths: tuple[int, int], args) -> tuple[list, list]:
    """Every graph-reading method with the graph in ``folder`` and building its own: times, identical rankings.

    Every method with the shared graph first, then the methods that read no graph, then each graph-reading
    method building its own graph (the hours of the run): a run stopped early has the figures of the first two.
    """
    if not (folder / "lattqe.pt").exists() or not (folder / "crl.pt").exists():
        in_subprocess("fit", folder)
    results: dict[tuple[str, bool], dict] = {}
    for shared in (True, False):
        for label, params in methods(args.gss_epochs, args.gss_loss_columns):
            graph_file = graph_name(widths) if shared else None
            key = f"{label} {json.dumps(params, sort_keys=True)} graph={graph_file or 'own'} device={args.device}"
            measure = functools.partial(in_subprocess, "method", folder, label, params, graph_file, args.device)
            results[label, shared] = measurements.get(key, measure)
            print(f"{label}, {'shared' if shared else 'own'} graph: {results[label, shared]['seconds']:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        if shared:
            graphless = measure_graphless(folder, measurements, args.device)
    rows = []
    for label, _ in methods(args.gss_epochs, args.gss_loss_columns):
        name = label.replace(" ", "_")
        same = np.array_equal(np.load(folder / f"{name}-shared.npy"), np.load(folder / f"{name}-own.npy"))
        rows.append((label, results[label, True], results[label, False], same))
    return rows, graphless


def measure_graphless(folder: Path, measurements: Measurements, device: str) -> list[tuple[str, dict]]:
    """Every method that reads no graph, once: the time and peak RSS of its call on this database."""
    rows = []
    for label in graphless_methods():
        measure = functools.partial(in_subprocess, "method", folder, label, {}, None, device)
        rows.append((label, measurements.get(f"{label} {{}} graph=none device={device}", measure)))
        print(f"{label}: {rows[-1][1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    main()
