"""The ``csa-rerank`` command and the API under it (csa_rerank.cli, csa_rerank.api, csa_rerank.formats).

Error paths run on small synthetic arrays; the end-to-end test drives the command on the real ROxf descriptors of
../shared/data (skipped without them): search -> train on two thirds of the landmarks -> re-rank the held-out
third with CSA -> evaluate, checked against the same steps through the Python API and, for "k-reciprocal",
against the pipeline's stage.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from csa_rerank import api, compare, formats, safe_pickle
from csa_rerank.methods import csa
from csa_rerank.model import CSAConfig, CSAReranker, save_model

SRC = Path(__file__).resolve().parents[1] / "src"
SUBCOMMANDS = ("extract", "search", "rerank", "train", "evaluate")


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m csa_rerank ARGS`` in a fresh process running this checkout's package, one thread."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "csa_rerank", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def small(tmp_path) -> dict[str, Path]:
    """5 unit-norm queries and 40 database rows (16-d) as .npy files, and a CSA model of L = 8 anchors."""
    np.save(tmp_path / "q.npy", unit_rows(5, 16, 0))
    np.save(tmp_path / "db.npy", unit_rows(40, 16, 1))
    torch.manual_seed(0)
    save_model(CSAReranker(CSAConfig(anchors=8, hidden=16, depth=1, heads=2)), tmp_path / "model.pt")
    return {"q": tmp_path / "q.npy", "db": tmp_path / "db.npy", "model": tmp_path / "model.pt", "dir": tmp_path}


def assert_refused(result: subprocess.CompletedProcess, out: Path, *fragments: str) -> None:
    """Exit status 1, an error on stderr holding every fragment, nothing on stdout, no output file."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


# ------------------------------------------------------------------------------------------------------------
# conventions


def test_every_subcommand_has_help():
    for command in SUBCOMMANDS:
        result = run_cli(command, "--help")
        assert result.returncode == 0 and f"usage: csa-rerank {command}" in result.stdout


def test_pyproject_declares_the_console_script():
    text = (SRC.parent / "pyproject.toml").read_text()
    assert 'csa-rerank = "csa_rerank.cli:main"' in text


# ------------------------------------------------------------------------------------------------------------
# error paths: a message naming the file (and row or key), exit status 1, no output


def test_query_and_database_of_different_dimensions(small):
    np.save(small["dir"] / "q8.npy", unit_rows(5, 8, 2))
    out = small["dir"] / "r.h5"
    result = run_cli("search", small["dir"] / "q8.npy", small["db"], "--out", out)
    assert_refused(result, out, "q8.npy: 8-d descriptors", "db.npy: 16-d")


def test_model_trained_with_another_L(small):
    out = small["dir"] / "r.npy"
    result = run_cli("rerank", small["q"], small["db"], "--model", small["model"], "--K", 10, "--L", 6, "--out", out)
    assert_refused(result, out, "model.pt was trained with L=8 anchors, not L=6")


def test_K_larger_than_the_database(small):
    out = small["dir"] / "r.npy"
    result = run_cli("rerank", small["q"], small["db"], "--model", small["model"], "--K", 50, "--L", 8, "--out", out)
    assert_refused(result, out, "db.npy: 40 database rows, fewer than K=50")


def test_nan_rows_are_refused(small):
    query = unit_rows(5, 16, 0)
    query[3, 7] = np.nan
    np.save(small["q"], query)
    out = small["dir"] / "r.h5"
    assert_refused(run_cli("search", small["q"], small["db"], "--out", out), out, "q.npy: row 3 holds NaN")


def test_unnormalised_rows_are_refused_unless_asked(small):
    db = unit_rows(40, 16, 1)
    db[5] *= 3
    np.save(small["db"], db)
    out = small["dir"] / "r.h5"
    result = run_cli("search", small["q"], small["db"], "--out", out)
    assert_refused(result, out, "db.npy: row 5 has L2 norm 3, not 1", "--normalise")
    result = run_cli("search", small["q"], small["db"], "--out", out, "--normalise")
    assert result.returncode == 0 and "normalised 1 of 40 rows" in result.stderr
    _, expected = api.search(unit_rows(5, 16, 0), unit_rows(40, 16, 1))
    assert np.array_equal(formats.read_ranks(out), expected)


class _RunsCode:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_a_malicious_pickle_is_refused_without_running_it(small):
    sentinel = small["dir"] / "pwned"
    with open(small["dir"] / "db.pkl", "wb") as handle:
        pickle.dump({"db": _RunsCode(sentinel)}, handle)
    out = small["dir"] / "r.h5"
    result = run_cli("search", small["q"], f"{small['dir'] / 'db.pkl'}:db", "--out", out)
    assert_refused(result, out, "db.pkl: refusing to load", "system")
    assert not sentinel.exists()


