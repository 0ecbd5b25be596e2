"""The feature store against plain SQL, in the same run and on the same server.

    .venv/bin/python bench/features.py [--users 7043] [--months 3] [--entity-rows 7043 100000] [--repeat 3]

Builds a warehouse first (generate -> ingest -> dbt build -> features apply) on a private embedded
PostgreSQL in a temporary directory, then measures:

(a) point-in-time retrieval of churn_model_v1 for N entity rows: Feast `get_historical_features`
    (entity rows given as SQL, result as a DataFrame, on-demand ratios included) against a
    hand-written as-of join (LATERAL latest row within the TTL per mart, ratios in SQL, fetched
    into a DataFrame). 7,043 rows are the labels of the first period (the real training case);
    larger sizes are random (user, time) pairs over the built months. Best of --repeat runs.
(b) materialization of the newest month: Feast (`materialize`, the four mart views) against a plain
    INSERT ... SELECT of the same rows into tables of the same shape as Feast's online tables (one
    row per user and feature, same columns and indexes). Rows = users x views written.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from _reference import insert_select

from streamflow.core.db import connect
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator.run import generate
from streamflow.drops.ingest import ingest
from streamflow.features import apply, materialize, offline, store
from streamflow.features import contract as fc
from streamflow.warehouse.build import build

RATIOS = {
    "fee_per_active_month": "sp.monthly_fee / greatest(sp.months_active, 1)",
    "watch_hours_per_device": "ua.watch_hours_30d / greatest(ua.unique_devices_30d, 1)",
    "tickets_per_active_month": "sa.support_tickets_90d::float8 / least(greatest(sp.months_active, 1), 3)",
}
ALIASES = {"subscriptions_profile": "sp", "usage_agg_30d": "ua", "payments_agg_90d": "pa", "support_agg_90d": "sa"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_of_join_sql(settings: Settings, entities_sql: str, names: list[str]) -> str:
    """The hand-written point-in-time join: per entity row and mart, the latest row at or before the
    row's time and at most the TTL (35 days) older."""
    manifest = fc.load_manifest(fc.ensure_manifest(settings))
    owner = {}
    joins = []
    for mart, alias in ALIASES.items():
        cols = [c for c, _t in fc.mart_contract(manifest, mart).features]
        owner.update({c: alias for c in cols})
        joins.append(
            f"left join lateral (select {', '.join(cols)} from marts.{mart} m where m.user_id = e.user_id "
            "and m.as_of <= e.event_timestamp and m.as_of >= e.event_timestamp - interval '35 days' "
            f"order by m.as_of desc limit 1) {alias} on true"
        )
    select = [f"{RATIOS[n]} as {n}" if n in RATIOS else f"{owner[n]}.{n}" for n in names]
    return f"select e.*, {', '.join(select)} from ({entities_sql}) e " + " ".join(joins)


def run_sql(settings: Settings, query: str) -> pd.DataFrame:
    with connect(settings) as conn:
        cur = conn.execute(query)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def entity_table(settings: Settings, rows: int, months: list[date]) -> str:
    """bench.entities_<rows>: the first period's labels (7,043 case) or random (user, time) pairs."""
    table = f"bench.entities_{rows}"
    with connect(settings) as conn:
        conn.execute("create schema if not exists bench")
        conn.execute(f"drop table if exists {table}")
        conn.execute(f"create table {table} (user_id text not null, event_timestamp timestamptz not null)")
        first = datetime(months[0].year, months[0].month, months[0].day, tzinfo=UTC)
        labelled = conn.execute("select count(*) from marts.labels where period_start = %s", (first,)).fetchone()[0]
        if rows == labelled:
            conn.execute(
                f"insert into {table} select user_id, period_start from marts.labels where period_start = %s", (first,)
            )
        else:
            users = [r[0] for r in conn.execute("select distinct user_id from marts.subscriptions_profile order by 1")]
            rng = np.random.default_rng(7)
            span = (months[-1] - months[0]).days + 5
            picks = rng.integers(0, len(users), rows)
            offsets = rng.integers(0, span * 86400, rows)
            with conn.cursor().copy(f"copy {table} (user_id, event_timestamp) from stdin") as copy:
                for i, off in zip(picks, offsets, strict=True):
                    copy.write_row((users[i], first + timedelta(seconds=int(off))))
        conn.execute(f"analyze {table}")
        conn.commit()
    return table


