"""The figures of model variants: their points read from evaluation files, the paper's values, CSV and PNG."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from csa_rerank import figures


def _evaluation(tmp_path, name, **protocols):
    """An evaluation JSON as stages.evaluate writes it (mAP per protocol; other keys left out)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({protocol: {"mAP": value} for protocol, value in protocols.items()}))
    return str(path)


def _cells(file, columns):
    return {column: {"file": file, "key": [column.split()[-1].lower(), "mAP"]} for column in columns}


def _sweep_layout(tmp_path, paper_in_plot=False):
    columns = ["ROxf Medium", "ROxf Hard"]
    points = {
        ("depth", 0): ("m-depth0", 50.0, 20.004),
        ("depth", 2): ("m", 60.0, 30.0),
        ("lambda", 0.0): ("m-lambda0", 55.0, 25.0),
        ("lambda", 0.2): ("m", 60.0, 30.0),
    }
    panels = {}
    for (parameter, value), (model, medium, hard) in points.items():
        file = _evaluation(tmp_path, model, medium=medium, hard=hard)
        panels.setdefault(parameter, []).append({"value": value, "model": model, "cells": _cells(file, columns)})
    first = _evaluation(tmp_path, "first", medium=40.0, hard=10.0)
    return {
        "title": "Fig. 2 (test)",
        "metric": "ROxf Hard",
        "ylabel": "mAP (%), ROxf Hard",
        "paper_in_plot": paper_in_plot,
        "baseline": {"label": "first round (R-GeM)", "cells": _cells(first, columns)},
        "panels": [{"parameter": p, "label": f"{p} axis", "points": pts} for p, pts in panels.items()],
    }


def test_fig2_points_and_the_papers_values(tmp_path):
    frame = figures.build("fig2", _sweep_layout(tmp_path))
    assert list(frame.columns) == [
        "parameter", "value", "model", "ROxf Medium", "ROxf Hard", "paper ROxf Medium", "paper ROxf Hard",
    ]  # fmt: skip
    assert list(frame["parameter"]) == ["first round", "depth", "depth", "lambda", "lambda"]
    assert list(frame["value"]) == [None, 0, 2, 0.0, 0.2]
    assert list(frame["model"]) == ["first round (R-GeM)", "m-depth0", "m", "m-lambda0", "m"]
    assert list(frame["ROxf Hard"]) == [10.0, 20.0, 30.0, 25.0, 30.0]  # rounded to 2 decimals
    # the paper's Table 2 (L = 512): first round 44.3 / 67.3, default model (depth 2, lambda 0.2) 58.4 / 77.9
    assert frame["paper ROxf Hard"].tolist()[0] == 44.3 and frame["paper ROxf Medium"].tolist()[0] == 67.3
    assert frame["paper ROxf Hard"].tolist()[2] == 58.4 and frame["paper ROxf Hard"].tolist()[4] == 58.4
    assert pd.isna(frame["paper ROxf Hard"].tolist()[1]) and pd.isna(frame["paper ROxf Hard"].tolist()[3])


def test_figure_csv_keeps_integer_values(tmp_path):
    frame = figures.build("fig2", _sweep_layout(tmp_path))
    figures.write(frame, tmp_path / "fig2.csv")
    lines = (tmp_path / "fig2.csv").read_text().splitlines()
    assert lines[0] == "parameter,value,model,ROxf Medium,ROxf Hard,paper ROxf Medium,paper ROxf Hard"
    assert lines[1] == "first round,,first round (R-GeM),40.0,10.0,67.3,44.3"
    assert lines[2] == "depth,0,m-depth0,50.0,20.0,,"
    assert lines[5] == "lambda,0.2,m,60.0,30.0,77.9,58.4"


