"""What the Feast registry says about online reads, and one user's values judged against it.

- :class:`Catalog` is one consistent snapshot of the registry: the layout of each feature service, every
  view's TTL, the pushed views and the business clock (:func:`read_catalog`).
- :class:`UserRow` is one user's values of a service with the as_of of each view and the verdict of
  :func:`streamflow.features.freshness.judge` (:func:`rows_from_response`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from feast import FeatureStore
from feast.data_source import PushSource
from feast.online_response import TIMESTAMP_POSTFIX

from streamflow.core.names import FEATURE_MARTS
from streamflow.features.freshness import Verdict, judge


@dataclass(frozen=True)
class ServiceLayout:
    """A feature service as the reader reads it: (view, feature) pairs in order, the stored views (with their own
    event time) and the derived (on-demand) views with the stored views they are computed from."""

    name: str
    service: Any  # feast.FeatureService
    pairs: tuple[tuple[str, str], ...]
    stored: tuple[str, ...]
    derived: Mapping[str, tuple[str, ...]]
    timestamp_key: Mapping[str, str]  # stored view -> the response column holding its event time
    features_of: Mapping[str, tuple[str, ...]]
    stored_refs: tuple[str, ...] = ()  # "view:feature" of the stored features only
    transforms: tuple[tuple[Any, tuple[str, ...]], ...] | None = None  # (on-demand view, its outputs) to apply

    @property
    def features(self) -> list[str]:
        return [f for _v, f in self.pairs]


@dataclass(frozen=True)
class Catalog:
    """One consistent snapshot of the registry, replaced as a whole when it is re-read."""

    services: Mapping[str, ServiceLayout]
    ttls: Mapping[str, timedelta | None]
    pushed: frozenset[str]
    clock: datetime | None
    read_at: float


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _transforms(pairs, derived, odfvs) -> tuple[tuple[Any, tuple[str, ...]], ...] | None:
    """The on-demand views to apply in the reader, or None when one of them cannot be applied in-request."""
    out = []
    for view in derived:
        odfv = odfvs[view]
        if odfv.mode != "python" or getattr(odfv, "singleton", False) or getattr(odfv, "write_to_online_store", False):
            return None  # only in-request python transformations are applied here
        out.append((odfv, tuple(f for v, f in pairs if v == view)))
    return tuple(out)


def service_layout(fs, views: Mapping[str, Any], odfvs: Mapping[str, Any]) -> ServiceLayout:
    """The layout of feature service ``fs`` given the registry's feature views and on-demand views by name."""
    pairs = tuple((p.name_to_use(), f.name) for p in fs.feature_view_projections for f in p.features)
    stored = tuple(dict.fromkeys(v for v, _f in pairs if v not in odfvs))
    derived = {
        v: tuple(s for s in odfvs[v].source_feature_view_projections if s in views)
        for v in dict.fromkeys(v for v, _f in pairs if v in odfvs)
    }
    features_of: dict[str, list[str]] = {}
    for view, feature in pairs:
        features_of.setdefault(view, []).append(feature)
    for view, sources in derived.items():  # a derived feature is missing when a source view is
        for source in sources:
            features_of.setdefault(source, []).extend(features_of[view])
    return ServiceLayout(
        name=fs.name,
        service=fs,
        pairs=pairs,
        stored=stored,
        derived=derived,
        timestamp_key={v: next(f for w, f in pairs if w == v) + TIMESTAMP_POSTFIX for v in stored},
        features_of={v: tuple(dict.fromkeys(fs_)) for v, fs_ in features_of.items()},
        stored_refs=tuple(f"{v}:{f}" for v, f in pairs if v in stored),
        transforms=_transforms(pairs, derived, odfvs),
    )


def clock_of(views: Mapping[str, Any]) -> datetime | None:
    """The business clock: the oldest end of the mart views' materialization, None while one is not materialized."""
    ends = []
    for name in FEATURE_MARTS:
        view = views.get(name)
        end = view.most_recent_end_time if view is not None else None
        if end is None:
            return None
        ends.append(_utc(end))
    return min(ends)


def clock_from(served: date | None | bool, views: Mapping[str, Any]) -> datetime | None:
    """The business clock: the end of the month the run log says the online store serves (``served``, see
    :func:`streamflow.core.runlog.served_month`). Only for a warehouse materialized before the run log kept
    that record (``served`` False) is it read from Feast's materialization record of ``views``."""
    if served is False:
        return clock_of(views)
    if served is None or served is True:
        return None
    return datetime(served.year, served.month, served.day, tzinfo=UTC)


def read_catalog(store: FeatureStore, services: Iterable[str], served: date | None | bool = False) -> Catalog:
    """The layouts of ``services``, every view's TTL, the pushed views and the business clock (``served``: what
    the run log says the online store serves), from the store's registry cache."""
    views = {v.name: v for v in store.list_feature_views(allow_cache=True)}
    odfvs = {v.name: v for v in store.list_on_demand_feature_views(allow_cache=True)}
    layouts = {
        name: service_layout(store.get_feature_service(name, allow_cache=True), views, odfvs) for name in services
    }
    return Catalog(
        services=layouts,
        ttls={n: v.ttl for n, v in views.items()},
        pushed=frozenset(n for n, v in views.items() if isinstance(v.stream_source, PushSource)),
        clock=clock_from(served, views),
        read_at=time.monotonic(),
    )


@dataclass
class UserRow:
    """A user's values of one service, the as_of of each view (a derived view: its oldest source), the verdict
    and the business clock it was judged at."""

    user_id: str
    values: dict[str, Any]  # feature -> value
    view_of: dict[str, str]  # feature -> view
    as_of: dict[str, datetime | None]  # view -> event time of its values (None: no value online)
    verdict: Verdict
    clock: datetime

    @property
    def found(self) -> bool:
        """True when no feature is missing (a pushed view without values is not missing)."""
        return not self.verdict.missing

    @property
    def oldest(self) -> datetime | None:
        stamps = [ts for ts in self.as_of.values() if ts is not None]
        return min(stamps) if stamps else None


def rows_from_response(
    data: Mapping[str, list], user_ids: list[str], layout: ServiceLayout, catalog: Catalog
) -> list[UserRow]:
    """Feast's response columns (to_dict with event timestamps) as one judged row per user."""
    clock = catalog.clock
    assert clock is not None
    columns = [(feature, view, data[feature]) for view, feature in layout.pairs]
    stamps = [(view, data[key]) for view, key in layout.timestamp_key.items()]
    out = []
    for i, user in enumerate(user_ids):
        as_of: dict[str, datetime | None] = {}
        for view, column in stamps:
            seconds = column[i]
            as_of[view] = datetime.fromtimestamp(seconds, tz=UTC) if seconds else None
        verdict = judge(as_of, layout.features_of, clock, catalog.ttls, catalog.pushed)
        for view, sources in layout.derived.items():
            known = [as_of[s] for s in sources if as_of.get(s) is not None]
            as_of[view] = min(known) if len(known) == len(sources) and known else None
        values = {feature: column[i] for feature, _view, column in columns}
        out.append(UserRow(user, values, {f: v for f, v, _c in columns}, as_of, verdict, clock))
    return out
