"""The demo benchmark generator: determinism and the exact on-disk formats of revisitop, R1M and rSfM120k."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from csa_rerank import datasets, demo, safe_pickle

IMAGE_SIZE = 48  # tiny photos keep the tests fast; the formats do not depend on the size
PHOTO_SIZE = (48, 36)
TEST_SET = dict(n_landmarks=3, db_views_per_landmark=6, queries_per_landmark=2, n_background=3)
TRAINING = dict(n_clusters=4, n_val_clusters=2, images_per_cluster=5)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("roxford5k")
    returned = demo.generate_test_set(out, "roxford5k", seed=3, image_size=IMAGE_SIZE, **TEST_SET)
    return out, returned


@pytest.fixture(scope="module")
def distractors(tmp_path_factory):
    out = tmp_path_factory.mktemp("revisitop1m")
    return out, demo.generate_distractors(out, seed=3, n_images=12, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def training_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("rsfm120k")
    return out, demo.generate_training_set(out, seed=3, image_size=IMAGE_SIZE, **TRAINING)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------------------
# determinism


def test_same_seed_gives_identical_files(tmp_path, test_set):
    first, _ = test_set
    demo.generate_test_set(tmp_path, "roxford5k", seed=3, image_size=IMAGE_SIZE, **TEST_SET)
    assert _files(tmp_path) == _files(first)
    for name in ["gnd_roxford5k.pkl", *_files(tmp_path)[:5]]:
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name


def test_different_seed_or_name_gives_different_data(tmp_path, test_set):
    first, gnd = test_set
    reseeded = demo.generate_test_set(tmp_path / "s", "roxford5k", seed=4, image_size=IMAGE_SIZE, **TEST_SET)
    assert (tmp_path / "s" / "gnd_roxford5k.pkl").read_bytes() != (first / "gnd_roxford5k.pkl").read_bytes()
    assert reseeded["imlist"] != gnd["imlist"]
    # a second set under the same seed (RPar beside ROxf) shows other landmarks
    other_name = demo.generate_test_set(tmp_path / "n", "rparis6k", seed=3, image_size=IMAGE_SIZE, **TEST_SET)
    theirs = tmp_path / "n" / "jpg" / f"{other_name['qimlist'][0]}.jpg"
    ours = first / "jpg" / f"{gnd['qimlist'][0]}.jpg"
    assert theirs.read_bytes() != ours.read_bytes()


def test_training_and_distractors_are_deterministic(tmp_path, training_set, distractors):
    demo.generate_training_set(tmp_path / "t", seed=3, image_size=IMAGE_SIZE, **TRAINING)
    demo.generate_distractors(tmp_path / "d", seed=3, n_images=12, image_size=IMAGE_SIZE)
    for ours, theirs in ((tmp_path / "t", training_set[0]), (tmp_path / "d", distractors[0])):
        assert _files(ours) == _files(theirs)
        for name in _files(ours)[:4] + _files(ours)[-2:]:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    changed = demo.generate_training_set(tmp_path / "t2", seed=5, image_size=IMAGE_SIZE, **TRAINING)
    assert changed["train"]["cids"] != training_set[1]["train"]["cids"]


def test_no_temporary_files_are_left(test_set, distractors, training_set):
    for root in (test_set[0], distractors[0], training_set[0]):
        assert not [name for name in _files(root) if name.endswith((".part", ".tmp"))]


# ------------------------------------------------------------------------------------------------------------
# revisitop test set


def test_ground_truth_layout(test_set):
    out, returned = test_set
    gnd = safe_pickle.load(out / "gnd_roxford5k.pkl")
    assert gnd == returned
    assert set(gnd) == {"imlist", "qimlist", "gnd"}
    n_db = TEST_SET["n_landmarks"] * TEST_SET["db_views_per_landmark"] + TEST_SET["n_background"]
    n_query = TEST_SET["n_landmarks"] * TEST_SET["queries_per_landmark"]
    assert len(gnd["imlist"]) == len(set(gnd["imlist"])) == n_db
    assert len(gnd["qimlist"]) == len(set(gnd["qimlist"])) == len(gnd["gnd"]) == n_query
    assert not set(gnd["imlist"]) & set(gnd["qimlist"]), "queries must not be in the database"
    for name in gnd["imlist"] + gnd["qimlist"]:
        assert isinstance(name, str) and not name.endswith(".jpg")
    for entry in gnd["gnd"]:
        assert list(entry) == ["bbx", "easy", "hard", "junk"]
        for label in ("easy", "hard", "junk"):
            assert all(type(i) is int and 0 <= i < n_db for i in entry[label])
            assert entry[label] == sorted(entry[label])
        assert not set(entry["easy"]) & set(entry["hard"])
        assert not (set(entry["easy"]) | set(entry["hard"])) & set(entry["junk"])
        assert entry["easy"] + entry["hard"], "every query has positives"


def test_labels_point_at_photos_of_the_query_landmark(test_set):
    _, gnd = test_set
    for query, entry in zip(gnd["qimlist"], gnd["gnd"], strict=True):
        landmark = query.rsplit("_", 1)[0]
        labelled = entry["easy"] + entry["hard"] + entry["junk"]
        photos = [i for i, name in enumerate(gnd["imlist"]) if name.startswith(landmark + "_")]
        assert sorted(labelled) == photos
    # queries of one landmark share its ground truth, as revisitop's do
    per_landmark = TEST_SET["queries_per_landmark"]
    assert gnd["gnd"][0]["easy"] == gnd["gnd"][per_landmark - 1]["easy"]
    assert sum(n.startswith("street_") for n in gnd["imlist"]) == TEST_SET["n_background"]


def test_images_and_query_boxes(test_set):
    out, gnd = test_set
    assert _files(out) == sorted(["gnd_roxford5k.pkl"] + [f"jpg/{n}.jpg" for n in gnd["imlist"] + gnd["qimlist"]])
    for name in gnd["imlist"][:3] + gnd["qimlist"]:
        with Image.open(out / "jpg" / f"{name}.jpg") as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == PHOTO_SIZE
    width, height = PHOTO_SIZE
    for entry in gnd["gnd"]:
        x1, y1, x2, y2 = entry["bbx"]
        assert all(type(v) is float for v in entry["bbx"])
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        # nearly the whole photo, so the cropped query keeps the database photos' size (see demo._query_box)
        assert x2 - x1 >= demo.QUERY_BOX_MIN_SHARE * width - 0.1
        assert y2 - y1 >= demo.QUERY_BOX_MIN_SHARE * height - 0.1


def test_query_box_encloses_the_landmark_and_stays_inside():
    # grown about its centre, then pushed back inside the photo
    assert demo._query_box((10, 5, 30, 20), (100, 80), min_share=0.5) == [0.0, 0.0, 50.0, 40.0]
    assert demo._query_box((60, 50, 100, 80), (100, 80), min_share=0.5) == [50.0, 40.0, 100.0, 80.0]
    # a landmark larger than the minimum keeps its own box
    assert demo._query_box((5, 5, 95, 75), (100, 80), min_share=0.5) == [5.0, 5.0, 95.0, 75.0]


def test_labels_follow_visibility():
    assert demo._label("easy", {"visible": 0.95, "area": 0.5}) == "easy"
    assert demo._label("easy", {"visible": 0.6, "area": 0.5}) == "hard"
    assert demo._label("hard", {"visible": 0.95, "area": 0.5}) == "hard"
    assert demo._label("easy", {"visible": 0.2, "area": 0.5}) == "junk"
    assert demo._label("hard", {"visible": 0.9, "area": 0.01}) == "junk"


# ------------------------------------------------------------------------------------------------------------
# R1M distractors


def test_distractor_list_matches_files(distractors):
    out, paths = distractors
    listed = (out / "revisitop1m.txt").read_text().splitlines()
    assert listed == paths and len(listed) == len(set(listed)) == 12
    assert _files(out) == sorted(["revisitop1m.txt"] + [f"jpg/{p}" for p in listed])
    for path in listed:
        assert re.fullmatch(r"[0-9a-f]/[0-9a-f]+\.jpg", path)
        with Image.open(out / "jpg" / path) as img:
            assert img.format == "JPEG" and img.size == PHOTO_SIZE


# ------------------------------------------------------------------------------------------------------------
# retrieval-SfM-120k training set


def test_training_pickle_layout(training_set):
    out, returned = training_set
    db = safe_pickle.load(out / "retrieval-SfM-120k.pkl")
    assert db == returned
    assert set(db) == {"train", "val"}
    for split, n_clusters in (("train", TRAINING["n_clusters"]), ("val", TRAINING["n_val_clusters"])):
        part = db[split]
        assert set(part) == {"cids", "cluster", "qidxs", "pidxs"}
        n = n_clusters * TRAINING["images_per_cluster"]
        assert len(part["cids"]) == len(part["cluster"]) == n
        assert len(set(part["cluster"])) == n_clusters
        assert len(part["qidxs"]) == len(part["pidxs"]) > 0
        for q, p in zip(part["qidxs"], part["pidxs"], strict=True):
            assert type(q) is int and type(p) is int and 0 <= q < n and 0 <= p < n and q != p
            assert part["cluster"][q] == part["cluster"][p]
        assert all(type(c) is int for c in part["cluster"])
    assert not set(db["train"]["cluster"]) & set(db["val"]["cluster"]), "validation split is by cluster"
    all_cids = db["train"]["cids"] + db["val"]["cids"]
    assert len(set(all_cids)) == len(all_cids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", cid) for cid in all_cids)


def test_training_images_live_where_cirtorch_looks(training_set):
    out, db = training_set
    cids = db["train"]["cids"] + db["val"]["cids"]
    assert _files(out) == sorted(
        ["retrieval-SfM-120k.pkl"] + [datasets.cid_path(out / "ims", cid).relative_to(out).as_posix() for cid in cids]
    )
    for cid in cids[:3]:
        path = datasets.cid_path(out / "ims", cid)
        assert path.suffix == ""
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.size == PHOTO_SIZE


def test_cid_path():
    path = datasets.cid_path("ims", "0123456789abcdef")
    assert path.as_posix() == "ims/ef/cd/ab/0123456789abcdef"
    with pytest.raises(ValueError, match="shorter than the 6 characters"):
        datasets.cid_path("ims", "abc")


def test_training_needs_pairs(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        demo.generate_training_set(
            tmp_path, seed=0, n_clusters=2, n_val_clusters=1, images_per_cluster=1, image_size=IMAGE_SIZE
        )


# ------------------------------------------------------------------------------------------------------------
# defaults


def test_demo_config_fits_the_generators():
    # the demo section of configs/demo.yaml is passed to the generators as keyword arguments
    defaults = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())["demo"]
    assert set(defaults) == {"seed", "image_size", "testsets", "distractors", "training"}
    generators = {
        "testsets": demo.generate_test_set,
        "distractors": demo.generate_distractors,
        "training": demo.generate_training_set,
    }
    for section, function in generators.items():
        keyword_only = {
            name
            for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind is parameter.KEYWORD_ONLY
        }
        assert set(defaults[section]) == keyword_only - {"seed", "image_size"}
    assert defaults["training"]["n_clusters"] >= 50


def test_rng_streams_are_independent():
    # the same index in two streams must not give the same landmark
    first = np.asarray(demo._draw_facade(demo._rng(0, 1, 0, 0)))
    second = np.asarray(demo._draw_facade(demo._rng(0, 3, 0, 0)))
    assert first.shape != second.shape or not np.array_equal(first, second)