def bench_retrieval(settings: Settings, sizes: list[int], months: list[date], repeat: int) -> list[dict]:
    names = store.model_features(settings)
    out = []
    for rows in sizes:
        table = entity_table(settings, rows, months)
        entities = f"select user_id, event_timestamp from {table}"
        t_feast, frame = best(lambda e=entities: offline.historical_features(settings, e), repeat)
        t_sql, ref = best(lambda e=entities: run_sql(settings, as_of_join_sql(settings, e, names)), repeat)
        assert len(frame) == len(ref) == rows, (len(frame), len(ref), rows)
        # same content: compare one numeric column's sum and the null count of every feature
        assert np.isclose(frame["watch_hours_30d"].sum(), ref["watch_hours_30d"].astype(float).sum())
        assert frame[names].isna().sum().tolist() == ref[names].isna().sum().tolist()
        out.append({"rows": rows, "feast_s": t_feast, "sql_s": t_sql, "ratio": t_feast / t_sql})
    return out


def bench_materialize(settings: Settings, as_of: date) -> dict:
    feast_store = store.feature_store(settings)
    t0 = time.perf_counter()
    result = materialize.materialize(settings, as_of)
    total = time.perf_counter() - t0
    users_x_views = sum(result.written.values())
    n_features = sum(len(feast_store.get_feature_view(m).features) for m in FEATURE_MARTS)

    t_sql, _users, inserted = insert_select(settings, as_of)
    return {
        "as_of": as_of.isoformat(),
        "users_x_views": users_x_views,
        "feature_values": inserted,
        "feast_s": result.feast_seconds,
        "materialize_total_s": total,
        "feast_rows_s": users_x_views / result.feast_seconds,
        "sql_s": t_sql,
        "sql_rows_s": users_x_views / t_sql,
        "ratio": (users_x_views / t_sql) / (users_x_views / result.feast_seconds),
        "features": n_features,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=7043)
    ap.add_argument("--months", type=int, default=3)
    ap.add_argument("--entity-rows", type=int, nargs="+", default=[7043, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="streamflow-bench-") as tmp:
        tmp = Path(tmp)
        settings = Settings(
            _env_file=None,
            home=tmp / "home",
            pg_port=free_port(),
            database_url=None,
            dbt_target_path=tmp / "target",
            feast_project="bench",
        )
        server = EmbeddedPostgres(settings)
        server.up()
        try:
            t0 = time.perf_counter()
            drops = generate(tmp / "drops", months=args.months, users=args.users, seed=42)
            ingest(settings, sorted((tmp / "drops").glob("month_*")))
            build(settings)
            apply.apply(settings)
            months = [m.as_of for m in drops.months]
            print(
                f"warehouse: {args.users:,} users x {args.months} months built and applied in "
                f"{time.perf_counter() - t0:.0f} s"
            )

            print(
                "\n(a) point-in-time retrieval, churn_model_v1 "
                f"({len(store.model_features(settings))} features), best of {args.repeat}"
            )
            print(f"{'entity rows':>12} {'Feast s':>9} {'SQL s':>8} {'Feast/SQL':>10}")
            for r in bench_retrieval(settings, args.entity_rows, months, args.repeat):
                print(f"{r['rows']:>12,} {r['feast_s']:>9.2f} {r['sql_s']:>8.2f} {r['ratio']:>9.1f}x")

            print(f"\n(b) materialization of {months[-1]} (first run: window as_of - 35 days .. as_of)")
            m = bench_materialize(settings, months[-1])
            print(
                f"Feast materialize: {m['users_x_views']:,} user x view rows ({m['feature_values']:,} feature "
                f"values) in {m['feast_s']:.2f} s = {m['feast_rows_s']:,.0f} rows/s "
                f"(with the departed-user cleanup: {m['materialize_total_s']:.2f} s)"
            )
            print(
                f"INSERT ... SELECT: same rows into tables of the online tables' shape in {m['sql_s']:.2f} s = "
                f"{m['sql_rows_s']:,.0f} rows/s"
            )
            print(f"ratio: plain SQL is {m['ratio']:.1f}x faster")
        finally:
            server.down()


if __name__ == "__main__":
    main()
