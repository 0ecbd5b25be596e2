"""Pure logic of the warehouse build: which months to build, and the gate report."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from streamflow.core.env import dbt_environment
from streamflow.warehouse.build import PlanError, build_args, drop_version, plan_build, plan_for_warehouse
from streamflow.warehouse.gate import FailedTest, GateReport, _sample_columns
from streamflow.warehouse.runner import dbt_vars, one_line
from tests.conftest import make_settings

JAN, FEB, MAR, APR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)


def test_first_build_processes_every_loaded_month_in_order():
    plan = plan_build({MAR: "c", JAN: "a", FEB: "b"}, {})
    assert plan.months == [JAN, FEB, MAR] and not plan.full_refresh


def test_only_new_months_are_processed_when_built_ones_are_unchanged():
    plan = plan_build({JAN: "a", FEB: "b", MAR: "c"}, {JAN: "a", FEB: "b"})
    assert plan.months == [MAR] and not plan.full_refresh


def test_rerunning_with_nothing_new_does_nothing():
    plan = plan_build({JAN: "a", FEB: "b"}, {JAN: "a", FEB: "b"})
    assert plan.months == [] and "up to date" in plan.reason


@pytest.mark.parametrize(
    ("loaded", "why"),
    [
        ({JAN: "a", FEB: "b2", MAR: "c"}, "reloaded"),  # February re-ingested with other content
        ({JAN: "a", MAR: "c"}, "no longer loaded"),  # February gone after ingest --rebuild
    ],
)
def test_a_changed_or_vanished_built_month_rebuilds_everything_in_order(loaded, why):
    plan = plan_build(loaded, {JAN: "a", FEB: "b"})
    assert plan.full_refresh and plan.months == sorted(loaded)
    assert why in plan.reason and "2024-02-29" in plan.reason


def test_a_month_older_than_the_built_ones_forces_a_rebuild():
    plan = plan_build({JAN: "a", FEB: "b", MAR: "c"}, {JAN: "a", MAR: "c"})
    assert plan.full_refresh and plan.months == [JAN, FEB, MAR]


def test_as_of_limits_the_build_to_months_up_to_it():
    plan = plan_build({JAN: "a", FEB: "b", MAR: "c"}, {}, as_of=FEB)
    assert plan.months == [JAN, FEB]


def test_full_refresh_replays_every_month_up_to_as_of():
    plan = plan_build({JAN: "a", FEB: "b", MAR: "c"}, {JAN: "a", FEB: "b", MAR: "c"}, full_refresh=True)
    assert plan.full_refresh and plan.months == [JAN, FEB, MAR]


@pytest.mark.parametrize(
    ("built", "present"),
    [
        ({JAN: "a"}, 3),  # some snapshots or marts were dropped by hand
        ({}, 7),  # snapshots and marts exist with no build log
    ],
)
def test_relations_that_do_not_match_the_build_log_are_rebuilt_from_the_raw_history(built, present):
    plan = plan_for_warehouse({JAN: "a", FEB: "b"}, built, present)
    assert plan.full_refresh and plan.months == [JAN, FEB]
    assert "do not match the build log" in plan.reason


def test_relations_matching_the_build_log_build_only_new_months():
    assert plan_for_warehouse({JAN: "a", FEB: "b"}, {JAN: "a"}, 7).months == [FEB]
    assert plan_for_warehouse({JAN: "a"}, {}, 0).months == [JAN]


def test_a_months_build_leaves_the_gate_and_unit_tests_out_and_refreshes_only_when_asked(tmp_path):
    settings = make_settings(tmp_path)
    args = build_args(settings, FEB)
    assert args[:5] == ["build", "--exclude", "source:raw", "--exclude-resource-type", "unit_test"]
    assert '"as_of": "2024-02-29"' in args[6] and "--full-refresh" not in args
    assert build_args(settings, FEB, full_refresh=True)[-1] == "--full-refresh"


def test_an_as_of_that_is_not_loaded_names_the_loaded_months():
    with pytest.raises(PlanError, match=r"as_of 2024-04-30 is not a loaded drop\. Loaded: 2024-01-31, 2024-02-29"):
        plan_build({JAN: "a", FEB: "b"}, {}, as_of=APR)


def test_nothing_loaded_says_what_to_do():
    with pytest.raises(PlanError, match="streamflow ingest"):
        plan_build({}, {})


def test_a_reload_of_identical_files_is_a_new_drop_version():
    sha = "ab" * 32
    first = drop_version(sha, datetime(2024, 5, 1, 10, 0, tzinfo=UTC))
    again = drop_version(sha, datetime(2024, 5, 3, 9, 0, tzinfo=UTC))
    assert first != again and first.startswith(sha)


def test_dbt_vars_carry_the_month_and_the_gate_threshold(tmp_path):
    settings = make_settings(tmp_path, gate_max_subscriber_change=0.25)
    assert dbt_vars(settings, FEB) == {"as_of": "2024-02-29", "gate_max_subscriber_change": 0.25}
    assert "as_of" not in dbt_vars(settings)


def test_dbt_environment_points_plain_dbt_at_the_project_and_the_configured_artifacts(tmp_path):
    settings = make_settings(
        tmp_path, dbt_target_path=tmp_path / "dbt" / "target", dbt_target_schema="wh", gate_max_subscriber_change=0.2
    )
    env = dbt_environment(settings)
    assert env["STREAMFLOW_GATE_MAX_SUBSCRIBER_CHANGE"] == "0.2"  # the default of the dbt var
    assert env["DBT_PROFILES_DIR"] == env["DBT_PROJECT_DIR"] == str(settings.project_dir / "dbt_project")
    assert env["DBT_TARGET_PATH"] == str(tmp_path / "dbt" / "target")
    assert env["DBT_LOG_PATH"] == str(tmp_path / "dbt" / "logs")
    assert env["STREAMFLOW_DBT_TARGET_SCHEMA"] == "wh"
    assert env["DBT_SEND_ANONYMOUS_USAGE_STATS"] == "false"


def test_samples_show_the_files_key_and_the_tested_column_of_a_raw_row():
    cols = ["as_of", "session_id", "user_id", "started_at", "device_id", "minutes", "skips", "rebuffer_events"]
    picked = [cols[i] for i in _sample_columns(cols, "raw.sessions", ["minutes"])]
    assert picked == ["session_id", "user_id", "minutes"]


def test_samples_of_an_aggregate_test_show_every_column():
    cols = ["as_of", "previous_as_of", "subscribers", "previous_subscribers", "change_fraction"]
    assert [cols[i] for i in _sample_columns(cols, "raw.subscriptions", ["user_id"])] == cols


def test_the_report_names_test_column_count_file_and_samples():
    failure = FailedTest(
        test="expect_column_values_to_be_between",
        node="n",
        table="raw.sessions",
        column="minutes",
        status="fail",
        failing_rows=3,
        columns=["session_id", "minutes"],
        rows=[["S1", Decimal("-5.00")], ["S2", Decimal("-1.50")]],
        files=["/drops/month_003/sessions.csv"],
    )
    report = GateReport(
        as_of=APR,
        drop="month_003",
        failures=[failure],
        tests_run=66,
        warnings=["freshness of raw.load_log: the newest drop was loaded 40 days ago"],
    )
    text = report.render()
    assert text.splitlines()[0] == (
        "Quality gate failed for drop 2024-04-30 (month_003): 1 of 66 tests failed. "
        "Snapshots and marts were not changed."
    )
    assert "x expect_column_values_to_be_between  raw.sessions.minutes  3 failing rows" in text
    assert "file: /drops/month_003/sessions.csv" in text
    assert "S2          -1.50" in text
    assert "! freshness of raw.load_log" in text
    assert not report.ok and report.as_dict()["failures"][0]["failing_rows"] == 3


def test_a_test_that_could_not_run_shows_its_error_instead_of_a_count():
    failure = FailedTest(
        test="relationships_within_drop",
        node="n",
        table="raw.tickets",
        column="user_id",
        status="error",
        failing_rows=None,
        message='relation "raw.tickets" does not exist',
    )
    text = failure.render()
    assert "could not run" in text and 'relation "raw.tickets" does not exist' in text


def test_a_dbt_parse_error_becomes_one_line_naming_the_file():
    text = (
        "Compilation Error in model labels (models/marts/labels.sql)\n"
        "  expected token ',', got 'x'\n"
        "    line 19\n"
        "      select {{ broken( from x\n"
    )
    assert one_line(text) == (
        "Compilation Error in model labels (models/marts/labels.sql): expected token ',', got 'x': line 19"
    )
    yaml_error = (
        "Parsing Error\n  Error reading streamflow: staging/__sources.yml - Runtime Error\n"
        "    Syntax error near line 10\n    ------------------------------\n    9  |     tables: [\n"
    )
    assert one_line(yaml_error) == (
        "Parsing Error: Error reading streamflow: staging/__sources.yml - Runtime Error: Syntax error near line 10"
    )
    assert one_line("") == "see the dbt log"


def test_a_report_with_a_warned_test_passes_and_shows_it_with_its_rows():
    warned = FailedTest(
        test="expect_column_values_to_be_in_set",
        node="n",
        table="raw.tickets",
        column="category",
        status="warn",
        failing_rows=3,
        columns=["ticket_id", "category"],
        rows=[["T1", "other"]],
        files=["/drops/month_003/tickets.csv"],
    )
    report = GateReport(as_of=APR, drop="month_003", tests_run=66, warned=[warned])
    assert report.ok
    text = report.render()
    assert text.splitlines()[0] == "Quality gate passed for drop 2024-04-30: 66 tests, 1 warned (the month goes on)"
    assert "! expect_column_values_to_be_in_set  raw.tickets.category  3 failing rows" in text and "other" in text
    assert report.warning_lines() == ["expect_column_values_to_be_in_set  raw.tickets.category  3 failing rows"]
    data = report.as_dict()
    assert data["ok"] and data["warned"][0]["rows"] == [["T1", "other"]] and data["warned"][0]["status"] == "warn"
