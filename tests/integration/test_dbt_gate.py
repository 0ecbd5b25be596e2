"""The quality gate in practice: each content defect of a new drop stops `streamflow build` at the
source tests, names the test and column, and leaves every snapshot and mart as it was; a rule on a
value no feature reads (an unseen ticket category) warns, and the month is built."""

from __future__ import annotations

import importlib
import json
from datetime import date, timedelta

import pandas as pd
import pytest

from streamflow.core import months
from streamflow.core.db import connect
from streamflow.dag_support import gate_warnings
from streamflow.drops.ingest import ingest
from streamflow.warehouse.build import build
from streamflow.warehouse.gate import GateFailed
from streamflow.warehouse.runner import dbt_vars, invoke
from tests.conftest import WAREHOUSE_MONTHS, run_cli
from tests.integration.dbt_reference import (
    assert_frames_equal,
    copy_drop,
    expected_marts,
    read_drops,
    read_table,
    warehouse_digests,
)

pytestmark = pytest.mark.integration


def _next_as_of(drop) -> date:
    return date.fromisoformat(json.loads((drop / "manifest.json").read_text())["as_of"])


def _set(frame: pd.DataFrame, column: str, value: str, rows: int = 1) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[: rows - 1, column] = value
    return frame


def _new_users_of(next_drop, previous_drop) -> list[str]:
    """Subscribers of the next drop who were not subscribers of the previous one (new sign-ups)."""
    now = pd.read_csv(next_drop / "subscriptions.csv", dtype=str)["user_id"]
    before = set(pd.read_csv(previous_drop / "subscriptions.csv", dtype=str)["user_id"])
    return [u for u in now if u not in before]


# defect -> (edits of the next month's drop, the test that must fail, the table and column it names)
DEFECTS = {
    "negative minutes": (
        lambda ctx: {"sessions": lambda f: _set(f, "minutes", "-5.00", rows=3)},
        "expect_column_values_to_be_between",
        "raw.sessions",
        "minutes",
    ),
    "zero fee": (
        lambda ctx: {"subscriptions": lambda f: _set(f, "monthly_fee", "0.00")},
        "expect_column_values_to_be_between",
        "raw.subscriptions",
        "monthly_fee",
    ),
    "unknown contract type": (
        lambda ctx: {"subscriptions": lambda f: _set(f, "contract_type", "Three year")},
        "expect_column_values_to_be_in_set",
        "raw.subscriptions",
        "contract_type",
    ),
    "unknown payment status": (
        lambda ctx: {"payments": lambda f: _set(f, "status", "pending")},
        "expect_column_values_to_be_in_set",
        "raw.payments",
        "status",
    ),
    "duplicate subscriber": (
        lambda ctx: {"subscriptions": lambda f: pd.concat([f, f.iloc[[0]]], ignore_index=True)},
        "expect_compound_columns_to_be_unique",
        "raw.subscriptions",
        "user_id",
    ),
    "event for an unknown user": (
        lambda ctx: {"sessions": lambda f: _set(f, "user_id", "9999-ZZZZZ")},
        "relationships_within_drop",
        "raw.sessions",
        "user_id",
    ),
    "event after as_of": (
        lambda ctx: {"sessions": lambda f: _set(f, "started_at", f"{ctx['as_of'] + timedelta(days=1)}T00:00:01Z")},
        "event_within_drop_month",
        "raw.sessions",
        "started_at",
    ),
    "label for a non-subscriber": (
        lambda ctx: {"labels": lambda f: _set(f, "user_id", ctx["new_user"])},
        "user_active_at_period_start",
        "raw.labels",
        "user_id",
    ),
    "zero subscribers": (
        lambda ctx: {"subscriptions": lambda f: f.iloc[0:0]},
        "expect_column_distinct_count_to_be_greater_than",
        "raw.subscriptions",
        "user_id",
    ),
}


@pytest.fixture(scope="module")
def before(warehouse_copy):
    """Digests of every snapshot and mart of the built warehouse (3 months)."""
    settings = warehouse_copy("dbt_gate_reference")
    with connect(settings) as conn:
        return warehouse_digests(conn)


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_content_defect_stops_the_build_at_the_gate_and_changes_nothing(
    defect, session_drops, warehouse_copy, before, tmp_path
):
    edits, test_name, table, column = DEFECTS[defect]
    good_next, previous = session_drops[WAREHOUSE_MONTHS], session_drops[WAREHOUSE_MONTHS - 1]
    as_of = _next_as_of(good_next)
    ctx = {"as_of": as_of, "new_user": _new_users_of(good_next, previous)[0]}
    bad = copy_drop(good_next, tmp_path / good_next.name, edits(ctx))
    settings = warehouse_copy("dbt_gate_defects")  # the same name each time: dbt's parse cache is reused
    ingest(settings, [bad])

    with pytest.raises(GateFailed) as caught:
        build(settings)

    report = caught.value.report
    assert report.as_of == as_of
    named = [f for f in report.failures if f.test == test_name and f.table == table and column in (f.column or "")]
    assert named, f"{test_name} on {table}.{column} not in:\n{report.render()}"
    failure = named[0]
    assert failure.status == "fail" and failure.failing_rows and failure.failing_rows > 0
    assert failure.files == [str(bad.resolve() / f"{table.split('.')[1]}.csv")]
    text = report.render()
    assert test_name in text and table in text and column in text and "not changed" in text
    with connect(settings) as conn:
        assert warehouse_digests(conn) == before
        built = conn.execute("select max(as_of) from analytics.dbt_build_log").fetchone()[0]
    assert built < as_of


