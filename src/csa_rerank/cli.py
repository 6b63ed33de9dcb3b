"""The ``csa-rerank`` command: re-rank your own retrieval results with CSA or any compared method.

Subcommands (``csa-rerank rerank --help`` and so on for each)::

    extract   descriptors of your images (a cirtorch checkpoint, an ImageNet body or random weights) -> .h5
    search    first-round top-k of query descriptors against a database (exact, memory-bounded)
    rerank    re-rank first-round lists with a method of csa_rerank.methods by label ("Ours" = CSA, --model)
    train     a CSA model on your labelled descriptors (one class/cluster id per row), resumable
    evaluate  mAP with a revisitop gnd file, or mAP/P@k from class labels

Descriptors: ``.npy``, ``.h5`` (``FILE:KEY``), texmex ``.fvecs`` or the authors' ``.pkl`` layout
(:mod:`csa_rerank.formats`); they must be finite and L2-normalised (``--normalise`` to normalise them).
Rankings: ``.h5`` or ``.npy``, optionally a TSV with image names.  Results go to stdout or the output files,
progress and messages to stderr; any error exits with status 1 and a message naming the file (and row or key),
leaving no output behind (:mod:`csa_rerank.atomic`).  Logic lives in :mod:`csa_rerank.api`; this module only
parses arguments, reads and writes files.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np

from csa_rerank import api, formats, jobs

PROGRAM = "csa-rerank"


class UsageError(ValueError):
    """A request that cannot be served (the message says why)."""


def _ranking_output(path: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in formats.RANKING_SUFFIXES:
        raise UsageError(f"{path}: rankings are written as {' or '.join(formats.RANKING_SUFFIXES)}")
    return path


def _descriptors(spec: str, normalise: bool) -> np.ndarray:
    return api.check_descriptors(formats.read_descriptors(spec), spec, normalise)


def _query_and_db(args) -> tuple[np.ndarray, np.ndarray]:
    query, db = _descriptors(args.query, args.normalise), _descriptors(args.db, args.normalise)
    if query.shape[1] != db.shape[1]:
        raise UsageError(f"{args.query}: {query.shape[1]}-d descriptors, but {args.db}: {db.shape[1]}-d")
    return query, db


def _k(args, n_db: int) -> int:
    if args.k is not None and not 1 <= args.k <= n_db:
        raise UsageError(f"--k {args.k}: {args.db} has {n_db} database rows")
    return n_db if args.k is None else args.k


def _names(args, n_query: int, n_db: int) -> tuple[list[str], list[str]]:
    """Query and database image names for the TSV: from a gnd file's qimlist/imlist or two name lists."""
    if args.gnd:
        from csa_rerank.datasets import load_ground_truth

        gnd = load_ground_truth(args.gnd)
        query_names, db_names = list(gnd["qimlist"]), list(gnd["imlist"])
        if (len(query_names), len(db_names)) != (n_query, n_db):
            raise UsageError(f"{args.gnd}: {len(query_names)} queries, {len(db_names)} images; not {n_query}, {n_db}")
        return query_names, db_names
    if not (args.query_names and args.db_names):
        raise UsageError("--tsv needs image names: --gnd, or --query-names and --db-names")
    return (
        formats.read_names(args.query_names, n_query, args.query),
        formats.read_names(args.db_names, n_db, args.db),
    )


def _write_rankings(args, ranks: np.ndarray, scores: np.ndarray | None, attrs: dict) -> None:
    names = _names(args, len(ranks), args.n_db) if args.tsv else None
    formats.write_ranks(args.out, ranks, scores, attrs)
    if names:
        formats.write_tsv(args.tsv, ranks, *names, args.tsv_top)
    _note(f"wrote {args.out}" + (f" and {args.tsv}" if args.tsv else "") + f": {ranks.shape[0]} x {ranks.shape[1]}")


def _note(message: str) -> None:
    print(message, file=sys.stderr)


# ------------------------------------------------------------------------------------------------------------
# subcommands


