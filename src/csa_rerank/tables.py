"""The paper's tables, filled from the pipeline's evaluation files, with the published values beside them.

A table layout (built by the workflow from the configuration) lists rows; each row has a label and cells
``{column: {"file": evaluation JSON, "key": [path inside it]}}`` plus optional text cells.  :func:`build` reads
the files and adds, for every metric column ``C``, a column ``paper C`` holding the value the paper publishes for
the row of the same label (empty where the paper has no such row).  Values are never typed in: a cell is either
read from a file the pipeline wrote or left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, write_text

_T5_COLUMNS = [
    "ROxf Medium", "ROxf+R1M Medium", "RPar Medium", "RPar+R1M Medium",
    "ROxf Hard", "ROxf+R1M Hard", "RPar Hard", "RPar+R1M Hard",
]  # fmt: skip
_MH_COLUMNS = ["ROxf Medium", "RPar Medium", "ROxf Hard", "RPar Hard"]


def _rows(columns: list[str], rows: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {label: dict(zip(columns, values, strict=True)) for label, values in rows.items()}


# Published values (csa-paper.txt and csa-paper-supplementary.txt), by table, row label and column header.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "table1": _rows(
        ["Re-ranking latency (ms)"] + _MH_COLUMNS,
        {
            "R-GeM": [0.0, 67.3, 80.6, 44.3, 61.5],
            "R-GeM+Ours(K=128)": [7, 72.7, 82.0, 50.0, 64.3],
            "R-GeM+Ours(K=256)": [11, 75.1, 83.7, 53.4, 67.7],
            "R-GeM+Ours(K=512)": [19, 77.0, 85.6, 57.0, 71.3],
            "R-GeM+Ours(K=768)": [28, 77.8, 86.9, 58.3, 73.4],
            "R-GeM+Ours(K=1024)": [37, 77.9, 87.2, 58.4, 74.4],
            "R-GeM+Ours(K=1280)": [46, 78.3, 87.5, 59.0, 75.0],
            "R-GeM+Ours(K=1536)": [55, 78.2, 88.2, 59.1, 75.3],
        },
    ),
    "table2": _rows(
        _MH_COLUMNS,
        {
            "R-GeM": [67.3, 80.6, 44.3, 61.5],
            "R-GeM+Ours(L=128)": [75.9, 86.9, 55.9, 72.3],
            "R-GeM+Ours(L=256)": [77.5, 86.8, 57.4, 73.0],
            "R-GeM+Ours(L=512)": [77.9, 87.2, 58.4, 74.4],
            "R-GeM+Ours(L=768)": [77.0, 87.2, 57.0, 73.7],
            "R-GeM+Ours(L=1024)": [76.5, 87.1, 56.1, 73.4],
            "R-GeM+Ours(L=1280)": [76.4, 87.3, 56.6, 73.7],
        },
    ),
    "table3": _rows(
        ["Training nums"] + _MH_COLUMNS,
        {"rSfM120k": [91642, 77.9, 87.2, 58.4, 74.4], "AugrSfM120k": [274926, 78.5, 88.1, 60.0, 76.3]},
    ),
    "table4": _rows(
        _MH_COLUMNS,
        {
            "R-RMAC[O]": [51.2, 74.0, 21.4, 51.7],
            "R-RMAC[O]+Ours": [56.8, 81.9, 30.5, 65.7],
            "R-GeM[O]": [50.3, 73.0, 23.0, 50.9],
            "R-GeM[O]+Ours": [55.0, 81.5, 30.3, 65.6],
            "R-MAC": [63.3, 76.6, 35.7, 55.5],
            "R-MAC+Ours": [73.2, 86.0, 52.8, 72.1],
            "V-GeM": [61.6, 69.3, 34.3, 44.9],
            "V-GeM+Ours": [73.3, 81.5, 50.0, 73.0],
        },
    ),
    "table5": _rows(
        _T5_COLUMNS,
        {
            "R-GeM(No re-ranking)": [67.3, 49.5, 80.6, 57.3, 44.3, 25.7, 61.5, 29.8],
            "Affinity Feature": [72.0, 52.8, 82.9, 66.5, 51.1, 30.5, 66.8, 43.4],
            "AQE": [72.3, 57.3, 82.7, 62.3, 49.0, 30.5, 65.1, 36.5],
            "AQEwD": [72.0, 56.9, 83.3, 63.0, 48.7, 30.0, 65.9, 37.1],
            "DQE": [72.7, 54.5, 83.7, 64.2, 48.8, 26.3, 66.5, 38.0],
            "αQE": [69.3, 52.5, 86.9, 66.5, 44.5, 26.1, 71.7, 41.6],
            "LAttQE": [73.4, 58.3, 86.3, 67.3, 49.6, 31.0, 70.6, 42.4],
            "ADBA + AQE": [71.9, 55.3, 83.9, 65.0, 53.6, 32.8, 68.0, 39.6],
            "ADBAwD + AQEwD": [73.2, 57.9, 84.3, 65.6, 53.2, 34.0, 68.7, 40.8],
            "DDBA + DQE": [72.0, 56.9, 83.2, 65.4, 50.7, 32.9, 66.7, 39.1],
            "αDBA + αQE": [71.7, 56.0, 87.5, 70.6, 50.7, 31.5, 73.5, 48.5],
            "LAttDBA + LAttQE": [74.0, 60.0, 87.8, 70.5, 54.1, 36.3, 74.1, 48.3],
            "DSM": [67.1, 50.7, 80.5, 57.4, 43.7, 26.6, 61.1, 30.1],
            "CRL": [72.0, 54.4, 83.3, 62.6, 50.0, 30.7, 67.4, 38.4],
            "GSS": [78.0, 57.8, 88.9, 84.8, 60.9, 34.3, 76.5, 69.2],
            "DFS": [73.3, 65.1, 89.7, 85.7, 48.3, 41.2, 80.3, 73.7],
            "Ours(rSfM120k)": [78.2, 61.5, 88.2, 71.6, 59.1, 38.2, 75.3, 51.0],
            "GSS+Ours(rSfM120k)": [79.3, 62.1, 90.7, 85.1, 62.2, 42.3, 80.0, 70.3],
            "DFS+Ours(rSfM120k)": [76.3, 66.2, 90.2, 86.3, 57.8, 42.4, 81.2, 75.4],
            "Ours(AugrSfM120k)": [80.3, 62.8, 90.0, 73.0, 62.4, 39.4, 78.6, 53.0],
            "GSS+Ours(AugrSfM120k)": [79.0, 64.1, 91.4, 85.3, 62.0, 44.0, 81.0, 70.2],
            "DFS+Ours(AugrSfM120k)": [79.2, 69.2, 90.3, 86.0, 61.1, 47.2, 81.3, 74.8],
        },
    ),
    "table6": _rows(
        ["Re-ranking latency (ms)", "Memory (GB) ROxf+R1M", "Memory (GB) RPar+R1M"],
        {
            "DFS": [837, 7.81, 7.82],
            "GSS": [317, 15.37, 15.39],
            "αQE": [184, 7.68, 7.69],
            "Ours(K=1560)": [58, 7.68, 7.69],
            "Ours(K=1280)": [46, 7.68, 7.69],
            "Ours(K=1024)": [37, 7.68, 7.69],
        },
    ),
    "supp_table1": _rows(
        _MH_COLUMNS,
        {
            "R-RMAC[O]": [26.3, 60.0, 5.9, 32.6],
            "R-RMAC[O]+Ours": [29.3, 69.7, 9.6, 46.3],
            "R-GeM[O]": [21.8, 48.0, 5.4, 22.3],
            "R-GeM[O]+Ours": [23.3, 52.4, 8.0, 31.2],
            "R-RMAC[O]-W": [51.2, 74.0, 21.4, 51.7],
            "R-RMAC[O]-W+Ours": [56.8, 81.9, 30.5, 65.7],
            "R-GeM[O]-W": [50.3, 73.0, 23.0, 50.9],
            "R-GeM[O]-W+Ours": [55.0, 81.5, 30.3, 65.6],
            "R-MAC-W": [63.3, 76.6, 35.7, 55.5],
            "R-MAC-W+Ours": [73.2, 86.0, 52.8, 72.1],
            "V-GeM-W": [61.6, 69.3, 34.3, 44.9],
            "V-GeM-W+Ours": [73.3, 81.5, 50.0, 73.0],
        },
    ),
}

# Text columns (descriptions, not measurements) that precede the metrics.
_TEXT_COLUMNS = {
    "table4": ["Training feature"],
    "supp_table1": ["Training feature"],
    "table6": ["Space Cplx.", "Time Cplx."],
}


def columns(table: str, label_header: str) -> list[str]:
    """Every column of a table in the paper's order, each metric followed by its ``paper`` column."""
    metrics = list(next(iter(PAPER[table].values())))
    return [label_header, *_TEXT_COLUMNS.get(table, [])] + [c for m in metrics for c in (m, f"paper {m}")]


