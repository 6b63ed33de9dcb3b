"""The extraction stage: post-whitening sources (training set, cirtorch's whitening set, a checkpoint's Lw) and the
sharded extraction of the distractors with its merge.  A tiny 1x1-conv network stands in for the CNN."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from csa_rerank import datasets, h5io, networks, safe_pickle, stages
from csa_rerank.extract import extract_descriptors
from csa_rerank.networks import GeM, RetrievalNet
from csa_rerank.whitening import apply_whitening, learn_whitening

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SETTINGS = {"image_size": 16, "scales": [1.0], "msp": 1.0, "batch_size": 4, "workers": 0}
SPEC = {"arch": "resnet50", "pooling": "gem", "seed": 0}


def _tiny_net() -> RetrievalNet:
    conv = nn.Conv2d(3, 4, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(
            torch.tensor([[0.5, -0.2, 0.3], [0.1, 0.4, -0.6], [-0.3, 0.2, 0.8], [0.7, 0.7, 0.1]])[..., None, None]
        )
        conv.bias.copy_(torch.tensor([0.1, 0.0, 0.2, -0.1]))
    return RetrievalNet(nn.Sequential(conv, nn.ReLU()), GeM(3.0), dim=4).eval()


@pytest.fixture
def tiny_network(monkeypatch):
    """Every configured network becomes the tiny one; ``meta`` is what its checkpoint's meta would be."""
    meta: dict = {}
    monkeypatch.setattr(
        networks, "build_configured_network", lambda spec, ckpt=None, body=None: (_tiny_net(), None, None, meta)
    )
    return meta


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)).save(path, format="PNG")


@pytest.fixture
def data(tmp_path):
    """Tiny datasets in their real layouts: rSfM120k (+ its whitening set), a test set and 5 distractors."""
    train_root = tmp_path / "train" / "retrieval-SfM-120k"
    cids = [f"c0ffee{i:04d}" for i in range(16)]
    for i, cid in enumerate(cids):
        _image(datasets.cid_path(train_root / "ims", cid), seed=i)
    db = {
        "train": {"cids": cids[:10], "cluster": [0] * 5 + [1] * 5, "qidxs": [0, 2, 5, 7, 8], "pidxs": [1, 3, 6, 9, 4]},
        "val": {"cids": cids[10:12], "cluster": [2, 2], "qidxs": [0], "pidxs": [1]},
    }
    safe_pickle.dump(db, train_root / "retrieval-SfM-120k.pkl")
    whiten = {"cids": cids[4:16], "qidxs": [0, 2, 4, 6, 8, 10, 1], "pidxs": [1, 3, 5, 7, 9, 11, 4]}
    safe_pickle.dump(whiten, train_root / "retrieval-SfM-120k-whiten.pkl")
    test_root = tmp_path / "test" / "roxford5k"
    names = [f"oxford_{i}" for i in range(6)]
    for i, name in enumerate(names):
        _image(test_root / "jpg" / f"{name}.jpg", seed=100 + i)
    gnd = {"imlist": names[:4], "qimlist": names[4:], "gnd": [{"bbx": [0, 0, 8, 8]}, {"bbx": [2, 2, 14, 10]}]}
    safe_pickle.dump(gnd, test_root / "gnd_roxford5k.pkl")
    r1m = tmp_path / "revisitop1m"
    listed = [f"{i % 2}/{i:03d}.jpg" for i in range(5)]
    for i, name in enumerate(listed):
        _image(r1m / "jpg" / name, seed=200 + i)
    (r1m / "revisitop1m.txt").write_text("\n".join(listed) + "\n")
    return {
        "root": tmp_path,
        "ims": str(train_root / "ims"),
        "db": str(train_root / "retrieval-SfM-120k.pkl"),
        "whiten": str(train_root / "retrieval-SfM-120k-whiten.pkl"),
        "whiten_cids": whiten["cids"],
        "train_cids": cids[:10],
        "gnd": str(test_root / "gnd_roxford5k.pkl"),
        "test_jpg": str(test_root / "jpg"),
        "r1m_list": str(r1m / "revisitop1m.txt"),
        "r1m_jpg": str(r1m / "jpg"),
    }


def _raw(data, cids):
    return extract_descriptors(_tiny_net(), [datasets.cid_path(data["ims"], c) for c in cids], image_size=16)


def _h5(path):
    with h5py.File(path) as handle:
        return {name: handle[name][()] for name in handle}, dict(handle.attrs)


# ----------------------------------------------------------------------------------------------------------------
# post-whitening