def run_search(args) -> None:
    _ranking_output(args.out)
    query, db = _query_and_db(args)
    args.n_db = len(db)
    scores, ranks = api.search(query, db, _k(args, len(db)), args.memory_gb)
    _write_rankings(args, ranks, scores, {"query": args.query, "db": args.db})


def _method_params(args) -> dict:
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE")
        import yaml

        params[key] = yaml.safe_load(value)
    if args.method == api.OURS:
        if not args.model:
            raise UsageError('--method "Ours" (CSA) needs --model MODEL.pt')
        params.update(model=args.model, K=args.K, L=args.L, precision=args.precision, batch_size=args.batch_size)
        params["device"] = "cuda" if args.gpu else "cpu"
    elif args.weights:
        params["weights"] = args.weights
    return params


def _first_round(args, query: np.ndarray, db: np.ndarray) -> np.ndarray:
    if not args.ranks:
        return api.search(query, db, _k(args, len(db)), args.memory_gb)[1]
    ranks = formats.read_ranks(args.ranks)
    if len(ranks) != len(query):
        raise UsageError(f"{args.ranks}: rankings of {len(ranks)} queries, but {args.query} has {len(query)}")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= len(db)):
        row = int(np.flatnonzero((ranks < 0).any(axis=1) | (ranks >= len(db)).any(axis=1))[0])
        raise UsageError(f"{args.ranks}: row {row} holds ids outside the {len(db)} rows of {args.db}")
    return ranks


def run_rerank(args) -> None:
    _ranking_output(args.out)
    if args.method not in api.registry_labels():
        raise UsageError(f"--method {args.method!r}: choose one of {', '.join(api.registry_labels())}")
    params = _method_params(args)
    query, db = _query_and_db(args)
    args.n_db = len(db)
    if args.method == api.OURS and max(args.K, args.L - 1) > len(db):
        raise UsageError(f"{args.db}: {len(db)} database rows, fewer than K={args.K} (and L-1={args.L - 1}) needs")
    ranks = _first_round(args, query, db)
    new_ranks = api.rerank(query, db, ranks, args.method, args.memory_gb, progress=True, **params)
    shown = {key: str(value) for key, value in params.items()}
    _write_rankings(args, new_ranks, None, {"method": args.method, "params": json.dumps(shown, sort_keys=True)})


def _recipe(args) -> tuple[dict, dict]:
    """The ``reranker`` and ``training`` sections of ``--recipe`` (the pipeline's config format), ``--L`` and
    ``--set`` applied."""
    import yaml

    config = {}
    if args.recipe:
        config = yaml.safe_load(Path(args.recipe).read_text()) or {}
    sections = {"reranker": dict(config.get("reranker", {})), "training": dict(config.get("training", {}))}
    sections["reranker"]["anchors"] = args.L or config.get("experiments", {}).get("L", 512)
    for item in args.set:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or section not in sections or not name:
            raise UsageError(f"--set {item!r}: expected reranker.KEY=VALUE or training.KEY=VALUE")
        sections[section][name] = yaml.safe_load(value)
    return sections["reranker"], sections["training"]


def run_train(args) -> None:
    from csa_rerank.training import configs_from_settings

    reranker, training = _recipe(args)
    try:  # before any work, so that a wrong key leaves no run folder behind
        configs_from_settings(reranker, training)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{args.recipe or '--set'}: {error}") from None
    features = _descriptors(args.features, args.normalise)
    labels = formats.read_labels(args.labels, len(features), args.features)
    device = "cuda" if args.gpu else "cpu"
    model = api.train(features, labels, args.out_dir, reranker, training, device, args.memory_gb, log=_note)
    print(model)


