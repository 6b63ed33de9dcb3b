"""Inputs checked where they enter: query boxes of the ground truth, HDF5 files and their descriptor rows."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
from PIL import Image

from csa_rerank import datasets, h5io, safe_pickle
from csa_rerank.extract import load_image


def write_gnd(path, boxes):
    gnd = {"imlist": ["db0"], "qimlist": [f"q{i}" for i in range(len(boxes))], "gnd": [{"bbx": b} for b in boxes]}
    safe_pickle.dump(gnd, path)
    return path


@pytest.mark.parametrize("box", [[10, 5, 4, 20], [0, 5, 30, 5], [0, 0, float("nan"), 4], [1, 2, 3]])
def test_reversed_empty_or_malformed_query_box_is_refused_naming_file_and_query(tmp_path, box):
    path = write_gnd(tmp_path / "gnd_x.pkl", [[0, 0, 8, 8], box])
    with pytest.raises(datasets.DatasetFormatError, match=f"{path}: query q1: bbx"):
        datasets.load_ground_truth(path)


def test_query_box_outside_the_image_is_refused_and_one_reaching_out_warned(tmp_path, caplog):
    image = tmp_path / "q0.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    with pytest.raises(ValueError, match=f"query image {image}: its box .* lies outside the image \\(40 x 30\\)"):
        load_image(image, 64, [50, 0, 60, 10])
    with caplog.at_level(logging.WARNING, logger="csa_rerank"):
        crop = load_image(image, 64, [30, 20, 50, 40])  # cropped as given, as cirtorch does (black outside)
    assert f"query image {image}: its box (30.0, 20.0, 50.0, 40.0) reaches outside" in caplog.text
    assert crop.size == (20, 20)  # not clipped to the 10 x 10 inside the image


def test_truncated_hdf5_names_the_file(tmp_path):
    path = tmp_path / "features.h5"
    h5io.write_arrays(path, {"db": np.eye(4, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(h5io.UnreadableFileError, match=f"cannot read {path} .*truncated or corrupt"):
        h5io.read_array(path, "db")


@pytest.mark.parametrize(
    "row, what",
    [([0, 0, 0, 0], "zero"), ([np.nan, 0, 0, 1], "not finite \\(NaN or inf\\)"), ([0.5, 0, 0, 0], "not of unit norm")],
)
def test_descriptor_rows_are_finite_non_zero_unit_vectors(tmp_path, row, what):
    rows = np.eye(4, dtype=np.float32)
    rows[2] = row
    path = tmp_path / "features.h5"
    h5io.write_arrays(path, {"db": rows, "query": np.eye(4, dtype=np.float32)[:1]})
    with pytest.raises(ValueError, match=f"{path}: 1 of the 4 rows of 'db' are {what} \\(first: row 2\\)"):
        h5io.load_test_descriptors(str(path))
    with h5py.File(path, "a") as handle:
        handle["db"][2] = np.eye(4, dtype=np.float32)[2]
    query, db = h5io.load_test_descriptors(str(path))
    assert db.shape == (4, 4) and query.shape == (1, 4)