def test_whitening_set_job_learns_lw_and_every_other_dataset_applies_it(tmp_path, data, tiny_network):
    spec = {**SPEC, "post_whitening": "learned"}
    wfile = tmp_path / "features" / "rsfm120k-whiten" / "net.h5"
    stages.extract("whitening", data["whiten"], data["ims"], "net", spec, SETTINGS, str(wfile))
    arrays, attrs = _h5(wfile)
    raw = _raw(data, data["whiten_cids"])
    # cirtorch's whitenlearn on the whitening images with the pairs of retrieval-SfM-120k-whiten.pkl
    m, P = learn_whitening(raw, [0, 2, 4, 6, 8, 10, 1], [1, 3, 5, 7, 9, 11, 4])
    np.testing.assert_allclose(arrays["whitening_mean"], m, atol=1e-6)
    np.testing.assert_allclose(arrays["whitening_projection"], P, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arrays["db"], apply_whitening(raw, m, P), atol=1e-4)
    assert attrs["post_whitening"] == "learned" and arrays["db"].shape == (12, 4)

    # the training set reads the parameters instead of fitting its own (and does not store them)
    tfile = tmp_path / "features" / "rsfm120k" / "net.h5"
    stages.extract("training", data["db"], data["ims"], "net", spec, SETTINGS, str(tfile), whitening=str(wfile))
    arrays, _ = _h5(tfile)
    assert set(arrays) == {"train", "val"}
    stored_m, stored_P = h5io.read_array(wfile, "whitening_mean"), h5io.read_array(wfile, "whitening_projection")
    np.testing.assert_allclose(arrays["train"], apply_whitening(_raw(data, data["train_cids"]), stored_m, stored_P))

    # a test set: database and (cropped) queries
    qfile = tmp_path / "features" / "roxford5k" / "net.h5"
    stages.extract("test", data["gnd"], data["test_jpg"], "net", spec, SETTINGS, str(qfile), whitening=str(wfile))
    arrays, _ = _h5(qfile)
    assert arrays["db"].shape == (4, 4) and arrays["query"].shape == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(arrays["query"], axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="post-whitening 'learned' of a test set needs the descriptor file"):
        stages.extract("test", data["gnd"], data["test_jpg"], "net", spec, SETTINGS, str(tmp_path / "x.h5"))


def test_training_set_fits_its_own_lw_when_it_is_the_source(tmp_path, data, tiny_network):
    out = tmp_path / "train.h5"
    stages.extract(
        "training", data["db"], data["ims"], "net", {**SPEC, "post_whitening": "learned"}, SETTINGS, str(out)
    )
    arrays, _ = _h5(out)
    m, P = learn_whitening(_raw(data, data["train_cids"]), [0, 2, 5, 7, 8], [1, 3, 6, 9, 4])
    np.testing.assert_allclose(arrays["whitening_mean"], m, atol=1e-6)
    np.testing.assert_allclose(arrays["whitening_projection"], P, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scales, entry", [([1.0], "ss"), ([1.0, 0.5], "ms")])
def test_post_whitening_from_the_checkpoints_precomputed_lw(tmp_path, data, tiny_network, scales, entry):
    rng = np.random.default_rng(0)
    lw = {scale: {"m": rng.standard_normal((4, 1)), "P": rng.standard_normal((4, 4))} for scale in ("ss", "ms")}
    tiny_network["Lw"] = {"retrieval-SfM-120k": lw}
    settings = {**SETTINGS, "scales": scales}
    out = tmp_path / "roxford5k.h5"
    spec = {**SPEC, "post_whitening": "checkpoint"}
    stages.extract("test", data["gnd"], data["test_jpg"], "net", spec, settings, str(out), checkpoint="net.pth")
    raw = tmp_path / "raw.h5"
    stages.extract("test", data["gnd"], data["test_jpg"], "net", SPEC, settings, str(raw))
    whitened, _ = _h5(out)
    plain, _ = _h5(raw)
    m, P = lw[entry]["m"].reshape(-1), lw[entry]["P"]
    for name in ("db", "query"):  # cirtorch's whitenapply: P (x - m), L2-normalised
        y = (plain[name].astype(np.float64) - m) @ P.T
        np.testing.assert_allclose(whitened[name], y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-6), atol=1e-5)
    tiny_network.clear()
    with pytest.raises(ValueError, match="net.pth: the checkpoint has no precomputed whitening"):
        stages.extract("test", data["gnd"], data["test_jpg"], "net", spec, settings, str(out), checkpoint="net.pth")


# ----------------------------------------------------------------------------------------------------------------
# sharded distractors


