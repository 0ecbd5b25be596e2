"""The demo's per-month table counts the rows each mart holds for the month; the labels mart is keyed by
period_start, so each month shows the labels its drop delivered (those of the previous month)."""

from __future__ import annotations

import csv
import json
from datetime import date

import pytest
from rich.console import Console

from streamflow.cli.demo import _month_summary, _print_month_table
from tests.conftest import WAREHOUSE_MONTHS

pytestmark = pytest.mark.integration


def _labels_in_drop(drop) -> int:
    with open(drop / "labels.csv", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def test_each_month_counts_the_labels_its_drop_delivered(built_warehouse, session_drops):
    drops = session_drops[:WAREHOUSE_MONTHS]
    months = [date.fromisoformat(json.loads((d / "manifest.json").read_text())["as_of"]) for d in drops]
    summaries = {m: _month_summary(built_warehouse, m) for m in months}
    assert summaries[months[0]]["marts.labels"] == 0  # the first drop carries no labels
    for drop, month in zip(drops[1:], months[1:], strict=True):
        delivered = _labels_in_drop(drop)
        assert delivered > 0
        assert summaries[month]["marts.labels"] == delivered == summaries[month]["labels rows"]
        assert summaries[month]["marts.subscriptions_profile"] > 0

    out = Console(record=True, width=200)
    _print_month_table(out, summaries)
    row = next(line for line in out.export_text().splitlines() if "marts.labels" in line)
    cells = [c.strip() for c in row.split("│")[2:-1]]
    assert cells == ["0", *[f"{_labels_in_drop(d):,}" for d in drops[1:]]], row
