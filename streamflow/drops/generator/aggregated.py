"""Writing months in the aggregated layout from event drops (the generator's, from the real Telco customers).

Month k of the aggregated layout is event drop k summed over the marts' windows (30 days for usage, 7 days
for the per-session values, 90 days for payments and tickets, each ending at the month's end), with the
earlier stack's column names, booleans written ``True``/``False`` and decimals at full float precision; its
labels are the outcomes of the users active at its month end, which the event history only delivers with
drop k+1. So writing ``months`` aggregated months reads ``months + 1`` event drops.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from streamflow.drops import contract
from streamflow.drops.aggregated import FILES

OPTIONAL = ("add_on_security", "add_on_backup", "add_on_device_protect", "add_on_support", "payment_method")
_RENAME = {
    table: {c.target: c.name for c in spec.columns if c.target and c.target != c.name} for table, spec in FILES.items()
}


def _read(drop: Path, table: str) -> pd.DataFrame:
    manifest = json.loads((drop / contract.MANIFEST).read_text())
    spec = contract.FILES[table]
    types = {c.name: str for c in spec.columns if c.type in ("id", "text")}
    frame = pd.read_csv(drop / manifest["files"][table]["path"], dtype=types, keep_default_na=False, na_values=[""])
    for c in spec.columns:
        if c.type == "timestamp":
            frame[c.name] = pd.to_datetime(frame[c.name], utc=True)
        elif c.type == "bool":
            frame[c.name] = frame[c.name].map({"true": True, "false": False, True: True, False: False})
    return frame


def _window(frame: pd.DataFrame, column: str, as_of: date, days: int) -> pd.DataFrame:
    end = pd.Timestamp(as_of + timedelta(days=1), tz="UTC")
    return frame[(frame[column] >= end - pd.Timedelta(days=days)) & (frame[column] < end)]


def _bools(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == bool:
            out[col] = out[col].map({True: "True", False: "False"})
    return out


def _write(frame: pd.DataFrame, table: str, folder: Path) -> None:
    spec = FILES[table]
    frame = _bools(frame.rename(columns=_RENAME[table]))
    columns = [c.name for c in spec.columns if c.name in frame.columns]
    frame[columns].to_csv(folder / spec.filename, index=False, lineterminator="\n", float_format="%.15g")


def write_month(drops: list[Path], k: int, out: Path, optional_columns: bool = False) -> Path:
    """Aggregated month ``k`` from event drops ``drops`` (month_000 ...; needs drops[k + 1] for the labels)
    into ``out/month_{k:03d}``; ``optional_columns``: keep add_on_* and payment_method (absent by default, as
    in many of the earlier stack's exports)."""
    as_of = date.fromisoformat(json.loads((drops[k] / contract.MANIFEST).read_text())["as_of"])
    folder = out / f"month_{k:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    users = _read(drops[k], "users")
    _write(users, "users", folder)
    subs = _read(drops[k], "subscriptions")
    subs["total_paid"] = (subs["months_active"].clip(lower=1) * subs["monthly_fee"]).round(2)
    if not optional_columns:
        subs = subs.drop(columns=[c for c in subs.columns if _RENAME["subscriptions"].get(c, c) in OPTIONAL])
    _write(subs, "subscriptions", folder)
    active = subs[["user_id"]]
    history = drops[: k + 1]
    _write(_usage(active, history, as_of), "usage_agg_30d", folder)
    _write(_payments(active, history, as_of), "payments_agg_90d", folder)
    _write(_support(active, history, as_of), "support_agg_90d", folder)
    labels = _read(drops[k + 1], "labels")
    labels = labels[labels["period_start"] == as_of.isoformat()][["user_id", "churn_label"]]
    _write(labels, "labels_at_month_end", folder)
    return folder


def _usage(active: pd.DataFrame, history: list[Path], as_of: date) -> pd.DataFrame:
    sessions = _window(pd.concat([_read(d, "sessions") for d in history]), "started_at", as_of, 30)
    last7 = _window(sessions, "started_at", as_of, 7)
    g30, g7 = sessions.groupby("user_id"), last7.groupby("user_id")
    agg = pd.DataFrame(
        {
            "watch_hours_30d": g30["minutes"].sum() / 60,
            "unique_devices_30d": g30["device_id"].nunique(),
            "avg_session_mins_7d": g7["minutes"].mean(),
            "skips_7d": g7["skips"].sum(),
            "rebuffer_events_7d": g7["rebuffer_events"].sum(),
        }
    )
    out = active.merge(agg, left_on="user_id", right_index=True, how="left").fillna(0)
    for col in ("unique_devices_30d", "skips_7d", "rebuffer_events_7d"):
        out[col] = out[col].astype("int64")
    return out


def _payments(active: pd.DataFrame, history: list[Path], as_of: date) -> pd.DataFrame:
    payments = _window(pd.concat([_read(d, "payments") for d in history]), "attempted_at", as_of, 90)
    failed = payments[payments["status"] == "failed"].groupby("user_id").size().rename("failed_payments_90d")
    out = active.merge(failed, left_on="user_id", right_index=True, how="left").fillna(0)
    out["failed_payments_90d"] = out["failed_payments_90d"].astype("int64")
    return out


def _support(active: pd.DataFrame, history: list[Path], as_of: date) -> pd.DataFrame:
    tickets = _window(pd.concat([_read(d, "tickets") for d in history]), "opened_at", as_of, 90)
    end = pd.Timestamp(as_of + timedelta(days=1), tz="UTC")
    resolved = tickets["resolved_at"].notna() & (tickets["resolved_at"] < end)
    hours = ((tickets["resolved_at"] - tickets["opened_at"]).dt.total_seconds() / 3600).where(resolved)
    g = tickets.assign(hours=hours).groupby("user_id")
    agg = pd.DataFrame({"support_tickets_90d": g.size(), "ticket_avg_resolution_hrs_90d": g["hours"].mean()})
    out = active.merge(agg, left_on="user_id", right_index=True, how="left").fillna(0)
    out["support_tickets_90d"] = out["support_tickets_90d"].astype("int64")
    return out


def write_history(drops: list[Path], months: int, out: Path, optional_columns: bool = False) -> list[Path]:
    """Aggregated months 0 .. months-1 from event drops (at least months + 1 of them)."""
    if len(drops) < months + 1:
        raise ValueError(f"{months} aggregated months need {months + 1} event drops, got {len(drops)}")
    return [write_month(drops, k, out, optional_columns) for k in range(months)]