def test_wrong_recipe_key_leaves_no_run_folder(small):
    np.save(small["dir"] / "labels.npy", np.arange(40) % 4)
    run_dir = small["dir"] / "run"
    result = run_cli("train", small["db"], "--labels", small["dir"] / "labels.npy", "--out-dir", run_dir,
                     "--set", "training.epochz=3")  # fmt: skip
    assert_refused(result, run_dir, "epochz")


# ------------------------------------------------------------------------------------------------------------
# formats and the API


def test_descriptor_formats_read_the_same_rows(tmp_path):
    x = unit_rows(30, 12, 3)
    np.save(tmp_path / "x.npy", x)
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["db"], handle["query"] = x, x[:3]
    words = np.concatenate([np.full((30, 1), 12, np.int32), x.view(np.int32)], axis=1)
    words.tofile(tmp_path / "x.fvecs")
    safe_pickle.dump({"db": x, "query": x[:3]}, tmp_path / "x.pkl")
    for spec in ("x.npy", "x.h5:db", "x.fvecs", "x.pkl:db"):
        assert np.array_equal(formats.read_descriptors(tmp_path / spec), x), spec
    assert isinstance(formats.read_descriptors(tmp_path / "x.h5:db"), np.memmap)
    with pytest.raises(KeyError, match=r"x\.h5: holds db, query; name one"):
        formats.read_descriptors(tmp_path / "x.h5")
    with pytest.raises(KeyError, match=r"x\.pkl: no array 'train'"):
        formats.read_descriptors(f"{tmp_path / 'x.pkl'}:train")


def test_blockwise_csa_equals_csa_on_the_whole_database(monkeypatch):
    query, db = unit_rows(12, 16, 4), unit_rows(300, 16, 5)
    _, ranks = api.search(query, db)
    torch.manual_seed(1)
    model = CSAReranker(CSAConfig(anchors=8, hidden=16, depth=1, heads=2)).eval()
    expected = csa.rerank(query, db, ranks, model, K=20, L=8, precision="fp32", batch_size=4)
    # a budget of a few query blocks: the gathered rows are read block by block from a memory map
    memory_gb = 3 * 8 * 20 * 16 * 4 / 2**30
    got = api.rerank(query, db, ranks, "Ours", memory_gb, model=model, K=20, L=8, precision="fp32", batch_size=4)
    assert np.array_equal(got, expected)


