"""Materialization: one month of the marts into the online store, then the users who left removed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from streamflow.core import faults, months, runlog
from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import ENTITY, FEATURE_MARTS, PUSH_VIEW
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.features import bulk_store, ray_engine
from streamflow.features import contract as fc
from streamflow.features.apply import _missing_relations, _relation
from streamflow.features.online_store import (
    _pg_table,
    _redis,
    _redis_fields,
    _redis_rows,
    entity_key_bytes,
    online_count,
)
from streamflow.features.store import (
    FeaturesError,
    _errors,
    _require_applied,
    _silenced,
    business_clock,
    business_timestamp,
    feast_clock,
    feature_store,
)

if TYPE_CHECKING:
    from feast import FeatureStore


# ---------------------------------------------------------------------------------------
# materialization
# ---------------------------------------------------------------------------------------
@dataclass
class MaterializeResult:
    as_of: date
    written: dict[str, int]  # view -> users written to the online store (0: already materialized)
    skipped: list[str]  # views already materialized through as_of
    removed: dict[str, int]  # view -> users removed (not active at as_of)
    online_users: dict[str, int]  # view -> users the online store holds afterwards
    seconds: float
    feast_seconds: float
    business_clock: datetime | None = None
    engine: str = "local"  # the engine that wrote the views (STREAMFLOW_FEAST_ENGINE)

    @property
    def rows_per_second(self) -> float:
        rows = sum(self.written.values())
        return rows / self.feast_seconds if self.feast_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "engine": self.engine,
            "written": self.written,
            "skipped": self.skipped,
            "removed": self.removed,
            "online_users": self.online_users,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "business_clock": self.business_clock.isoformat() if self.business_clock else None,
        }


def active_users(settings: Settings, as_of: date) -> list[str]:
    """Every user with a mart row at as_of: the subscribers active at that month end."""
    relation = _relation(settings, "subscriptions_profile")
    with _errors(settings, "reading the marts"), connect(settings) as conn:
        rows = conn.execute(
            f"select {ENTITY} from {relation} where {fc.TIMESTAMP_COLUMN} = %s order by 1", (business_timestamp(as_of),)
        ).fetchall()
    return [r[0] for r in rows]


def built_months(settings: Settings) -> list[date]:
    """Months whose snapshots and marts are completely built, oldest first (from the build log, so a
    month whose dbt build is running or failed halfway is never picked up)."""
    with _errors(settings, "reading the build log"), connect(settings) as conn:
        return months.built_months(conn, settings)


def newest_built(settings: Settings) -> date:
    """The newest completely built month; FeaturesError when none is."""
    built = built_months(settings)
    if not built:
        raise FeaturesError("no month is built: run `streamflow ingest` and `streamflow build` first")
    return built[-1]


def materialize(
    settings: Settings,
    as_of: date | None,
    *,
    force: bool = False,
    progress: Progress = SILENT,
) -> MaterializeResult:
    """Load month ``as_of`` into the online store; afterwards it holds exactly the users active then.

    Incremental: each mart view is materialized from where its last run ended up to as_of 00:00 UTC
    (the mart rows' timestamp; Feast's window includes its end). A view never materialized starts at
    as_of minus its TTL (business time, never the wall clock). A view already materialized through
    as_of is skipped, so a rerun changes nothing; ``force`` rewrites the month (after it was rebuilt).
    Then every user not active at as_of is removed from the online store (Feast has no delete).
    The pushed real-time view is never materialized here: pushes are newer than any month end.
    ``as_of`` None: the newest completely built month, chosen once the lock is held (a month chosen
    before a waited-for build or monthly run ends would be stale by then).
    """
    started = time.perf_counter()
    store = feature_store(settings)
    with pipeline_lock(settings, "materialize", as_of), _errors(settings, "materializing"):
        as_of = as_of or newest_built(settings)
        _require_applied(store)
        end = business_timestamp(as_of)
        users = _month_to_serve(settings, as_of)
        clock = business_clock(settings, refresh=True)  # the month served, from the run log
        force = force or _rewrite_needed(settings, as_of, clock)
        views = {v.name: v for v in store.list_feature_views(allow_cache=False)}
        progress.start("materializing", total=len(FEATURE_MARTS) + 1)
        written: dict[str, int] = {}
        skipped: list[str] = []
        feast_seconds = 0.0
        for i, name in enumerate(FEATURE_MARTS):
            progress.advance(0 if i == 0 else 1, name)
            seconds = _materialize_view(settings, store, views[name], end, force, written, skipped)
            feast_seconds += seconds
            if i == 0:
                faults.pause("materialize.view")
        progress.advance(1, "removing users who left")
        faults.pause("materialize.departed")
        removed = remove_departed(settings, as_of, users)
        recorded = feast_clock(settings, refresh=True)
        if recorded is not None and recorded > end:
            _rewind_clock(settings, store, end)
        progress.advance(1, "done")
        online = {name: online_count(settings, name) for name in (*FEATURE_MARTS, PUSH_VIEW)}
        with connect(settings) as conn:
            runlog.record_month(conn, as_of, "materialized", {"written": written, "removed": removed})
            runlog.record_served(conn, as_of, settings.feast_project)  # the API's clock moves only now
        clock = business_timestamp(as_of)
    return MaterializeResult(
        as_of=as_of,
        written=written,
        skipped=skipped,
        removed=removed,
        online_users=online,
        seconds=time.perf_counter() - started,
        feast_seconds=feast_seconds,
        business_clock=clock,
        engine=settings.feast_engine,
    )


def _month_to_serve(settings: Settings, as_of: date) -> list[str]:
    """The users active at ``as_of``, once the run log says the month is completely built."""
    built = built_months(settings)
    if as_of not in built:
        months_built = ", ".join(d.isoformat() for d in built) or "none"
        raise FeaturesError(
            f"month {as_of} is not built (built months: {months_built}): ingest and `streamflow build` it first"
        )
    return active_users(settings, as_of)


def _rewrite_needed(settings: Settings, as_of: date, clock: datetime | None) -> bool:
    """Whether the online store's values must be rewritten rather than extended.

    The store serving ``as_of`` or later, while the run log does not count ``as_of`` as materialized, means
    the month was reloaded or the history rebuilt since: rewrite it. A store serving a later month that is
    still built is refused: that would serve stale features as current; so is one serving a later month
    that is still loaded but not built again yet (a rebuild under way or interrupted): only a month the
    history no longer has is wound back."""
    if clock is None or clock < business_timestamp(as_of):
        return False
    served = clock.date()
    with connect(settings) as conn:
        built = months.built_months(conn, settings)
        loaded = months.loaded_months(conn)
        materialized = months.months_in(conn, settings, "materialized")
    if served > as_of and served in built:
        raise FeaturesError(
            f"the online store already serves {served}; materializing the older month "
            f"{as_of} would serve stale features as current"
        )
    if served > as_of and served in loaded:
        raise FeaturesError(
            f"the online store serves {served}, which is loaded but not built again yet: "
            f"run `streamflow build` to finish the rebuild, then materialize"
        )
    return as_of not in materialized


def _rewind_clock(settings: Settings, store: FeatureStore, end: datetime) -> None:
    """After a shorter, rebuilt history is materialized: the mart views' materialization intervals end at
    ``end`` again (Feast only ever extends them), so the business clock says which month is served."""
    for name in FEATURE_MARTS:
        view = store.registry.get_feature_view(name, settings.feast_project, allow_cache=False)
        view.materialization_intervals = [(end - view.ttl, end)]
        store.registry.apply_feature_view(view, settings.feast_project, commit=True)
    store.refresh_registry()


def _materialize_view(
    settings: Settings, store: FeatureStore, view, end: datetime, force: bool, written: dict, skipped: list
) -> float:
    """One view up to ``end``: incrementally, skipped when already there, or rewritten over its whole TTL
    window when ``force``. A rewrite writes the month's values over the old ones (on Redis, whose writer keeps a
    value only when it is newer, with Feast's ``skip_dedup`` for this write), so active users never go missing;
    leavers are removed afterwards. The rows are Feast's, read and written in chunks of
    ``materialize_chunk_rows`` users (:mod:`streamflow.features.bulk_store`), or, with ``feast_engine=ray``,
    by Feast's Ray engine (:mod:`streamflow.features.ray_engine`; its writes are not one transaction per view).
    Returns the seconds it took."""
    last = view.most_recent_end_time
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    if force:
        last = None
    elif last is not None and last >= end:
        skipped.append(view.name)
        written[view.name] = 0
        return 0.0
    start = last if last is not None else end - view.ttl  # Feast's incremental window
    t0 = time.perf_counter()
    if settings.feast_engine == "ray":
        engine_store = feature_store(settings, materializing=True)
        with _silenced(), _overwriting(engine_store, force):
            written[view.name] = ray_engine.materialize_view(engine_store, view, start, end)
        return time.perf_counter() - t0
    with _silenced(), _overwriting(store, force):
        written[view.name] = bulk_store.materialize_view(store, view, start, end, settings.materialize_chunk_rows)
    return time.perf_counter() - t0


@contextlib.contextmanager
def _overwriting(store: FeatureStore, force: bool) -> Iterator[None]:
    """While a rewrite writes: Feast's Redis writer replaces values without comparing event times (it would
    keep the newer values of a month the history no longer has). The PostgreSQL writer always upserts."""
    online = store.config.online_store
    if not force or not hasattr(online, "skip_dedup"):
        yield
        return
    before = online.skip_dedup
    online.skip_dedup = True
    try:
        yield
    finally:
        online.skip_dedup = before


def remove_departed(settings: Settings, as_of: date, active: list[str] | None = None) -> dict[str, int]:
    """Remove from the online store every user not active at ``as_of``; returns users removed per view.

    Mart views: all their values. The pushed view: values pushed before the end of as_of (a push after
    it is newer than the month's data and stays). Works for the PostgreSQL and the Redis online store.
    """
    store = feature_store(settings)
    keep = set(active if active is not None else active_users(settings, as_of))
    cutoff = business_timestamp(as_of) + timedelta(days=1)
    removed: dict[str, int] = {}
    with _errors(settings, "removing departed users from the online store"):
        for name in (*FEATURE_MARTS, PUSH_VIEW):
            view = store.get_feature_view(name)
            before = cutoff if name == PUSH_VIEW else None
            removed[name] = _delete_online(settings, store, view, keep, before)
    return removed


def _delete_online(settings: Settings, store: FeatureStore, view, keep: set[str], before: datetime | None) -> int:
    """Delete the values of ``view`` of every user not in ``keep`` (only those older than ``before``
    when given); returns how many users lost values."""
    if settings.online_store == "redis":
        client = _redis(store)
        doomed = [
            key
            for key, user, ts in _redis_rows(store, client, view)
            if user not in keep and (before is None or ts < before)
        ]
        fields = _redis_fields(view)
        with client.pipeline(transaction=False) as pipe:
            for key in doomed:
                pipe.hdel(key, *fields)  # Redis drops a hash left empty
            pipe.execute()
        return len(doomed)
    table = _pg_table(store, view)
    with connect(settings) as conn:
        if _missing_relations(conn, [table]):
            return 0
        conn.execute("create temporary table _streamflow_keep (entity_key bytea primary key) on commit drop")
        with conn.cursor().copy("copy _streamflow_keep (entity_key) from stdin") as copy:
            for user in keep:
                copy.write_row((entity_key_bytes(user),))
        age = " and o.event_ts < %s" if before is not None else ""
        n = conn.execute(
            f"with gone as (delete from {table} o where not exists (select 1 from _streamflow_keep k "
            f"where k.entity_key = o.entity_key){age} returning o.entity_key) "
            "select count(distinct entity_key) from gone",
            (before,) if before is not None else None,
        ).fetchone()[0]
        conn.commit()
    return n
