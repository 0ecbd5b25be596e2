"""Materialization on Feast's Ray compute engine (``STREAMFLOW_FEAST_ENGINE=ray``).

Each view goes through Feast's own engine (``feast.infra.compute_engines.ray``): its read node runs Feast's
offline query (``pull_latest_from_table_or_query``: each user's latest row in the window) and hands the rows to
Ray; its write node converts them and calls the configured online store's ``online_write_batch`` in Ray tasks
(on PostgreSQL the bulk writer :class:`~streamflow.features.bulk_store.StreamflowPostgresOnlineStore`, on
Redis Feast's). Two things are held against Feast's engine here:

- Business time. Feast's Ray filter node measures a view's TTL from the wall clock when materializing (rows
  older than now - TTL are dropped), which would drop every month of business time older than the TTL. The
  window already bounds the rows (the caller starts it at most one TTL before the month end), so the engine is
  handed the view without a TTL; the registry keeps the real one.
- Silent failures. Feast's Ray writer logs a failed write and carries on. After the engine reports success,
  the online store must hold every user of the window with a value at least as new as the window's start;
  otherwise materialization stops with an error and the run log does not move.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import TYPE_CHECKING

from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.online_stores.helpers import _to_naive_utc
from feast.infra.utils.postgres.connection_utils import _get_conn

from streamflow.features import bulk_store
from streamflow.features.online_store import _pg_table, _redis, _redis_rows
from streamflow.features.store import FeaturesError

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView


CONNECT_SECONDS = 5


class RayEngineError(FeaturesError):
    """Feast's Ray engine did not write a view completely."""

    hint = "check the Ray cluster (`ray status --address ...`) and STREAMFLOW_RAY_ADDRESS, then rerun materialize"


def _reachable(address: str) -> None:
    """Fail fast on a head node that does not answer (Ray itself retries for minutes, then exits)."""
    if address.startswith("ray://") or address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RayEngineError(
            f"the Ray cluster at {address} (STREAMFLOW_RAY_ADDRESS) does not answer: {exc.strerror or exc}"
        ) from None


def _engine(store: FeatureStore):
    """Feast's Ray engine of the store: connects to the cluster (or starts a local one) the first time."""
    # Ray reports usage statistics unless told not to; a default only: an operator's own choice stands
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = getattr(store.config.batch_engine, "ray_address", None)
    if address:
        _reachable(address)
    try:
        return store._get_provider().batch_engine
    except (ConnectionError, TimeoutError, RuntimeError, ValueError, SystemExit) as exc:  # SystemExit: ray.init
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RayEngineError(f"cannot start Feast's Ray engine on {address or 'a local cluster'}: {first}") from None


def _business_time_view(view: FeatureView) -> FeatureView:
    """The view as the engine is handed it: the same features, source and entities, no wall-clock TTL."""
    copy = view.__copy__()
    copy.ttl = None
    return copy


def _window_users(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> int:
    """How many users Feast's offline query of ``view`` returns for [start, end]."""
    query = bulk_store._window_query(store, view, start, end)
    with _get_conn(store.config.offline_store) as conn:
        return conn.execute(f"select count(*) from ({query}) as w").fetchone()[0]  # noqa: S608 - Feast's SQL


def _online_users(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> int:
    """How many users the online store holds values of ``view`` for with an event time in [start, end]."""
    if bulk_store._is_postgres(store.config):
        with _get_conn(store.config.online_store) as conn:  # Feast's session: its naive UTC timestamps
            row = conn.execute(
                f"select count(distinct entity_key) from {_pg_table(store, view)} "  # noqa: S608 - Feast's table
                "where event_ts between %s and %s",
                (_to_naive_utc(start), _to_naive_utc(end)),
            ).fetchone()
        return row[0]
    return sum(1 for _key, _user, ts in _redis_rows(store, _redis(store), view) if start <= ts <= end)


def materialize_view(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> int:
    """Materialize ``view`` over [start, end] with Feast's Ray engine, check that every user of the window
    reached the online store, then record the interval in the registry as Feast does; returns the users
    written."""
    engine = _engine(store)
    task = MaterializationTask(
        project=store.project, feature_view=_business_time_view(view), start_time=start, end_time=end
    )
    (job,) = engine.materialize(store.registry, task)
    if job.status() != MaterializationJobStatus.SUCCEEDED:
        error = job.error()
        first = (str(error).strip().splitlines() or [type(error).__name__])[0] if error else str(job.status())
        raise RayEngineError(f"Feast's Ray engine failed on view {view.name}: {first}")
    expected = _window_users(store, view, start, end)
    online = _online_users(store, view, start, end)
    if online < expected:
        raise RayEngineError(
            f"Feast's Ray engine wrote {online:,} of the {expected:,} users of view {view.name}; it reports "
            "success even when its writes fail (see the Ray workers' logs)"
        )
    store.registry.apply_materialization(view, store.project, start, end)
    return expected
