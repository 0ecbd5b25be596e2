"""The reference write for materialization benchmarks: the same rows Feast writes (each user's latest mart row in
the TTL window, one row per feature), by a plain INSERT ... SELECT into empty tables shaped like the online
tables. Shared by bench/features.py and bench/materialize.py."""

from __future__ import annotations

import time
from datetime import date, timedelta

from streamflow.core.db import connect
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.settings import Settings
from streamflow.features import contract as fc
from streamflow.features import online_store, store


def insert_select(settings: Settings, as_of: date) -> tuple[float, int, int]:
    """The same rows by a plain INSERT ... SELECT into empty tables shaped like the online tables; returns
    (seconds, users x views, feature values)."""
    end = store.business_timestamp(as_of)
    manifest = fc.load_manifest(fc.ensure_manifest(settings))
    with connect(settings) as conn:
        conn.execute("drop schema if exists bench_online cascade")
        conn.execute("create schema bench_online")
        statements = []
        for mart in FEATURE_MARTS:
            source = online_store.online_table(settings, mart)
            target = f"bench_online.{mart}"
            conn.execute(f"create table {target} (like {source} including all)")
            cols = [c for c, _t in fc.mart_contract(manifest, mart).features]
            unpivot = ", ".join(f"('{c}', m.{c}::text)" for c in cols)
            statements.append(
                f"insert into {target} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                f"select convert_to(m.user_id, 'UTF8'), f.name, convert_to(f.value, 'UTF8'), f.value, m.as_of, null "
                f"from (select distinct on (user_id) * from {fc.mart_table(mart)} "
                f"where as_of between %(start)s and %(end)s order by user_id, as_of desc) m "
                f"cross join lateral (values {unpivot}) as f(name, value)"
            )
        conn.commit()
        t0 = time.perf_counter()
        values = 0
        for statement in statements:
            values += conn.execute(statement, {"start": end - timedelta(days=35), "end": end}).rowcount
        conn.commit()
        seconds = time.perf_counter() - t0
        users = sum(
            conn.execute(f"select count(distinct entity_key) from bench_online.{m}").fetchone()[0]
            for m in FEATURE_MARTS
        )
        conn.execute("drop schema bench_online cascade")
        conn.commit()
    return seconds, users, values
