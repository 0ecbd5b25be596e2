"""The aggregated layout end to end: two months of pre-aggregated files (written from the generator's event
drops) then one event drop, through `streamflow ingest --layout aggregated`, the gate and `streamflow build`,
training on the first labelled month, promotion and `/predict`. Malformed months are refused at ingestion,
before dbt, and change nothing."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest

from ml.promote import promote
from ml.train import train
from streamflow import pipeline
from streamflow.core.db import connect
from streamflow.core.names import MART_SCHEMA, MARTS, SNAPSHOT_SCHEMA, SNAPSHOTS
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator.aggregated import write_history
from streamflow.drops.generator.run import generate
from streamflow.features import apply, materialize
from tests.conftest import make_settings, run_cli, server_home
from tests.serving_world import READ_TOKEN, TOKEN, api_server

pytestmark = pytest.mark.integration

JAN, FEB, MAR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)


@dataclass
class World:
    settings: Settings
    months: list[Path]  # the aggregated months
    events: list[Path]  # the event drops they were written from
    url: str
    first_ingest: list[str]
    raw_before_rerun: dict


def _ingest(settings: Settings, folder: Path, as_of: date, check: bool = True):
    return run_cli(settings, "ingest", "--layout", "aggregated", "--as-of", as_of.isoformat(), str(folder), check=check)


def _raw_state(settings: Settings) -> dict:
    """Every raw table's rows (as text, ordered) and the load log: what must not change."""
    out = {}
    with connect(settings) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = 'raw' and c.relkind = 'p' order by 1"
            )
        ]
        for t in tables:
            out[t] = conn.execute(
                f"select md5(coalesce(string_agg(x::text, '|' order by x::text), '')) from raw.{t} x"
            ).fetchone()
        out["load_log"] = conn.execute(
            "select as_of, manifest_sha256, loaded_at from raw.load_log order by 1"
        ).fetchall()
    return out