# Decimal places of a column: the paper's, except memory, where the demo's few megabytes need four.
_DECIMALS = {"Training nums": 0, "Re-ranking latency (ms)": 1}


def _decimals(column: str) -> int:
    return 4 if column.startswith("Memory") else _DECIMALS.get(column, 2)


def _lookup(document: dict, key: list[str], source: str):
    value = document
    for part in key:
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{source}: no value at {'/'.join(key)}")
        value = value[part]
    return value


def build(table: str, layout: dict) -> pd.DataFrame:
    """The table as a DataFrame: label column, then each metric followed by its ``paper`` column."""
    if table not in PAPER:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(PAPER)}")
    paper = PAPER[table]
    cache: dict[str, dict] = {}
    records = []
    for row in layout["rows"]:
        record = {layout["label_header"]: row["label"], **row.get("text", {})}
        for column, cell in row["cells"].items():
            if cell["file"] not in cache:
                cache[cell["file"]] = json.loads(Path(cell["file"]).read_text())
            value = float(_lookup(cache[cell["file"]], cell["key"], cell["file"]))
            record[column] = round(value, _decimals(column))
            record[f"paper {column}"] = paper.get(row["label"], {}).get(column)
        records.append(record)
    header = columns(table, layout["label_header"])
    # columns the paper does not have (e.g. a test set added to the registry) follow its own, with empty paper values
    extra = dict.fromkeys(c for row in layout["rows"] for c in row["cells"] if c not in header)
    return pd.DataFrame.from_records(records, columns=header + [c for m in extra for c in (m, f"paper {m}")])


def write(frame: pd.DataFrame, csv_path: str | Path, markdown_path: str | Path) -> None:
    """CSV for machines, Markdown for people (empty cells where the paper has no matching row)."""
    with atomic_path(csv_path) as temporary:
        frame.to_csv(temporary, index=False)
    text = frame.astype(object).where(frame.notna(), "").to_markdown(index=False, floatfmt="g") + "\n"
    if frame.empty:
        text += "\nNo row of this table can be computed with the configured experiments.\n"
    write_text(markdown_path, text)
