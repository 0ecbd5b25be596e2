"""What the warehouse must hold, computed with pandas straight from the drop CSVs.

Independent of the dbt SQL on purpose: it reads the files (not raw.*), and implements the windows,
the SCD2 history and the business-time convention from their definitions in ARCHITECTURE.md and
the issue, not from the project's macros.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

UTC = "UTC"
PLAN_COLUMNS = [
    "contract_type",
    "monthly_fee",
    "paperless_billing",
    "payment_method",
    "net_service",
    "plan_stream_tv",
    "plan_stream_movies",
    "add_on_security",
    "add_on_backup",
    "add_on_device_protection",
    "add_on_tech_support",
]
PROFILE_COLUMNS = ["signup_date", "gender", "senior_citizen", "partner", "dependents"]
FLOAT_COLUMNS = {"monthly_fee", "watch_hours_30d", "avg_session_mins_7d", "ticket_avg_resolution_hrs_90d"}
BOOLS = {
    "senior_citizen",
    "partner",
    "dependents",
    "paperless_billing",
    "plan_stream_tv",
    "plan_stream_movies",
    "add_on_security",
    "add_on_backup",
    "add_on_device_protection",
    "add_on_tech_support",
    "churn_label",
}


@dataclass
class Drops:
    months: list[date]
    tables: dict[str, pd.DataFrame]  # every file of every drop, with an `as_of` column (date)


def read_drops(drop_dirs: list[Path]) -> Drops:
    """All CSVs of the given drops, typed by hand (booleans, numbers, UTC timestamps)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    months = []
    for d in drop_dirs:
        manifest = json.loads((Path(d) / "manifest.json").read_text())
        as_of = date.fromisoformat(manifest["as_of"])
        months.append(as_of)
        for table, spec in manifest["files"].items():
            df = pd.read_csv(Path(d) / spec["path"], dtype=str, keep_default_na=False)
            df.insert(0, "as_of", as_of)
            frames.setdefault(table, []).append(df)
    tables = {}
    for table, parts in frames.items():
        df = pd.concat(parts, ignore_index=True)
        for col in df.columns:
            if col in BOOLS:
                df[col] = df[col].map({"true": True, "false": False})
            elif col in ("minutes", "amount"):
                df[col] = df[col].astype(float)
            elif col in ("skips", "rebuffer_events", "months_active"):
                df[col] = df[col].astype(int)
            elif col in ("started_at", "attempted_at", "opened_at", "resolved_at"):
                df[col] = pd.to_datetime(df[col].replace("", None), utc=True)
        tables[table] = df
    return Drops(sorted(months), tables)


def business_time(day: date) -> pd.Timestamp:
    """A drop date as the marts' as_of: that day at 00:00 UTC."""
    return pd.Timestamp(day).tz_localize(UTC)


def window(events: pd.DataFrame, column: str, day: date, days: int) -> pd.DataFrame:
    """Events known at `day` (their drop is not later) with `column` in [day + 1 - days, day + 1), UTC."""
    end = business_time(day) + pd.Timedelta(days=1)
    start = end - pd.Timedelta(days=days)
    known = events[events["as_of"] <= day]
    return known[(known[column] >= start) & (known[column] < end)]


def expected_marts(drops: Drops) -> dict[str, pd.DataFrame]:
    """Every mart, one row per active subscriber per as_of (labels: per user and period_start)."""
    t = drops.tables
    out: dict[str, list[pd.DataFrame]] = {
        m: [] for m in ("subscriptions_profile", "usage_agg_30d", "payments_agg_90d", "support_agg_90d")
    }
    for day in drops.months:
        subs = t["subscriptions"][t["subscriptions"]["as_of"] == day]
        users = t["users"][t["users"]["as_of"] == day]
        ids = subs["user_id"].tolist()
        stamp = business_time(day)

        profile = subs.drop(columns="as_of").merge(
            users.drop(columns=["as_of", "signup_date"]), on="user_id", how="left"
        )
        profile.insert(1, "as_of", stamp)
        out["subscriptions_profile"].append(profile)

        s30 = window(t["sessions"], "started_at", day, 30)
        s7 = window(t["sessions"], "started_at", day, 7)
        usage = pd.DataFrame({"user_id": ids, "as_of": stamp}).set_index("user_id")
        usage["watch_hours_30d"] = s30.groupby("user_id")["minutes"].sum() / 60
        usage["avg_session_mins_7d"] = s7.groupby("user_id")["minutes"].mean()
        usage["unique_devices_30d"] = s30.groupby("user_id")["device_id"].nunique()
        usage["skips_7d"] = s7.groupby("user_id")["skips"].sum()
        usage["rebuffer_events_7d"] = s7.groupby("user_id")["rebuffer_events"].sum()
        usage = usage.fillna(0).astype({c: int for c in ("unique_devices_30d", "skips_7d", "rebuffer_events_7d")})
        out["usage_agg_30d"].append(usage.reset_index())

        p90 = window(t["payments"], "attempted_at", day, 90)
        pay = pd.DataFrame({"user_id": ids, "as_of": stamp}).set_index("user_id")
        pay["failed_payments_90d"] = p90[p90["status"] == "failed"].groupby("user_id").size()
        out["payments_agg_90d"].append(pay.fillna(0).astype({"failed_payments_90d": int}).reset_index())

        k90 = window(t["tickets"], "opened_at", day, 90)
        end = stamp + pd.Timedelta(days=1)
        resolved = k90[k90["resolved_at"].notna() & (k90["resolved_at"] < end)]
        hours = (resolved["resolved_at"] - resolved["opened_at"]).dt.total_seconds() / 3600
        sup = pd.DataFrame({"user_id": ids, "as_of": stamp}).set_index("user_id")
        sup["support_tickets_90d"] = k90.groupby("user_id").size()
        sup["ticket_avg_resolution_hrs_90d"] = hours.groupby(resolved["user_id"]).mean()
        out["support_agg_90d"].append(sup.fillna(0).astype({"support_tickets_90d": int}).reset_index())

    marts = {name: pd.concat(parts, ignore_index=True) for name, parts in out.items()}
    labels = t["labels"][["user_id", "period_start", "churn_label"]].copy()
    labels["period_start"] = labels["period_start"].map(lambda d: business_time(date.fromisoformat(d)))
    marts["labels"] = labels
    return marts