def _warehouse_state(settings: Settings) -> dict:
    """Every mart's and snapshot's rows (as text, ordered): what a rebuild must give again."""
    tables = [f"{MART_SCHEMA}.{t}" for t in MARTS] + [f"{SNAPSHOT_SCHEMA}.{t}" for t in SNAPSHOTS]
    with connect(settings) as conn:
        return {
            t: conn.execute(f"select count(*), md5(string_agg(x::text, '|' order by x::text)) from {t} x").fetchone()
            for t in tables
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aggregated")
    generate(tmp / "events", months=3, users=400, seed=5)
    events = sorted((tmp / "events").glob("month_*"))
    months = write_history(events, 2, tmp / "aggregated")
    with server_home("streamflow-agg-") as home:
        settings = make_settings(
            home,
            api_token=TOKEN,
            api_read_token=READ_TOKEN,
            promotion_min_roc_auc=0.5,
            dbt_target_path=tmp / "target",
        )
        EmbeddedPostgres(settings).up()
        first = [_ingest(settings, months[0], JAN).stdout, _ingest(settings, months[1], FEB).stdout]
        run_cli(settings, "ingest", str(events[2]))
        run_cli(settings, "build")
        before = _raw_state(settings)
        apply.apply(settings)
        for month in (JAN, FEB, MAR):
            materialize.materialize(settings, month)
        train(settings, FEB)  # the only labelled period before February: January's month-end outcomes
        assert promote(settings).champion_after == "1"
        with api_server(settings, tmp / "api.log") as (url, _proc):
            yield World(settings, months, events, url, first, before)


def test_two_aggregated_months_and_an_event_drop_are_loaded_and_built(world):
    assert "loaded" in world.first_ingest[0] and "loaded" in world.first_ingest[1]
    with connect(world.settings) as conn:
        built = [
            r[0]
            for r in conn.execute(
                "select (as_of at time zone 'UTC')::date, count(*) from marts.usage_agg_30d group by 1 order by 1"
            )
        ]
        periods = dict(
            conn.execute(
                "select (period_start at time zone 'UTC')::date, count(*) from marts.labels group by 1 order by 1"
            ).fetchall()
        )
        nulls = conn.execute(
            "select count(*) filter (where payment_method is null), count(*) from marts.subscriptions_profile "
            "where as_of = %s",
            (JAN,),
        ).fetchone()
        imported = conn.execute(
            "select sum(watch_hours_30d), sum(failed_payments_90d) from raw.usage_agg_30d u "
            "join raw.payments_agg_90d p using (as_of, user_id) where as_of = %s",
            (FEB,),
        ).fetchone()
        marts = conn.execute(
            "select sum(u.watch_hours_30d), sum(p.failed_payments_90d) from marts.usage_agg_30d u "
            "join marts.payments_agg_90d p using (as_of, user_id) where u.as_of = %s",
            (FEB,),
        ).fetchone()
    assert built == [JAN, FEB, MAR]
    assert set(periods) == {JAN, FEB}  # January's and February's month-end outcomes (February's again in March)
    assert nulls[0] == nulls[1] > 0  # payment_method is absent from these exports
    assert marts[0] == pytest.approx(imported[0]) and marts[1] == imported[1]


def test_the_first_event_month_fills_its_90_day_windows_from_the_aggregated_months(world):
    """March's failed payments: March's events plus February's 90-day count prorated by the 59 days of
    March's window that lie before March."""
    with connect(world.settings) as conn:
        rows = conn.execute(
            """select m.user_id, m.failed_payments_90d, a.failed_payments_90d
               from marts.payments_agg_90d m join raw.payments_agg_90d a on a.user_id = m.user_id and a.as_of = %s
               where m.as_of = %s""",
            (FEB, MAR),
        ).fetchall()
        events = dict(
            conn.execute(
                "select user_id, count(*) from raw.payments where as_of = %s and status = 'failed' group by 1", (MAR,)
            ).fetchall()
        )
    assert rows
    for user, value, february in rows:
        assert value == events.get(user, 0) + round(february * 59 / 90), user


def test_the_champion_trained_on_aggregated_months_answers_predict(world):
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=30) as api:
        with connect(world.settings) as conn:
            user = conn.execute(
                "select user_id from marts.subscriptions_profile where as_of = %s order by user_id limit 1", (MAR,)
            ).fetchone()[0]
        r = api.post("/predict", json={"user_id": user})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 <= body["churn_probability"] <= 1
    assert body["model_version"] == "1"


def test_rerunning_the_imports_and_the_build_changes_nothing(world):
    s = world.settings
    for folder, as_of in zip(world.months, (JAN, FEB), strict=True):
        proc = _ingest(s, folder, as_of, check=False)
        # an older month than the newest loaded one: unchanged when identical
        assert proc.returncode == 0 and "unchanged" in proc.stdout, proc.stdout + proc.stderr
    run_cli(s, "build")
    assert _raw_state(s) == world.raw_before_rerun


def _broken(world, tmp_path: Path, change) -> Path:
    folder = tmp_path / "month_009"
    shutil.copytree(world.months[1], folder)
    change(folder)
    return folder


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _second_line(path: Path) -> str:
    return path.read_text().splitlines()[1]


