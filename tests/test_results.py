"""Published results re-render byte for byte: `avae report` on the committed run files (no
checkpoints) gives the committed report.md and CSV files, and the tables parse."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from avae.report import write_report

RESULTS = Path(__file__).resolve().parent.parent / "results"
PUBLISHED = sorted(p.parent for p in RESULTS.glob("*/report.md"))


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_committed_report_regenerates_byte_for_byte(folder, tmp_path):
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("report"))
    write_report(copy)
    assert (copy / "report.md").read_bytes() == (folder / "report.md").read_bytes()
    for table in sorted((folder / "report").glob("*.csv")):
        assert (copy / "report" / table.name).read_bytes() == table.read_bytes(), table.name


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_committed_tables_match_the_report(folder):
    rows = list(csv.DictReader((folder / "report" / "table1.csv").open()))
    assert rows, "empty table1.csv"
    text = (folder / "report.md").read_text()
    for row in rows:
        if row["figure"] == "own" and row["mean"] != "nan":
            assert f"{float(row['mean']):.2f} ± {float(row['ci95']):.2f}" in text, row