def expected_snapshot(drops: Drops, table: str, columns: list[str]) -> pd.DataFrame:
    """SCD2 history of `columns` per user_id across the drops, validity in business time: a version
    opens at the first drop showing it and closes at the first drop where it changed or the user
    is absent (closed rows never reopen: a returning user gets a new version)."""
    df = drops.tables[table]
    open_versions: dict[str, tuple[tuple, date]] = {}
    rows = []
    for day in drops.months:
        month = df[df["as_of"] == day]
        state = {r[0]: tuple(r[1:]) for r in month[["user_id", *columns]].itertuples(index=False)}
        for user, (values, start) in list(open_versions.items()):
            if state.get(user) != values:
                rows.append((user, *values, business_time(start), business_time(day)))
                del open_versions[user]
        for user, values in state.items():
            if user not in open_versions:
                open_versions[user] = (values, day)
    for user, (values, start) in open_versions.items():
        rows.append((user, *values, business_time(start), pd.NaT))
    out = pd.DataFrame(rows, columns=["user_id", *columns, "dbt_valid_from", "dbt_valid_to"])
    return out.sort_values(["user_id", "dbt_valid_from"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# reading the warehouse
# ---------------------------------------------------------------------------------------
def read_table(conn, relation: str, order_by: str) -> pd.DataFrame:
    cur = conn.execute(f"select * from {relation} order by {order_by}")
    names = [d.name for d in cur.description]
    return pd.DataFrame(cur.fetchall(), columns=names)


def table_digests(conn, relations: list[str], where: str = "true") -> dict[str, str]:
    """md5 of each relation's rows (as text, in a fixed order): equal digests, equal content."""
    out = {}
    for rel in relations:
        cur = conn.execute(f"select t::text from {rel} as t where {where} order by 1")
        out[rel] = hashlib.md5("\n".join(r[0] for r in cur).encode()).hexdigest()
    return out


def assert_frames_equal(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    """Same rows and, column by column, the same values (floats to 1e-9 relative)."""
    assert list(actual.columns) == list(expected.columns)
    actual = actual.sort_values(keys).reset_index(drop=True)
    expected = expected.sort_values(keys).reset_index(drop=True)
    assert len(actual) == len(expected)
    assert actual[keys].astype(str).equals(expected[keys].astype(str))
    for col in actual.columns:
        if col in keys:
            continue
        a, e = actual[col], expected[col]
        if col in FLOAT_COLUMNS:
            bad = ~np.isclose(a.astype(float), e.astype(float), rtol=1e-9, atol=1e-9)
        else:
            bad = a.astype(str).to_numpy() != e.astype(str).to_numpy()
        sample = pd.concat([actual[keys], a, e], axis=1)[bad].head()
        assert not bad.any(), f"{col}: {int(bad.sum())} rows differ, e.g.\n{sample}"


SNAPSHOT_TABLES = ["snapshots.snap_users", "snapshots.snap_subscriptions"]
MART_TABLES = [
    "marts.subscriptions_profile",
    "marts.usage_agg_30d",
    "marts.payments_agg_90d",
    "marts.support_agg_90d",
    "marts.labels",
]


def warehouse_digests(conn) -> dict[str, str]:
    """md5 of every snapshot and mart."""
    return table_digests(conn, SNAPSHOT_TABLES + MART_TABLES)


def copy_drop(src: Path, dst: Path, edits: dict[str, callable]) -> Path:
    """A copy of drop `src` at `dst` with some files rewritten by `edits[table](frame) -> frame` (all
    values as text), and a manifest whose rows and sha256 match again, so ingestion accepts it."""
    import shutil

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for table, edit in edits.items():
        path = dst / manifest["files"][table]["path"]
        frame = edit(pd.read_csv(path, dtype=str, keep_default_na=False))
        frame.to_csv(path, index=False, lineterminator="\n")
    for spec in manifest["files"].values():
        data = (dst / spec["path"]).read_bytes()
        spec["rows"] = data.count(b"\n") - 1
        spec["sha256"] = hashlib.sha256(data).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dst