def test_validation_figure_has_no_paper_columns(tmp_path):
    files = {name: tmp_path / f"{name}.json" for name in ("m", "m-tau1")}
    files["m"].write_text(json.dumps({"first_round": {"mAP": 30.0}, "rerank": {"mAP": 40.0}}))
    files["m-tau1"].write_text(json.dumps({"first_round": {"mAP": 30.0}, "rerank": {"mAP": 35.5}}))
    layout = {
        "title": "supp. Fig. 1",
        "metric": "mAP",
        "ylabel": "mAP (%)",
        "baseline": {
            "label": "first round",
            "cells": {"mAP": {"file": str(files["m"]), "key": ["first_round", "mAP"]}},
        },
        "panels": [
            {
                "parameter": "temperature",
                "label": "temperature",
                "points": [
                    {"value": v, "model": m, "cells": {"mAP": {"file": str(files[m]), "key": ["rerank", "mAP"]}}}
                    for v, m in ((1.0, "m-tau1"), (2.0, "m"))
                ],
            }
        ],
    }
    frame = figures.build("supp_fig1", layout)
    assert list(frame.columns) == ["parameter", "value", "model", "mAP"]
    assert frame["mAP"].tolist() == [30.0, 35.5, 40.0]
    figures.plot("supp_fig1", frame, layout, tmp_path / "supp_fig1.png")
    assert (tmp_path / "supp_fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    layout["baseline"]["cells"]["mAP"]["key"] = ["first_round", "mAP@5"]
    with pytest.raises(KeyError, match="first_round/mAP@5"):
        figures.build("supp_fig1", layout)


def _seed_layout(tmp_path, values):
    columns = ["ROxf Medium", "RPar Medium", "ROxf Hard", "RPar Hard"]

    def cells(name, medium, hard):
        roxf = _evaluation(tmp_path, f"roxf-{name}", medium=medium, hard=hard)
        rpar = _evaluation(tmp_path, f"rpar-{name}", medium=medium + 1, hard=hard + 1)
        out = _cells(roxf, columns[::2])
        out.update(_cells(rpar, columns[1::2]))
        return {c: out[c] for c in columns}

    return {
        "title": "supp. Fig. 2",
        "metric": "ROxf Hard",
        "ylabel": "mAP (%)",
        "paper_in_plot": True,
        "baseline": {"label": "first round (R-GeM)", "cells": cells("first", 40.0, 10.0)},
        "panels": [
            {
                "parameter": "seed",
                "label": "random seed",
                "points": [
                    {"value": s, "model": f"m-seed{s}", "cells": cells(f"seed{s}", medium, hard)}
                    for s, (medium, hard) in enumerate(values)
                ],
            }
        ],
    }


def test_seed_figure_mean_and_sample_std(tmp_path):
    layout = _seed_layout(tmp_path, [(50.0, 20.0), (60.0, 30.0), (70.0, 40.0)])
    frame = figures.build("supp_fig2", layout)
    assert list(frame["parameter"]) == ["first round", "seed", "seed", "seed", "mean", "std"]
    mean, std = frame.iloc[4], frame.iloc[5]
    # 50, 60, 70: mean 60, sample std sqrt(((-10)^2 + 0 + 10^2) / 2) = 10
    assert (mean["ROxf Medium"], mean["RPar Medium"], mean["ROxf Hard"], mean["RPar Hard"]) == (60.0, 61.0, 30.0, 31.0)
    assert std[["ROxf Medium", "RPar Medium", "ROxf Hard", "RPar Hard"]].tolist() == [10.0, 10.0, 10.0, 10.0]
    assert mean["model"] == "3 seeds"
    # the paper's single run (Table 2, L = 512) beside the mean; its first round beside ours
    assert mean[["paper ROxf Medium", "paper RPar Medium", "paper ROxf Hard", "paper RPar Hard"]].tolist() == [
        77.9, 87.2, 58.4, 74.4,
    ]  # fmt: skip
    assert frame.iloc[0]["paper RPar Hard"] == 61.5
    assert frame.iloc[1:4]["paper ROxf Hard"].isna().all() and pd.isna(std["paper ROxf Hard"])
    figures.plot("supp_fig2", frame, layout, tmp_path / "supp_fig2.png")
    assert (tmp_path / "supp_fig2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_figure_of_one_seed_has_no_std(tmp_path):
    frame = figures.build("supp_fig2", _seed_layout(tmp_path, [(50.0, 20.0)]))
    assert frame.iloc[2]["ROxf Medium"] == 50.0 and frame.iloc[3][["ROxf Medium", "RPar Hard"]].isna().all()


@pytest.mark.parametrize("paper_in_plot", [False, True])
def test_sweep_figure_png_has_one_panel_per_parameter(tmp_path, paper_in_plot):
    layout = _sweep_layout(tmp_path, paper_in_plot)
    frame = figures.build("fig2", layout)
    canvas = figures._plot_sweeps(frame, layout)
    axes = canvas.get_axes()
    assert [ax.get_title() for ax in axes] == ["(a) depth axis", "(b) lambda axis"]
    assert [ax.get_xlabel() for ax in axes] == ["depth axis", "lambda axis"]
    assert all(ax.get_ylabel() == "mAP (%), ROxf Hard" for ax in axes)
    ours = axes[0].get_lines()[0]
    assert list(ours.get_xdata()) == [0.0, 2.0] and list(ours.get_ydata()) == [20.0, 30.0]
    labels = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert ("paper: default model (Table 2, L=512)" in labels) == paper_in_plot
    figures.plot("fig2", frame, layout, tmp_path / "fig2.png")
    assert (tmp_path / "fig2.png").stat().st_size > 1000