def test_row_level_failures_show_sample_rows_with_the_offending_values(session_drops, warehouse_copy, tmp_path):
    good_next = session_drops[WAREHOUSE_MONTHS]
    bad = copy_drop(good_next, tmp_path / good_next.name, {"sessions": lambda f: _set(f, "minutes", "-5.00", rows=7)})
    settings = warehouse_copy("dbt_gate_defects")
    ingest(settings, [bad])
    with pytest.raises(GateFailed) as caught:
        build(settings)
    (failure,) = caught.value.report.failures
    assert failure.failing_rows == 7
    assert len(failure.rows) == 5  # at most five samples
    assert "session_id" in failure.columns and "minutes" in failure.columns
    minutes = failure.columns.index("minutes")
    assert all(str(row[minutes]) == "-5.00" for row in failure.rows)


def test_cli_build_prints_the_gate_report_and_exits_non_zero(session_drops, warehouse_copy, tmp_path):
    good_next = session_drops[WAREHOUSE_MONTHS]
    bad = copy_drop(good_next, tmp_path / good_next.name, {"payments": lambda f: _set(f, "status", "pending", rows=2)})
    settings = warehouse_copy("dbt_gate_defects")
    ingest(settings, [bad])

    proc = run_cli(settings, "build", check=False)

    assert proc.returncode == 1
    out = proc.stderr
    assert "Quality gate failed for drop" in out
    assert "expect_column_values_to_be_in_set  raw.payments.status  2 failing rows" in out
    assert f"file: {bad.resolve() / 'payments.csv'}" in out
    assert "pending" in out and "Traceback" not in out + proc.stdout


def test_the_run_logs_say_a_month_stopped_at_the_gate_is_loaded_but_not_built(session_drops, warehouse_copy, tmp_path):
    edits = DEFECTS[next(iter(DEFECTS))][0]
    good_next, previous = session_drops[WAREHOUSE_MONTHS], session_drops[WAREHOUSE_MONTHS - 1]
    as_of = _next_as_of(good_next)
    ctx = {"as_of": as_of, "new_user": _new_users_of(good_next, previous)[0]}
    settings = warehouse_copy("dbt_gate_defects")
    ingest(settings, [copy_drop(good_next, tmp_path / good_next.name, edits(ctx))])
    with pytest.raises(GateFailed):
        build(settings)

    with connect(settings) as conn:
        loaded, built = months.loaded_months(conn), months.built_months(conn, settings)
        labelled = months.labelled_periods(conn, settings)
        in_marts = [
            r[0] for r in conn.execute("select distinct (period_start at time zone 'UTC')::date from marts.labels")
        ]
    assert loaded[-1] == as_of and built == loaded[:-1]
    assert labelled == sorted(in_marts) and labelled and max(labelled) < built[-1]


# ---------------------------------------------------------------------------------------
# severity warn: a value no feature reads
# ---------------------------------------------------------------------------------------
UNSEEN_CATEGORY = "other"
FEATURE_MARTS = ["subscriptions_profile", "usage_agg_30d", "payments_agg_90d", "support_agg_90d"]


def _unseen_category(frame: pd.DataFrame) -> pd.DataFrame:
    return _set(frame, "category", UNSEEN_CATEGORY, rows=3)


