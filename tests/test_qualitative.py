"""Figure 3 and the per-query analysis: the selection rule, the frame colours read back from the pixels, the CSVs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from csa_rerank import per_query, qualitative
from csa_rerank.evaluate import evaluate, per_query_table


def test_selection_rule_by_hand():
    before = [10.0, 50.0, None, 30.0, 20.0, 40.0]
    after = [60.0, 50.0, 90.0, 10.0, 70.0, 20.0]
    # gains: q0 +50, q1 0, q3 -20, q4 +50, q5 -20; q2 has no positives.  Ties: lower index first.
    assert qualitative.select_queries(before, after, 2, 2) == [(0, "success"), (4, "success"), (3, "failure"),
                                                               (5, "failure")]  # fmt: skip
    # fewer losers than asked: the smallest remaining gains
    assert qualitative.select_queries(before, after, 1, 4)[1:] == [(3, "failure"), (5, "failure"), (1, "failure"),
                                                                    (4, "failure")]  # fmt: skip


def test_image_labels_follow_the_protocol():
    entry = {"easy": [1], "hard": [2], "junk": [3]}
    assert [qualitative.image_label(i, entry, "medium") for i in range(4)] == ["negative", "positive", "positive",
                                                                              "junk"]  # fmt: skip
    assert [qualitative.image_label(i, entry, "hard") for i in range(4)] == ["negative", "junk", "positive", "junk"]


def test_landmark_grouping_of_query_names():
    assert qualitative.landmark_of("all_souls_000013") == "all_souls"
    assert qualitative.landmark_of("landmark_00_749845") == "landmark_00"
    assert qualitative.landmark_of("defense") == "defense"


def check_figure3_pixels(png, csv, gnd, images_dir, protocol="medium", layout=None):
    """Read the frame of every thumbnail and the query box back from the picture; compare with the ground truth.
    Shared with the end-to-end test (tests/test_workflow.py)."""
    layout = layout or qualitative.Layout()
    picture = np.asarray(Image.open(png).convert("RGB"))
    table = pd.read_csv(csv)
    names = {name: i for i, name in enumerate(gnd["imlist"])}
    for row_number, record in table.iterrows():
        group, row = divmod(row_number, 2)
        entry = gnd["gnd"][int(record["query"])]
        for rank in range(1, layout.shown + 1):
            expected = qualitative.image_label(names[record[f"image {rank}"]], entry, protocol)
            assert record[f"label {rank}"] == expected
            x, y = layout.cell(group, row, rank)
            for px, py in ((x + 1, y + 1), (x + layout.thumb - 2, y + layout.thumb // 2)):
                assert tuple(picture[py, px]) == qualitative.COLOURS[expected], (record["name"], rank)
        # the query's box: an orange pixel on its left edge, half-way down (within 2 px of where it is drawn)
        with Image.open(images_dir / f"{record['name']}.jpg") as image:
            width, height = image.size
        scale = min(layout.thumb / width, layout.thumb / height)
        x0, y0 = layout.cell(group, row, 0)
        left = x0 + (layout.thumb - round(width * scale)) // 2 + entry["bbx"][0] * scale
        middle = y0 + (layout.thumb - round(height * scale)) // 2 + (entry["bbx"][1] + entry["bbx"][3]) / 2 * scale
        window = picture[int(middle) - 2 : int(middle) + 3, int(left) - 2 : int(left) + 4]
        assert (window == qualitative.COLOURS["query_box"]).all(axis=-1).any(), record["name"]


@pytest.fixture
def toy_testset(tmp_path):
    """6 database images and 3 queries of two landmarks, written as JPEGs, with a revisitop gnd file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "toy"
    (root / "jpg").mkdir(parents=True)
    imlist, qimlist = [f"db_{i:02d}" for i in range(12)], ["alpha_01", "alpha_02", "beta_01"]
    for name in imlist + qimlist:
        size = (80, 60) if name.startswith("db_0") else (50, 70)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "jpg" / f"{name}.jpg")
    gnd = [
        {"bbx": [5.0, 10.0, 40.0, 60.0], "easy": [0, 1], "hard": [2], "junk": [3]},
        {"bbx": [0.0, 0.0, 49.0, 69.0], "easy": [4], "hard": [5, 6], "junk": [7]},
        {"bbx": [10.0, 10.0, 30.0, 30.0], "easy": [8, 9], "hard": [], "junk": [10, 11]},
    ]
    gnd_file = root / "gnd_toy.pkl"
    gnd_file.write_bytes(pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}))
    return gnd_file, {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def _evaluation(ranks, gnd):
    return {**evaluate(ranks, gnd), "per_query": per_query_table(ranks, gnd), "top": ranks[:, :20].tolist()}


def test_figure3_frames_and_selection_from_the_csv(toy_testset, tmp_path):
    gnd_file, gnd = toy_testset
    rng = np.random.default_rng(1)
    first = np.stack([rng.permutation(12) for _ in range(3)])
    better = first.copy()
    better[0] = [0, 1, 2, *[i for i in first[0] if i not in (0, 1, 2)]]  # query 0: all positives first
    for name, ranks in (("first.json", first), ("after.json", better)):
        (tmp_path / name).write_text(json.dumps(_evaluation(ranks, gnd["gnd"])))
    png, csv = tmp_path / "fig3.png", tmp_path / "fig3.csv"
    table = per_query.figure3(str(tmp_path / "first.json"), str(tmp_path / "after.json"), str(gnd_file),
                              str(png), str(csv), successes=1, failures=1)  # fmt: skip
    check_figure3_pixels(png, csv, gnd, gnd_file.parent / "jpg")
    before_ap = per_query_table(first, gnd["gnd"])["medium"]["AP"]
    after_ap = per_query_table(better, gnd["gnd"])["medium"]["AP"]
    assert list(table["query"][::2]) == [q for q, _ in qualitative.select_queries(before_ap, after_ap, 1, 1)]
    assert table.loc[1, "AP"] == pytest.approx(100.0) and table.loc[1, "label 1"] == "positive"


def test_method_table_means_equal_the_map(toy_testset, tmp_path):
    _, gnd = toy_testset
    rng = np.random.default_rng(2)
    first, after = (np.stack([rng.permutation(12) for _ in range(3)]) for _ in range(2))
    before_result, after_result = _evaluation(first, gnd["gnd"]), _evaluation(after, gnd["gnd"])
    table = per_query.method_table(before_result, after_result, gnd["qimlist"])
    for protocol, column in (("medium", "Medium"), ("hard", "Hard")):
        assert table[f"AP {column} before"].mean() == pytest.approx(before_result[protocol]["mAP"])
        assert table[f"AP {column} after"].mean() == pytest.approx(after_result[protocol]["mAP"])
        assert table[f"P@5 {column} after"].mean() == pytest.approx(after_result[protocol]["mP@5"])
    assert table["AP Hard before"].isna().tolist() == [False, False, True]  # beta_01 has no hard positive
    summary = per_query.help_hurt({"m": table}, n=1)
    change = table["AP Medium after"] - table["AP Medium before"]
    assert summary.loc[0, "queries helped"] == (change > 0).sum()


def test_gallery_has_every_query_by_landmark(toy_testset, tmp_path):
    gnd_file, gnd = toy_testset
    ranks = np.tile(np.arange(12), (3, 1))
    (tmp_path / "e.json").write_text(json.dumps(_evaluation(ranks, gnd["gnd"])))
    page = tmp_path / "gallery.html"
    per_query.gallery(str(tmp_path / "e.json"), str(tmp_path / "e.json"), str(gnd_file), str(page), "toy")
    index = page.read_text()
    assert index.index('id="alpha"') < index.index('id="alpha_01"') < index.index('id="beta"')
    assert index.count('<img src="data:image/jpeg;base64,') == 3  # one picture per query, in the file
