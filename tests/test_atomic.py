"""Files written whole or not at all (csa_rerank.atomic)."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from csa_rerank import atomic


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "folder" / "result.json"
    atomic.write_json(path, {"mAP": 1.0})
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic.atomic_path(path) as temporary:
            temporary.write_text("{trunc")
            assert temporary.name == "result.json.part"
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"mAP": 1.0}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_json_text_and_figures(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'
    atomic.write_text(tmp_path / "t.txt", "x\n")
    assert (tmp_path / "t.txt").read_text() == "x\n"
    figure = Figure(figsize=(1, 1))
    figure.subplots().plot([0, 1])
    atomic.save_figure(figure, tmp_path / "curve.png", dpi=20)  # the format comes from the name, not ".part"
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "curve.png", "t.txt"]


def test_a_temporary_name_with_the_extension_for_writers_that_check_it(tmp_path):
    """snakemake --report writes .html or .zip only: rule report writes report.part.html, renamed when complete."""
    with atomic.atomic_path(tmp_path / "report.html", keep_extension=True) as temporary:
        assert temporary.name == "report.part.html"
        temporary.write_text("<html></html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