def test_sharded_distractors_merge_into_the_unsharded_file(tmp_path, data, tiny_network, monkeypatch):
    whole = tmp_path / "whole.h5"
    stages.extract("distractors", data["r1m_list"], data["r1m_jpg"], "net", SPEC, SETTINGS, str(whole))
    shards = []
    for i, (start, stop) in enumerate([(0, 2), (2, 4), (4, 5)]):  # shard size 2, the last one partial
        shards.append(str(tmp_path / "net" / f"shard{i}.h5"))
        stages.extract("distractors", data["r1m_list"], data["r1m_jpg"], "net", SPEC, SETTINGS, shards[-1],
                       shard=(start, stop), n_images=5)  # fmt: skip
        assert h5io.read_attrs(shards[-1])["start"] == start and len(h5io.read_array(shards[-1], "db")) == stop - start

    # the merge copies two rows at a time: record every read from a shard
    reads = []
    real_open = h5io.open_array

    class Recording:
        def __init__(self, dataset):
            self.dataset = dataset

        def __len__(self):
            return len(self.dataset)

        @property
        def shape(self):
            return self.dataset.shape

        def __getitem__(self, key):
            block = self.dataset[key]
            reads.append(len(block))
            return block

    class Opener:
        def __init__(self, path, name):
            self.context = real_open(path, name)

        def __enter__(self):
            return Recording(self.context.__enter__())

        def __exit__(self, *exc):
            return self.context.__exit__(*exc)

    monkeypatch.setattr(h5io, "open_array", Opener)
    merged = tmp_path / "r1m" / "net.h5"
    stages.merge_shards(shards, str(merged), n_images=5, block_rows=2)
    assert reads and max(reads) <= 2
    arrays, attrs = _h5(merged)
    expected, whole_attrs = _h5(whole)
    np.testing.assert_array_equal(arrays["db"], expected["db"])
    assert attrs["shards"] == 3 and "start" not in attrs and "stop" not in attrs
    assert {k: v for k, v in attrs.items() if k != "shards"} == whole_attrs


def test_shard_job_checks_the_planned_image_count(tmp_path, data, tiny_network):
    with pytest.raises(datasets.DatasetFormatError, match="lists 5 images, but the workflow was planned for 6"):
        stages.extract("distractors", data["r1m_list"], data["r1m_jpg"], "net", SPEC, SETTINGS,
                       str(tmp_path / "s.h5"), shard=(0, 2), n_images=6)  # fmt: skip


def _shard(path, start, stop, dim=3, **attrs):
    db = np.arange(start * dim, stop * dim, dtype=np.float32).reshape(stop - start, dim)
    h5io.write_arrays(path, {"db": db}, {"network": "net", "image_size": 16, "start": start, "stop": stop, **attrs})
    return str(path)


def test_merge_shards_checks_order_coverage_and_settings(tmp_path):
    a, b = _shard(tmp_path / "a.h5", 0, 2), _shard(tmp_path / "b.h5", 2, 5)
    stages.merge_shards([a, b], str(tmp_path / "ok.h5"), n_images=5)
    np.testing.assert_array_equal(h5io.read_array(tmp_path / "ok.h5", "db"), np.arange(15).reshape(5, 3))
    with pytest.raises(ValueError, match="b.h5: holds rows 2-5 .* must start at row 0"):
        stages.merge_shards([b, a], str(tmp_path / "x.h5"), n_images=5)
    gap = _shard(tmp_path / "gap.h5", 3, 5)
    with pytest.raises(ValueError, match="gap.h5: holds rows 3-5 .* must start at row 2"):
        stages.merge_shards([a, gap], str(tmp_path / "x.h5"), n_images=5)
    with pytest.raises(ValueError, match="the shards hold 5 descriptors, expected 6"):
        stages.merge_shards([a, b], str(tmp_path / "x.h5"), n_images=6)
    other = _shard(tmp_path / "other.h5", 2, 5, image_size=32)
    with pytest.raises(ValueError, match="other.h5: extracted with other settings"):
        stages.merge_shards([a, other], str(tmp_path / "x.h5"), n_images=5)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.part").exists()


def test_load_whitening_db_checks_the_pairs(tmp_path, data):
    db = datasets.load_whitening_db(data["whiten"])
    assert len(db["cids"]) == 12 and db["qidxs"][:2] == [0, 2]
    for bad, message in (({"cids": ["c0ffee0000"], "qidxs": [0]}, "lacks pidxs"),
                         ({"cids": ["c0ffee0000"], "qidxs": [], "pidxs": []}, "must be non-empty"),
                         ({"cids": ["c0ffee0000"], "qidxs": [0], "pidxs": [1]}, "outside the 1 images")):  # fmt: skip
        safe_pickle.dump(bad, tmp_path / "bad.pkl")
        with pytest.raises(datasets.DatasetFormatError, match=message):
            datasets.load_whitening_db(tmp_path / "bad.pkl")
