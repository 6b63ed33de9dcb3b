"""The paper's tables filled from evaluation JSON files, with the published values beside them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from csa_rerank import tables

T5_COLUMNS = [
    "Method",
    "ROxf Medium",
    "paper ROxf Medium",
    "ROxf+R1M Medium",
    "paper ROxf+R1M Medium",
    "RPar Medium",
    "paper RPar Medium",
    "RPar+R1M Medium",
    "paper RPar+R1M Medium",
    "ROxf Hard",
    "paper ROxf Hard",
    "ROxf+R1M Hard",
    "paper ROxf+R1M Hard",
    "RPar Hard",
    "paper RPar Hard",
    "RPar+R1M Hard",
    "paper RPar+R1M Hard",
]


def _evaluation(tmp_path, name, medium, hard, **extra):
    """An evaluation JSON as stages.evaluate writes it."""
    path = tmp_path / f"{name}.json"
    doc = {
        "easy": {"mAP": 90.0, "mP@1": 100.0, "mP@5": 95.0, "mP@10": 90.0},
        "medium": {"mAP": medium, "mP@1": 100.0, "mP@5": 90.0, "mP@10": 85.0},
        "hard": {"mAP": hard, "mP@1": 90.0, "mP@5": 80.0, "mP@10": 70.0},
        **extra,
    }
    path.write_text(json.dumps(doc))
    return str(path)


def _cell(file, protocol):
    return {"file": file, "key": [protocol, "mAP"]}


def test_columns_order():
    assert tables.columns("table5", "Method") == T5_COLUMNS
    assert tables.columns("table1", "Method") == [
        "Method",
        "Re-ranking latency (ms)",
        "paper Re-ranking latency (ms)",
        "ROxf Medium",
        "paper ROxf Medium",
        "RPar Medium",
        "paper RPar Medium",
        "ROxf Hard",
        "paper ROxf Hard",
        "RPar Hard",
        "paper RPar Hard",
    ]
    # text columns follow the label
    assert tables.columns("table4", "Method")[:3] == ["Method", "Training feature", "ROxf Medium"]
    assert tables.columns("table6", "Method")[:4] == ["Method", "Space Cplx.", "Time Cplx.", "Re-ranking latency (ms)"]


def test_build_table5(tmp_path):
    roxf = _evaluation(tmp_path, "roxf", medium=67.34567, hard=44.3049)
    rpar = _evaluation(tmp_path, "rpar", medium=80.5551, hard=61.5)
    layout = {
        "label_header": "Method",
        "rows": [
            {
                "label": "R-GeM(No re-ranking)",
                "cells": {
                    "ROxf Medium": _cell(roxf, "medium"),
                    "ROxf Hard": _cell(roxf, "hard"),
                    "RPar Medium": _cell(rpar, "medium"),
                },
            },
            {"label": "Something new", "cells": {"ROxf Medium": _cell(rpar, "medium")}},
        ],
    }
    frame = tables.build("table5", layout)
    assert list(frame.columns) == T5_COLUMNS
    assert frame["Method"].tolist() == ["R-GeM(No re-ranking)", "Something new"]
    first = frame.iloc[0]
    # values rounded to 2 decimals
    assert first["ROxf Medium"] == 67.35 and first["ROxf Hard"] == 44.3 and first["RPar Medium"] == 80.56
    # the paper's values for the same label
    assert first["paper ROxf Medium"] == 67.3
    assert first["paper ROxf Hard"] == 44.3
    assert first["paper RPar Medium"] == 80.6
    # columns without a computed cell stay empty, including their paper column
    assert pd.isna(first["ROxf+R1M Medium"]) and pd.isna(first["paper ROxf+R1M Medium"])
    # a label the paper does not have: value present, paper column empty
    second = frame.iloc[1]
    assert second["ROxf Medium"] == 80.56
    assert pd.isna(second["paper ROxf Medium"])


def test_build_table1_rounds_latency_to_one_decimal(tmp_path):
    path = _evaluation(tmp_path, "rerank", medium=77.0, hard=57.0, latency_ms=19.2649)
    layout = {
        "label_header": "Method",
        "rows": [
            {
                "label": "R-GeM+Ours(K=512)",
                "cells": {
                    "Re-ranking latency (ms)": {"file": path, "key": ["latency_ms"]},
                    "ROxf Medium": _cell(path, "medium"),
                },
            }
        ],
    }
    row = tables.build("table1", layout).iloc[0]
    assert row["Re-ranking latency (ms)"] == 19.3
    assert row["paper Re-ranking latency (ms)"] == 19
    assert row["ROxf Medium"] == 77.0 and row["paper ROxf Medium"] == 77.0


def test_text_cells(tmp_path):
    path = _evaluation(tmp_path, "x", medium=50.0, hard=20.0)
    layout = {
        "label_header": "Method",
        "rows": [
            {"label": "R-GeM[O]", "text": {"Training feature": "R-GeM"}, "cells": {"ROxf Hard": _cell(path, "hard")}}
        ],
    }
    row = tables.build("table4", layout).iloc[0]
    assert row["Training feature"] == "R-GeM"
    assert row["ROxf Hard"] == 20.0 and row["paper ROxf Hard"] == 23.0


def test_columns_the_paper_lacks_follow_its_own(tmp_path):
    # a test set added to the registry (label "Toy") gets its own columns, without published values
    path = _evaluation(tmp_path, "x", medium=50.0, hard=20.0)
    cells = {"ROxf Hard": _cell(path, "hard"), "Toy Medium": _cell(path, "medium"), "Toy Hard": _cell(path, "hard")}
    frame = tables.build("table2", {"label_header": "Method", "rows": [{"label": "R-GeM", "cells": cells}]})
    assert list(frame.columns[-4:]) == ["Toy Medium", "paper Toy Medium", "Toy Hard", "paper Toy Hard"]
    assert frame.loc[0, "Toy Medium"] == 50.0 and pd.isna(frame.loc[0, "paper Toy Hard"])
    assert frame.loc[0, "paper ROxf Hard"] == 44.3


def test_empty_layout_gives_the_full_header():
    frame = tables.build("table5", {"label_header": "Method", "rows": []})
    assert frame.empty
    assert list(frame.columns) == T5_COLUMNS


def test_missing_key_names_the_file(tmp_path):
    path = _evaluation(tmp_path, "roxf", medium=60.0, hard=30.0)
    layout = {
        "label_header": "Method",
        "rows": [{"label": "AQE", "cells": {"ROxf Medium": {"file": path, "key": ["medium", "mAP@100"]}}}],
    }
    with pytest.raises(KeyError) as info:
        tables.build("table5", layout)
    assert path in str(info.value) and "medium/mAP@100" in str(info.value)


def test_unknown_table():
    with pytest.raises(ValueError, match="unknown table 'table9'"):
        tables.build("table9", {"label_header": "Method", "rows": []})


def test_write_csv_and_markdown(tmp_path):
    pytest.importorskip("tabulate", reason="pandas.DataFrame.to_markdown needs tabulate")
    path = _evaluation(tmp_path, "roxf", medium=67.34567, hard=44.3049)
    layout = {"label_header": "Method", "rows": [{"label": "AQE", "cells": {"ROxf Medium": _cell(path, "medium")}}]}
    frame = tables.build("table5", layout)
    tables.write(frame, tmp_path / "t.csv", tmp_path / "t.md")
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back.columns) == T5_COLUMNS
    assert back.loc[0, "ROxf Medium"] == 67.35 and back.loc[0, "paper ROxf Medium"] == 72.3
    markdown = (tmp_path / "t.md").read_text()
    assert "| AQE" in markdown and "67.35" in markdown and "72.3" in markdown
    tables.write(tables.build("table5", {"label_header": "Method", "rows": []}), tmp_path / "e.csv", tmp_path / "e.md")
    assert "No row of this table can be computed" in (tmp_path / "e.md").read_text()