def test_evaluate_from_class_labels(tmp_path):
    ranks = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    np.save(tmp_path / "r.npy", ranks)
    np.savetxt(tmp_path / "q.txt", [0, 1], fmt="%d")
    np.savetxt(tmp_path / "db.txt", [0, 1, 0, 1], fmt="%d")
    result = run_cli("evaluate", tmp_path / "r.npy", "--query-labels", tmp_path / "q.txt",
                     "--db-labels", tmp_path / "db.txt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # query 0: positives at ranks 1, 3 -> AP (1 + 1)/2/2 + (1/2 + 2/3)/2/2 = 0.7917; query 1: ranks 1, 3 likewise
    assert result.stdout.splitlines()[1].split("\t")[:2] == ["labels", "79.17"]


# ------------------------------------------------------------------------------------------------------------
# extract: a torchvision body with random weights, on generated photos

NETWORK = {"arch": "resnet50", "pooling": "gem", "seed": 3}
SETTINGS = {"image_size": 64, "scales": [1.0, 0.7071067811865476], "msp": 1.0, "batch_size": 16, "workers": 0}
EXTRACT_ARGS = ["--arch", "resnet50", "--pooling", "gem", "--seed", "3", "--network", "mine", "--image-size", "64",
                "--scales", "1.0", "0.7071067811865476", "--msp", "1"]  # fmt: skip


def _photos(folder: Path, names: list[str], seed: int) -> list[Path]:
    """JPEGs of different sizes in revisitop's layout (``folder/<name>.jpg``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        pixels = rng.integers(0, 256, (40 + 12 * i, 72, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.jpg")
    return [folder / f"{name}.jpg" for name in names]


def test_extract_writes_the_workflow_descriptor_file(tmp_path, torch_single_thread):
    """db (a folder) then query (files cropped by their boxes) into one file: the arrays and the attributes the
    workflow's extraction (stages.extract) writes for a test set, the descriptors of extract_descriptors."""
    from csa_rerank import stages
    from csa_rerank.extract import extract_descriptors
    from csa_rerank.networks import build_configured_network

    db_images = _photos(tmp_path / "test" / "jpg", ["db0", "db1", "db2", "db3"], 0)
    query_images = _photos(tmp_path / "queries", ["q0", "q1"], 1)
    boxes = [[4.0, 6.0, 50.0, 30.0], [0.0, 10.0, 40.0, 45.0]]
    np.savetxt(tmp_path / "boxes.txt", boxes)
    out = tmp_path / "mine.h5"
    result = run_cli("extract", tmp_path / "test" / "jpg", "--out", out, *EXTRACT_ARGS)
    assert result.returncode == 0 and result.stdout == "", result.stderr
    result = run_cli("extract", *query_images, "--key", "query", "--boxes", tmp_path / "boxes.txt", "--out", out,
                     *EXTRACT_ARGS)  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result.stderr
    net = build_configured_network(NETWORK)[0]
    expected = {
        "db": extract_descriptors(net, db_images, 64, SETTINGS["scales"], 1.0),
        "query": extract_descriptors(net, query_images, 64, SETTINGS["scales"], 1.0, boxes),
    }
    # the workflow's descriptor file of the same images as a test set
    shutil.copytree(tmp_path / "queries", tmp_path / "test" / "jpg", dirs_exist_ok=True)
    gnd = {"imlist": ["db0", "db1", "db2", "db3"], "qimlist": ["q0", "q1"], "gnd": [{"bbx": box} for box in boxes]}
    safe_pickle.dump(gnd, tmp_path / "test" / "gnd_test.pkl")
    workflow_file = tmp_path / "workflow.h5"
    stages.extract("test", str(tmp_path / "test" / "gnd_test.pkl"), str(tmp_path / "test" / "jpg"), "mine",
                   NETWORK, SETTINGS, str(workflow_file), use_gpu=False)  # fmt: skip
    with h5py.File(out) as mine, h5py.File(workflow_file) as theirs:
        assert set(mine) == {"db", "query", "db_names", "query_names"} and dict(mine.attrs) == dict(theirs.attrs)
        assert [Path(name.decode()).name for name in mine["query_names"][()]] == ["q0.jpg", "q1.jpg"]
        for key in ("db", "query"):
            x = mine[key][()]
            assert x.dtype == np.float32 and x.shape == (len(expected[key]), 2048)
            np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(x, expected[key], rtol=0, atol=1e-5)
            np.testing.assert_allclose(x, theirs[key][()], rtol=0, atol=1e-5)
    # the file is a test set given as descriptors (datasets.own.<name>.descriptors)
    stages.import_descriptors("test", str(out), "mine", str(tmp_path / "imported.h5"))


def test_extract_errors_leave_no_output(tmp_path):
    images = _photos(tmp_path / "jpg", ["a", "b"], 0)
    out = tmp_path / "out.h5"
    missing = tmp_path / "jpg" / "nowhere.jpg"
    assert_refused(
        run_cli("extract", images[0], missing, "--out", out, *EXTRACT_ARGS), out, f"image not found: {missing}"
    )
    # an unreadable image, found while extracting: named, nothing written
    (tmp_path / "jpg" / "broken.jpg").write_bytes(b"not a jpeg")
    assert_refused(run_cli("extract", tmp_path / "jpg", "--out", out, *EXTRACT_ARGS), out, "broken.jpg")
    np.savetxt(tmp_path / "boxes.txt", [[0, 0, 10, 10]])
    assert_refused(run_cli("extract", *images, "--boxes", tmp_path / "boxes.txt", "--out", out, *EXTRACT_ARGS), out,
                   "boxes.txt: 1 boxes of 4 numbers, expected 2 of 4")  # fmt: skip
    # a file of other settings is not extended: the error names the differing setting, the file is unchanged
    with h5py.File(out, "w") as handle:
        handle["db"] = unit_rows(2, 2048, 0)
        handle.attrs.update(network="mine", image_size=128)
    before = out.read_bytes()
    result = run_cli("extract", *images, "--key", "query", "--out", out, *EXTRACT_ARGS)
    assert result.returncode == 1 and "holds descriptors of other settings" in result.stderr, result.stderr
    assert "image_size 128 -> 64" in result.stderr and out.read_bytes() == before


# ------------------------------------------------------------------------------------------------------------
# end to end on real descriptors


def _fold_labels(gnd: list[dict], n_db: int, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(database labels: the landmark of the positives of the training queries, -1 elsewhere; held-out queries)."""
    from test_training_real import landmarks_of_queries

    landmark = landmarks_of_queries(gnd)
    labels = np.full(n_db, -1, dtype=np.int64)
    for q, entry in enumerate(gnd):
        if landmark[q] not in held_out:
            labels[np.concatenate([entry["easy"], entry["hard"]]).astype(int)] = landmark[q]
    return labels, np.flatnonzero(np.isin(landmark, held_out))


RECIPE = """\
reranker: {hidden: 32, depth: 1, heads: 4}
training: {epochs: 6, warmup_epochs: 1, batch_size: 64, lr: 0.05, lr_rule: paper, K_train: 64, seed: 0}
experiments: {L: 64}
"""


@pytest.mark.e2e
def test_cli_end_to_end_on_real_descriptors(lopq_descriptors, roxford_gnd, tmp_path, torch_single_thread):
    query, db = lopq_descriptors
    labels, held_out = _fold_labels(roxford_gnd["gnd"], len(db), np.arange(0, 12, 3))
    fold_gnd = {**roxford_gnd, "qimlist": [roxford_gnd["qimlist"][q] for q in held_out],
                "gnd": [roxford_gnd["gnd"][q] for q in held_out]}  # fmt: skip
    files = {name: tmp_path / name for name in ("q.npy", "q_held.npy", "db.npy", "labels.npy", "recipe.yaml")}
    np.save(files["q.npy"], query), np.save(files["q_held.npy"], query[held_out]), np.save(files["db.npy"], db)
    np.save(files["labels.npy"], labels)
    files["recipe.yaml"].write_text(RECIPE)
    safe_pickle.dump(fold_gnd, tmp_path / "gnd_fold.pkl")

    steps = [
        ("search", files["q.npy"], files["db.npy"], "--out", tmp_path / "first.h5"),
        ("train", files["db.npy"], "--labels", files["labels.npy"], "--recipe", files["recipe.yaml"],
         "--out-dir", tmp_path / "run"),
        ("rerank", files["q_held.npy"], files["db.npy"], "--method", "Ours", "--model", tmp_path / "run" / "model.pt",
         "--K", 64, "--L", 64, "--precision", "fp32", "--out", tmp_path / "csa.h5", "--tsv", tmp_path / "csa.tsv",
         "--gnd", tmp_path / "gnd_fold.pkl", "--tsv-top", 5),
        ("evaluate", tmp_path / "csa.h5", "--gnd", tmp_path / "gnd_fold.pkl"),
    ]  # fmt: skip
    for step in steps:
        result = run_cli(*step)
        assert result.returncode == 0, f"{step[0]}: {result.stderr}"
    printed = result.stdout

    # the same steps through the API, in this process
    _, ranks = api.search(query[held_out], db)
    model = api.train(db, labels, tmp_path / "api_run", {"hidden": 32, "depth": 1, "heads": 4, "anchors": 64},
                      {"epochs": 6, "warmup_epochs": 1, "batch_size": 64, "lr": 0.05, "lr_rule": "paper",
                       "K_train": 64, "seed": 0}, log=lambda message: None, progress=False)  # fmt: skip
    for name, weights in torch.load(model, weights_only=True)["state_dict"].items():
        assert torch.equal(weights, torch.load(tmp_path / "run" / "model.pt")["state_dict"][name]), name
    new_ranks = api.rerank(query[held_out], db, ranks, "Ours", model=model, K=64, L=64, precision="fp32")
    result = api.evaluate(new_ranks, tmp_path / "gnd_fold.pkl")
    expected = "\n".join(f"{p}\t" + "\t".join(f"{v:.2f}" for v in result[p].values()) for p in result)
    assert printed.splitlines()[1:] == expected.splitlines()
    first = api.evaluate(ranks, fold_gnd)
    print(f"\n{len(held_out)} held-out queries, mAP first round -> CSA (CLI): "
          + ", ".join(f"{p} {first[p]['mAP']:.2f} -> {result[p]['mAP']:.2f}" for p in result))  # fmt: skip
    tsv = (tmp_path / "csa.tsv").read_text().splitlines()
    assert tsv[0] == "query\trank\timage" and len(tsv) == 1 + 5 * len(held_out)


@pytest.mark.e2e
def test_cli_k_reciprocal_equals_the_pipeline_stage(lopq_descriptors, tmp_path):
    query, db = lopq_descriptors
    np.save(tmp_path / "q.npy", query), np.save(tmp_path / "db.npy", db)
    with h5py.File(tmp_path / "testset.h5", "w") as handle:
        handle["query"], handle["db"] = query, db
    _, ranks = api.search(query, db)
    with h5py.File(tmp_path / "knn.h5", "w") as handle:
        handle["ranks"] = ranks.astype(np.int32)
    compare.rerank_method("k-reciprocal", {}, tmp_path / "testset.h5", None, tmp_path / "knn.h5", tmp_path / "p.h5")
    result = run_cli("rerank", tmp_path / "q.npy", tmp_path / "db.npy", "--method", "k-reciprocal",
                     "--ranks", tmp_path / "knn.h5", "--out", tmp_path / "cli.npy")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "cli.npy"), formats.read_ranks(tmp_path / "p.h5"))