def run_evaluate(args) -> None:
    ranks = formats.read_ranks(args.ranks)
    if args.gnd:
        result = api.evaluate(ranks, args.gnd)
    elif args.query_labels and args.db_labels:
        query_labels = formats.read_labels(args.query_labels, len(ranks), args.ranks)
        db_labels = formats.read_labels(args.db_labels)
        if ranks.size and ranks.max() >= len(db_labels):
            raise UsageError(f"{args.db_labels}: {len(db_labels)} labels; {args.ranks} ranks larger ids")
        result = {"labels": api.evaluate_labels(ranks, query_labels, db_labels)}
    else:
        raise UsageError("evaluate needs --gnd, or --query-labels and --db-labels")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    columns = list(next(iter(result.values())))
    print("\t".join(["protocol", *columns]))
    for protocol, metrics in result.items():
        print("\t".join([protocol, *(f"{metrics[c]:.2f}" for c in columns)]))


def run_extract(args) -> None:
    from csa_rerank.extract import extract_descriptors, multiscale_power, pick_device
    from csa_rerank.h5io import write_arrays
    from csa_rerank.networks import build_configured_network

    if Path(args.out).suffix.lower() not in (".h5", ".hdf5"):
        raise UsageError(f"{args.out}: descriptors are written as .h5")
    paths = _image_paths(args.images)
    boxes = _boxes(args.boxes, len(paths)) if args.boxes else None
    spec = {"arch": args.arch, "pooling": args.pooling, "seed": args.seed}
    net, mean, std, _ = build_configured_network(spec, args.checkpoint, args.body_checkpoint)
    msp = multiscale_power(net) if args.msp == "auto" else float(args.msp)
    attrs = _extract_attrs(args, msp)
    arrays = _kept_arrays(args.out, args.key, attrs)  # before the extraction: a settings mismatch fails fast
    kwargs = {"mean": mean, "std": std} if mean else {}
    descriptors = extract_descriptors(
        net, paths, args.image_size, args.scales, msp, boxes, device=pick_device(args.gpu), **kwargs
    )
    names = np.array([str(p) for p in paths], dtype=object).astype("S")
    arrays.update({args.key: descriptors, f"{args.key}_names": names})
    write_arrays(args.out, arrays, attrs)
    _note(f"wrote {args.out}: {', '.join(f'{k} {v.shape}' for k, v in arrays.items() if v.ndim == 2)}")


def _extract_attrs(args, msp: float) -> dict:
    """The attributes stages.extract writes (the workflow's descriptor files), for these settings."""
    weights = args.checkpoint or args.body_checkpoint or f"random(seed={args.seed})"
    return {"network": args.network or f"{args.arch}-{args.pooling}", "post_whitening": "none", "arch": args.arch,
            "pooling": args.pooling, "image_size": args.image_size, "scales": args.scales, "msp": msp,
            "weights": weights}  # fmt: skip


def _kept_arrays(out: str, key: str, attrs: dict) -> dict[str, np.ndarray]:
    """The arrays of an existing ``out`` other than ``key`` (and its names), which the new file keeps beside it:
    ``db`` and then ``query`` extracted into one file, as the workflow's test sets.  Its settings must be these."""
    if not Path(out).is_file():
        return {}
    import h5py

    from csa_rerank.h5io import read_attrs

    old = {k: v.item() if isinstance(v, np.generic) else v for k, v in read_attrs(out).items()}
    new = {k: v if isinstance(v, str | int | float | bool) else json.dumps(v) for k, v in attrs.items()}
    differ = sorted(k for k in new if old.get(k) != new[k])
    if differ:
        changes = ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in differ)
        raise UsageError(f"{out}: holds descriptors of other settings ({changes}); write another file")
    with h5py.File(out, "r") as handle:
        return {name: handle[name][()] for name in handle if name not in (key, f"{key}_names")}


def _image_paths(images: list[str]) -> list[Path]:
    """Image files: the files given, the images of a folder given (sorted), or the lines of a .txt list."""
    paths = []
    for item in map(Path, images):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        elif item.suffix.lower() == ".txt" and item.is_file():
            paths += [Path(line.strip()) for line in item.read_text().splitlines() if line.strip()]
        else:
            paths.append(item)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise UsageError(f"image not found: {missing[0]}" if missing else "no images given")
    return paths