def test_an_unseen_ticket_category_warns_and_the_month_is_built(session_drops, warehouse_copy, tmp_path):
    good_next = session_drops[WAREHOUSE_MONTHS]
    as_of = _next_as_of(good_next)
    drop = copy_drop(good_next, tmp_path / good_next.name, {"tickets": _unseen_category})
    settings = warehouse_copy("dbt_gate_warn")
    ingest(settings, [drop])

    proc = run_cli(settings, "build", check=False)

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    warning = next(ln for ln in proc.stderr.splitlines() if ln.startswith("warning: quality gate"))
    assert f"drop {as_of}" in warning
    assert "expect_column_values_to_be_in_set  raw.tickets.category  3 failing rows" in warning
    assert f"file: {drop.resolve() / 'tickets.csv'}" in proc.stderr
    assert UNSEEN_CATEGORY in proc.stderr  # the sample rows show the value
    assert "built 1 month(s)" in proc.stdout

    report = json.loads((settings.reports_dir / f"dbt_gate_{as_of}.json").read_text())
    assert report["ok"] is True and report["failures"] == []
    (warned,) = report["warned"]
    assert (warned["test"], warned["table"], warned["column"]) == (
        "expect_column_values_to_be_in_set",
        "raw.tickets",
        "category",
    )
    assert warned["status"] == "warn" and warned["failing_rows"] == 3
    assert warned["files"] == [str(drop.resolve() / "tickets.csv")]
    category = warned["columns"].index("category")
    assert {row[category] for row in warned["rows"]} == {UNSEEN_CATEGORY}

    with connect(settings) as conn:
        assert months.built_months(conn, settings)[-1] == as_of
        (recorded,) = conn.execute(
            "select detail from ops.month_log where as_of = %s and state = 'gated'", (as_of,)
        ).fetchone()
        assert [(w["test"], w["column"], w["failing_rows"]) for w in recorded["warned"]] == [
            ("expect_column_values_to_be_in_set", "category", 3)
        ]
        reference = expected_marts(read_drops([*session_drops[:WAREHOUSE_MONTHS], drop]))
        for mart in FEATURE_MARTS:  # the month's features are what they are for any ticket category
            actual = read_table(conn, f"marts.{mart}", "as_of, user_id")
            assert actual["as_of"].max() == pd.Timestamp(as_of, tz="UTC")
            assert_frames_equal(actual, reference[mart][list(actual.columns)], ["as_of", "user_id"])


def test_a_defect_that_protects_a_feature_still_fails_the_month_beside_a_warning(
    session_drops, warehouse_copy, before, tmp_path
):
    good_next = session_drops[WAREHOUSE_MONTHS]
    edits = {"tickets": _unseen_category, "sessions": lambda f: _set(f, "minutes", "-5.00", rows=2)}
    drop = copy_drop(good_next, tmp_path / good_next.name, edits)
    settings = warehouse_copy("dbt_gate_defects")
    ingest(settings, [drop])

    with pytest.raises(GateFailed) as caught:
        build(settings)

    report = caught.value.report
    assert [(f.table, f.column, f.test) for f in report.failures] == [
        ("raw.sessions", "minutes", "expect_column_values_to_be_between")
    ]
    assert [(w.table, w.column, w.status, w.failing_rows) for w in report.warned] == [
        ("raw.tickets", "category", "warn", 3)
    ]
    text = report.render()
    assert "x expect_column_values_to_be_between  raw.sessions.minutes" in text
    assert "! expect_column_values_to_be_in_set  raw.tickets.category  3 failing rows" in text
    assert report.as_dict()["warned"][0]["failing_rows"] == 3
    with connect(settings) as conn:
        assert warehouse_digests(conn) == before


def _cosmos_runner(monkeypatch, home):
    """cosmos' dbtRunner helpers, with Airflow (which cosmos imports first) kept in a private home."""
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkeypatch.setenv("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
    # lazy: Airflow reads AIRFLOW_HOME when imported, and must be imported before cosmos (circular import)
    importlib.import_module("airflow")
    return importlib.import_module("cosmos.dbt.runner")


def test_the_airflow_gate_task_passes_on_a_warning_and_logs_it(session_drops, warehouse_copy, tmp_path, monkeypatch):
    """cosmos' own handling of a dbtRunner result (what DbtTestLocalOperator does with the gate's
    `dbt test`): a warn-severity test is no error, and the gate's warning callback logs it."""
    cosmos_runner = _cosmos_runner(monkeypatch, tmp_path / "airflow")
    good_next = session_drops[WAREHOUSE_MONTHS]
    as_of = _next_as_of(good_next)
    settings = warehouse_copy("dbt_gate_warn")
    ingest(settings, [copy_drop(good_next, tmp_path / good_next.name, {"tickets": _unseen_category})])

    args = ["test", "--select", "source:raw.tickets", "--vars", json.dumps(dbt_vars(settings, as_of))]
    res = invoke(settings, [*args, "--log-level", "none"])

    assert res.success and res.exception is None
    cosmos_runner.handle_exception_if_needed(res)  # raises CosmosDbtRunError on a failed gate
    assert cosmos_runner.parse_number_of_warnings(res) == 1
    names, messages = cosmos_runner.extract_message_by_status(res)
    (line,) = gate_warnings({"test_names": names, "test_results": messages})  # what the task log shows
    assert "expect_column_values_to_be_in_set" in line and "tickets_category" in line and "Got 3 results" in line
