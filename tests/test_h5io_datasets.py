"""The HDF5 contract between stages and the on-disk dataset layouts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from csa_rerank import datasets, h5io
from csa_rerank.datasets import DatasetFormatError

# ----------------------------------------------------------------------------------------------------------------
# h5io


def test_write_and_read_round_trip_with_attrs(tmp_path):
    path = tmp_path / "sub" / "dir" / "descriptors.h5"  # parent folders are created
    db = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    ranks = np.arange(12, dtype=np.int32).reshape(3, 4)
    attrs = {
        "network": "gl18-tl-resnet101-gem-w",
        "image_size": 1024,
        "msp": 1.0,
        "whitened": True,
        "scales": [1, 2**0.5, 2**-0.5],
        "settings": {"batch_size": 16, "workers": [0, 1]},
    }
    h5io.write_arrays(path, {"db": db, "ranks": ranks}, attrs)
    assert sorted(p.name for p in path.parent.iterdir()) == ["descriptors.h5"]  # no .part left
    for name, array in (("db", db), ("ranks", ranks)):
        out = h5io.read_array(path, name)
        np.testing.assert_array_equal(out, array)
        assert out.dtype == array.dtype
    read = h5io.read_attrs(path)
    assert read["network"] == "gl18-tl-resnet101-gem-w"
    assert read["image_size"] == 1024 and read["msp"] == 1.0 and bool(read["whitened"]) is True
    # lists and dicts are stored as JSON text
    assert isinstance(read["scales"], str) and json.loads(read["scales"]) == [1, 2**0.5, 2**-0.5]
    assert json.loads(read["settings"]) == {"batch_size": 16, "workers": [0, 1]}


def test_chunks_are_applied(tmp_path):
    path = tmp_path / "affinity.h5"
    h5io.write_arrays(path, {"affinity": np.zeros((4, 3, 2), np.float32)}, chunks={"affinity": (1, 3, 2)})
    with h5py.File(path, "r") as handle:
        assert handle["affinity"].chunks == (1, 3, 2)


def test_failure_inside_atomic_h5_leaves_nothing(tmp_path):
    path = tmp_path / "knn.h5"
    with pytest.raises(RuntimeError, match="interrupted"):
        with h5io.atomic_h5(path) as handle:
            handle.create_dataset("ranks", data=np.arange(3))
            assert (tmp_path / "knn.h5.part").exists()  # written under the temporary name ...
            raise RuntimeError("interrupted")
    assert not path.exists()  # ... and neither name survives
    assert not (tmp_path / "knn.h5.part").exists()


def test_failed_rewrite_keeps_the_previous_file(tmp_path):
    path = tmp_path / "knn.h5"
    h5io.write_arrays(path, {"ranks": np.arange(3)})
    with pytest.raises(TypeError):
        h5io.write_arrays(path, {"ranks": np.arange(5), "bad": object()})
    np.testing.assert_array_equal(h5io.read_array(path, "ranks"), [0, 1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knn.h5"]


def test_read_array_names_file_and_dataset(tmp_path):
    path = tmp_path / "roxford5k.h5"
    h5io.write_arrays(path, {"db": np.zeros((2, 2)), "query": np.zeros((1, 2))})
    with pytest.raises(KeyError) as info:
        h5io.read_array(path, "train")
    message = str(info.value)
    assert str(path) in message and "'train'" in message and "db, query" in message


# ----------------------------------------------------------------------------------------------------------------
# datasets


def _pickle(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def test_load_ground_truth_real_file(roxford_gnd_path):
    cfg = datasets.load_ground_truth(roxford_gnd_path)
    assert len(cfg["imlist"]) == 4993 and len(cfg["gnd"]) == len(cfg["qimlist"]) == 70


def test_load_ground_truth_rejects_missing_keys(tmp_path):
    path = _pickle(tmp_path / "gnd_broken.pkl", {"imlist": ["a"], "gnd": []})
    with pytest.raises(DatasetFormatError, match="lacks qimlist") as info:
        datasets.load_ground_truth(path)
    assert str(path) in str(info.value)
    path = _pickle(tmp_path / "gnd_list.pkl", [1, 2, 3])
    with pytest.raises(DatasetFormatError, match="lacks imlist, qimlist, gnd") as info:
        datasets.load_ground_truth(path)
    assert str(path) in str(info.value)
    assert issubclass(DatasetFormatError, ValueError)


def test_load_ground_truth_rejects_query_count_mismatch(tmp_path):
    path = _pickle(tmp_path / "gnd_x.pkl", {"imlist": ["a"], "qimlist": ["q1", "q2"], "gnd": [{"bbx": [0, 0, 1, 1]}]})
    with pytest.raises(DatasetFormatError, match="2 queries but 1 gnd entries"):
        datasets.load_ground_truth(path)


def test_test_image_paths(tmp_path):
    gnd = {
        "imlist": ["all_souls_000013", "oxford_002985"],
        "qimlist": ["bodleian_000132"],
        "gnd": [{"bbx": [93, 110, 580.5, 925], "easy": [], "hard": [], "junk": []}],
    }
    db, queries, bbxs = datasets.test_image_paths(tmp_path / "roxford5k", gnd)
    assert db == [tmp_path / "roxford5k/jpg/all_souls_000013.jpg", tmp_path / "roxford5k/jpg/oxford_002985.jpg"]
    assert queries == [tmp_path / "roxford5k/jpg/bodleian_000132.jpg"]
    assert bbxs == [[93.0, 110.0, 580.5, 925.0]] and all(isinstance(v, float) for v in bbxs[0])


def test_distractor_image_paths(tmp_path):
    listing = tmp_path / "revisitop1m" / "revisitop1m.txt"
    listing.parent.mkdir()
    listing.write_text("a/b/000001.jpg\n\n  c/000002.jpg  \nd.jpg")
    root = tmp_path / "revisitop1m" / "jpg"
    assert datasets.distractor_image_paths(listing) == [root / "a/b/000001.jpg", root / "c/000002.jpg", root / "d.jpg"]
    listing.write_text("\n  \n")
    with pytest.raises(DatasetFormatError, match="revisitop1m.txt: the distractor list is empty"):
        datasets.distractor_image_paths(listing)


def test_cid_path_layout():
    # cirtorch: ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>
    cid = "0123456789abcdef"
    assert datasets.cid_path("/data/ims", cid) == Path("/data/ims/ef/cd/ab/0123456789abcdef")


def test_load_training_db(tmp_path):
    good = {
        split: {"cids": ["aa11", "bb22"], "cluster": [0, 1], "qidxs": [0], "pidxs": [1]} for split in ("train", "val")
    }
    assert datasets.load_training_db(_pickle(tmp_path / "good.pkl", good))["val"]["cids"] == ["aa11", "bb22"]
    bad_cases = [
        ({"train": good["train"]}, "lacks the 'val' split"),
        ({"train": {"cids": ["x"]}, "val": good["val"]}, "split 'train' lacks 'cluster'"),
        ({"train": good["train"], "val": {"cids": ["x", "y"], "cluster": [0]}}, "unequal 'cids' and 'cluster'"),
    ]
    for i, (obj, message) in enumerate(bad_cases):
        path = _pickle(tmp_path / f"bad{i}.pkl", obj)
        with pytest.raises(DatasetFormatError, match=message) as info:
            datasets.load_training_db(path)
        assert str(path) in str(info.value)


def test_searched_image_paths_put_distractors_after_the_test_set(tmp_path):
    root = tmp_path / "roxford5k"
    root.mkdir()
    gnd = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"bbx": [1, 2, 3, 4]}]}
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd))
    listing = tmp_path / "revisitop1m" / "revisitop1m.txt"
    listing.parent.mkdir()
    listing.write_text("x/1.jpg\ny/2.jpg\n")
    loaded, db, queries, bbxs = datasets.searched_image_paths(root / "gnd_roxford5k.pkl", listing)
    assert loaded["imlist"] == ["a", "b"]
    distractors = [listing.parent / "jpg/x/1.jpg", listing.parent / "jpg/y/2.jpg"]
    assert db == [root / "jpg/a.jpg", root / "jpg/b.jpg", *distractors]
    assert queries == [root / "jpg/q.jpg"] and bbxs == [[1.0, 2.0, 3.0, 4.0]]
    assert datasets.searched_image_paths(root / "gnd_roxford5k.pkl")[1] == db[:2]