def _boxes(path: str, n_images: int) -> list[list[float]]:
    """Query boxes x1 y1 x2 y2, one line per image (in the order of the images)."""
    try:
        boxes = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: boxes must be 4 numbers a line ({error})") from None
    if boxes.shape != (n_images, 4):
        raise UsageError(f"{path}: {boxes.shape[0]} boxes of {boxes.shape[1]} numbers, expected {n_images} of 4")
    return boxes.tolist()


# ------------------------------------------------------------------------------------------------------------
# arguments


def _add_descriptor_pair(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="query descriptors: .npy, .h5[:KEY], .fvecs or .pkl[:KEY]")
    parser.add_argument("db", help="database descriptors, same formats (memory-mapped: .npy, .fvecs, plain .h5)")
    parser.add_argument("--normalise", action="store_true", help="L2-normalise rows that are not unit-norm")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="memory budget of search/re-ranking (4)")
    parser.add_argument("--k", type=int, help="first-round list length (default: the whole database)")


def _add_ranking_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="rankings to write: .h5 (ranks, scores) or .npy (ranks)")
    parser.add_argument("--tsv", help="also write the top results as TSV: query, rank, image")
    parser.add_argument("--tsv-top", type=int, default=100, help="results per query in the TSV (100)")
    parser.add_argument("--gnd", help="revisitop gnd_*.pkl whose qimlist/imlist name the rows (TSV)")
    parser.add_argument("--query-names", help="text file, one query image name a line (TSV)")
    parser.add_argument("--db-names", help="text file, one database image name a line (TSV)")


RERANK_MEMORY = """Re-rank first-round lists with a method of csa_rerank.methods by its label.

Memory on large databases (.npy/.fvecs/plain .h5 are memory-mapped; for every method but CSA a database not
stored as float32 is converted to a float32 copy in memory first; the rankings, --ranks or computed, are held
whole: Q x N' x 8 bytes, see --k):
  Ours (CSA)                 reads only the top-ranked rows of each block of queries; --memory-gb bounds it.
  SuperGlobal, CRL           read only the rows of the lists they re-rank (not bounded by --memory-gb).
  AQE, AQEwD, DQE, aQE,      score every database row (a pass over the whole memory map per block of
  LAttQE                     queries; the database is not copied).
  the DBA rows, LAttDBA,     need the whole database: an exact kNN graph over all of it (O(N^2 D) work,
  DFS, GSS, k-reciprocal     N x k ids in memory), and DBA/LAttDBA an augmented copy [N, D], GSS and
                             k-reciprocal a copy of the database stacked with the queries (GSS also its graph
                             network's activations for every row). --memory-gb does not bound them: plan for
                             several times N x D x 4 bytes of RAM, or use CSA.
"""


def _search_parser(commands) -> None:
    parser = commands.add_parser("search", help="first-round top-k by inner product (exact, memory-bounded)")
    _add_descriptor_pair(parser)
    _add_ranking_output(parser)
    parser.set_defaults(run=run_search)