CASES = {
    "missing file": (lambda f: (f / "support_agg_90d.csv").unlink(), ["support_agg_90d.csv", "file is missing"]),
    "bad boolean": (
        lambda f: _edit(
            f / "users.csv",
            _second_line(f / "users.csv"),
            _second_line(f / "users.csv").replace(",False,", ",maybe,", 1),
        ),
        ["users.csv", "must be True or False", "line 2"],
    ),
    "negative hours": (
        lambda f: _edit(
            f / "usage_agg_30d.csv",
            _second_line(f / "usage_agg_30d.csv"),
            ",".join(
                [
                    _second_line(f / "usage_agg_30d.csv").split(",")[0],
                    "-3.5",
                    *_second_line(f / "usage_agg_30d.csv").split(",")[2:],
                ]
            ),
        ),
        ["usage_agg_30d.csv", "column watch_hours_30d", "must not be negative", "line 2", "-3.5"],
    ),
    "duplicate user": (
        lambda f: (f / "payments_agg_90d.csv").write_text(
            (f / "payments_agg_90d.csv").read_text() + _second_line(f / "payments_agg_90d.csv") + "\n"
        ),
        ["payments_agg_90d.csv", "column user_id", "one row per user", "first on line 2"],
    ),
    "label for an unknown user": (
        lambda f: (f / "labels.csv").write_text((f / "labels.csv").read_text() + "0000-ZZZZZ,True\n"),
        ["labels.csv", "column user_id", "a label for a user that is not in users.csv", "0000-ZZZZZ"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_month_is_refused_naming_file_column_line_and_rule_and_changes_nothing(world, tmp_path, case):
    change, expected = CASES[case]
    folder = _broken(world, tmp_path, change)
    proc = _ingest(world.settings, folder, date(2024, 4, 30), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Ingestion refused: nothing was loaded" in out and "Traceback" not in out
    for piece in expected:
        assert piece in out, (piece, out)
    assert _raw_state(world.settings) == world.raw_before_rerun


def test_an_aggregated_month_after_an_event_month_is_refused_and_changes_nothing(world):
    proc = _ingest(world.settings, world.months[1], date(2024, 4, 30), check=False)  # March is an event drop
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert "comes after event drops already loaded (2024-03-31)" in out, out
    assert _raw_state(world.settings) == world.raw_before_rerun


def test_as_of_must_be_a_month_end_and_the_layout_needs_it(world):
    proc = _ingest(world.settings, world.months[0], date(2024, 4, 15), check=False)
    assert proc.returncode == 1 and "not a month end" in proc.stdout + proc.stderr
    proc = run_cli(world.settings, "ingest", "--layout", "aggregated", str(world.months[0]), check=False)
    assert proc.returncode == 1 and "--as-of" in proc.stdout + proc.stderr


def test_the_load_log_names_the_files_of_an_aggregated_month(world):
    with connect(world.settings) as conn:
        files = conn.execute("select files from raw.load_log where as_of = %s", (JAN,)).fetchone()[0]
    assert set(files) == {
        "users",
        "subscriptions",
        "usage_agg_30d",
        "payments_agg_90d",
        "support_agg_90d",
        "labels_at_month_end",
    }
    assert files["labels_at_month_end"]["path"] == "labels.csv"


def test_the_carry_rules_of_the_windowed_marts_pass_as_dbt_unit_tests(world):
    proc = run_cli(world.settings, "dbt", "test", "--select", "test_type:unit")
    assert "ERROR=0" in proc.stdout and "FAIL" not in proc.stdout, proc.stdout
    for name in (
        "usage_carries_the_aggregated_month_into_30_days",
        "support_carries_the_aggregated_month_by_tickets",
        "payments_carry_the_aggregated_month_prorated",
    ):
        assert re.search(rf"PASS \w+::{name}", proc.stdout), name


def test_the_monthly_dags_steps_take_a_month_of_the_aggregated_layout(world):
    """What the DAG's resolve_month and ingest tasks run for conf {"drop", "as_of", "layout": "aggregated"}."""
    month = pipeline.resolve_month(str(world.months[1]), FEB.isoformat(), "aggregated")
    assert month == {"as_of": FEB.isoformat(), "drop": str(world.months[1].resolve()), "layout": "aggregated"}
    result = pipeline.ingest_drop(month["drop"], world.settings, layout=month["layout"], as_of=month["as_of"])
    assert result["status"] == "unchanged" and result["as_of"] == FEB.isoformat()
    assert result["rows"]["usage_agg_30d"] > 0
    with pytest.raises(pipeline.StepRefused, match="append-only in business time"):
        pipeline.ingest_drop(str(world.months[0]), world.settings, layout="aggregated", as_of="2024-02-29")
    assert _raw_state(world.settings) == world.raw_before_rerun


def test_forget_aggregated_goes_with_rebuild(world):
    proc = run_cli(world.settings, "ingest", "--forget-aggregated", str(world.events[2]), check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "--forget-aggregated goes with --rebuild" in out and "Traceback" not in out
    assert _raw_state(world.settings) == world.raw_before_rerun


def _month_states(settings: Settings) -> dict:
    with connect(settings) as conn:
        rows = conn.execute("select as_of, state from ops.month_log order by 1, 2").fetchall()
    out: dict = {}
    for as_of, state in rows:
        out.setdefault(as_of, []).append(state)
    return out


def test_ingest_rebuild_keeps_the_aggregated_months_and_the_rebuilt_marts_are_the_same(world):
    s = world.settings
    marts = _warehouse_state(s)
    before = _raw_state(s)
    for attempt in range(2):  # the second time: an idempotent rerun
        proc = run_cli(s, "ingest", "--rebuild", str(world.events[2]))
        out = " ".join(proc.stdout.split())
        assert "history rebuilt" in out and out.count("kept") == 2 and "loaded" in out, proc.stdout
        after = _raw_state(s)
        # the aggregated months: their raw rows and their load log entries (loaded_at too) as they were
        assert {t: v for t, v in after.items() if t != "load_log"} == {
            t: v for t, v in before.items() if t != "load_log"
        }, attempt
        assert after["load_log"][:2] == before["load_log"][:2]
        assert [r[:2] for r in after["load_log"]] == [r[:2] for r in before["load_log"]]
        assert after["load_log"][2][2] > before["load_log"][2][2]  # March reloaded
        assert _month_states(s) == {JAN: ["loaded"], FEB: ["loaded"], MAR: ["loaded"]}
        if attempt == 0:
            proc = run_cli(s, "build")
            # a full refresh of the mixed history, built beside and swapped in: the incremental build's marts
            assert "rebuilding from the raw history" in " ".join(proc.stdout.split()), proc.stdout
            assert _warehouse_state(s) == marts and marts["marts.usage_agg_30d"][0] > 0
            before = _raw_state(s)


def test_a_corrected_older_aggregated_month_is_refused_then_replaced_in_place_with_rebuild(world, tmp_path):
    s = world.settings
    corrected = tmp_path / "month_000"
    shutil.copytree(world.months[0], corrected)
    usage = corrected / "usage_agg_30d.csv"
    header, first, *rest = usage.read_text().splitlines()
    user, _hours, *others = first.split(",")
    usage.write_text("\n".join([header, ",".join([user, "123.5", *others]), *rest]) + "\n")
    before = _raw_state(s)

    proc = _ingest(s, corrected, JAN, check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "replaces already loaded history" in out and "add --rebuild" in out, out
    assert _raw_state(s) == before

    proc = run_cli(s, "ingest", "--layout", "aggregated", "--as-of", JAN.isoformat(), "--rebuild", str(corrected))
    assert "replaced" in proc.stdout
    after = _raw_state(s)
    assert after["usage_agg_30d"] != before["usage_agg_30d"]
    for table in ("payments_agg_90d", "sessions", "payments", "tickets", "labels"):
        assert after[table] == before[table], table  # February's and March's rows as they were
    assert after["load_log"][1:] == before["load_log"][1:]
    with connect(s) as conn:
        hours = conn.execute(
            "select as_of, watch_hours_30d from raw.usage_agg_30d where user_id = %s order by 1", (user,)
        ).fetchall()
    assert hours[0] == (JAN, 123.5) and len(hours) >= 1
    # January and the months after it are loaded, nothing more, until they are built again
    assert _month_states(s) == {JAN: ["loaded"], FEB: ["loaded"], MAR: ["loaded"]}
    proc = run_cli(s, "ingest", "--layout", "aggregated", "--as-of", JAN.isoformat(), "--rebuild", str(corrected))
    assert "unchanged" in proc.stdout and _raw_state(s) == after


def test_ingest_rebuild_with_forget_aggregated_drops_the_imported_months(world):
    """Last in the module: it leaves only the event month loaded."""
    proc = run_cli(world.settings, "ingest", "--rebuild", "--forget-aggregated", str(world.events[2]))
    assert "kept" not in proc.stdout
    with connect(world.settings) as conn:
        loaded = [r[0] for r in conn.execute("select as_of from raw.load_log order by 1")]
        imported = conn.execute("select count(*) from raw.usage_agg_30d").fetchone()[0]
        users = conn.execute("select count(distinct as_of) from raw.users").fetchone()[0]
    assert loaded == [MAR] and imported == 0 and users == 1