def _rerank_parser(commands) -> None:
    parser = commands.add_parser(
        "rerank",
        help="re-rank first-round lists with a method by its label",
        description=RERANK_MEMORY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_descriptor_pair(parser)
    _add_ranking_output(parser)
    parser.add_argument("--method", default=api.OURS, help='method label of csa_rerank.methods ("Ours" = CSA)')
    parser.add_argument("--ranks", help="first-round rankings (.h5 or .npy); default: computed (see --k)")
    parser.add_argument("--model", help="CSA model file (model.pt), for --method Ours")
    parser.add_argument("--K", type=int, default=1024, help="candidates CSA re-ranks (1024)")
    parser.add_argument("--L", type=int, default=512, help="anchors: the model's input width (512)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    parser.add_argument("--batch-size", type=int, default=8, help="queries per CSA forward pass (8)")
    parser.add_argument("--weights", help="fitted weights of a learned compared method (LAttQE, CRL)")
    parser.add_argument("--param", action="append", default=[], help="a method parameter KEY=VALUE (repeatable)")
    parser.add_argument("--gpu", action="store_true", help="run CSA on CUDA")
    parser.set_defaults(run=run_rerank)


def _train_parser(commands) -> None:
    parser = commands.add_parser("train", help="train a CSA model on labelled descriptors (resumable)")
    parser.add_argument("features", help="training descriptors: .npy, .h5[:KEY], .fvecs or .pkl[:KEY]")
    parser.add_argument("--labels", required=True, help="class/cluster id per row (.npy or text); < 0: unlabelled")
    parser.add_argument("--out-dir", required=True, help="run folder: model.pt, checkpoint-last.pt, train_log.csv")
    parser.add_argument("--recipe", help="YAML with the pipeline's reranker/training sections (e.g. config.yaml)")
    parser.add_argument("--L", type=int, help="anchors (default: the recipe's experiments.L, else 512)")
    parser.add_argument("--set", action="append", default=[], help="override SECTION.KEY=VALUE (repeatable)")
    parser.add_argument("--normalise", action="store_true", help="L2-normalise rows that are not unit-norm")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="memory budget of the neighbour search (4)")
    parser.add_argument("--gpu", action="store_true", help="train on CUDA")
    parser.set_defaults(run=run_train)


def _evaluate_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="mAP of rankings: revisitop gnd, or class labels")
    parser.add_argument("ranks", help="rankings (.h5 or .npy), rows = queries")
    parser.add_argument("--gnd", help="revisitop gnd_*.pkl: mAP and mP@k, Easy/Medium/Hard")
    parser.add_argument("--query-labels", help="class id per query (.npy or text)")
    parser.add_argument("--db-labels", help="class id per database row (.npy or text)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run_evaluate)


def _extract_parser(commands) -> None:
    parser = commands.add_parser("extract", help="global descriptors of images (GeM, MAC, SPoC, R-MAC)")
    parser.add_argument("images", nargs="+", help="image files, folders of images or .txt lists of paths")
    parser.add_argument("--out", required=True, help="HDF5 file to write")
    parser.add_argument(
        "--key",
        default="db",
        help="dataset name in the file (db, query, ...); an existing file of the same settings keeps its other "
        "datasets, so db and query go to one file as the workflow's test sets (datasets.own descriptors)",
    )
    parser.add_argument("--network", help="network name stored in the file (default: ARCH-POOLING)")
    parser.add_argument("--arch", default="resnet101", choices=("resnet50", "resnet101", "resnet152", "vgg16"))
    parser.add_argument("--pooling", default="gem", choices=("gem", "mac", "spoc", "rmac"))
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="cirtorch network checkpoint (.pth)")
    weights.add_argument("--body-checkpoint", help="ImageNet body checkpoint (torchvision .pth)")
    weights.add_argument("--seed", type=int, default=0, help="random weights of this seed (tests, demos)")
    parser.add_argument("--image-size", type=int, default=1024, help="longest side in pixels (1024)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale factors (1.0)")
    parser.add_argument("--msp", default="auto", help="multi-scale power: auto (the network's GeM p) or a number")
    parser.add_argument("--boxes", help="query boxes: x1 y1 x2 y2 per line, one per image (crops the queries)")
    parser.add_argument("--gpu", action="store_true", help="extract on CUDA")
    parser.set_defaults(run=run_extract)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Re-rank your own retrieval results with CSA (NeurIPS 2021) or any compared method.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for add in (_extract_parser, _search_parser, _rerank_parser, _train_parser, _evaluate_parser):
        add(commands)
    return top


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr)


ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError, pickle.UnpicklingError)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns (and, as a script, exits with) 0, or 1 after an error message on stderr."""
    args = parser().parse_args(argv)
    jobs.share_the_cpu()  # before the subcommand loads torch
    warnings.showwarning = _show_warning
    try:
        args.run(args)
    except ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{PROGRAM} {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
