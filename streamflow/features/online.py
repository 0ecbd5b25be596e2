"""The feature store: Feast on the dbt marts, in business time.

- :func:`feature_store` builds Feast's configuration from the platform's settings: SQL registry in
  PostgreSQL, PostgreSQL offline store (the marts), PostgreSQL online store by default or Redis.
- :func:`apply` registers ``feature_repo/`` (the same definitions the ``feast`` CLI reads).
- :func:`materialize` loads one month into the online store, incrementally, and then removes the
  users who are no longer active, so the online store holds exactly the users active at that month.
- :func:`training_frame` and :func:`feature_frame` join features point-in-time with Feast.
- :func:`online_read` is the low-latency read path (values and the as_of of every view).
- :func:`push_usage_event` updates real-time usage online at once and records it offline.

All time is business time: a mart row carries ``as_of`` = 00:00 UTC of its month-end date, and the
newest month materialized is the :func:`business_clock` staleness is measured against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streamflow.core.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore
from streamflow.features.store import ALL_SERVICE, ENTITY, REGISTRY_CACHE_SECONDS, _errors, _service, feature_store


# ---------------------------------------------------------------------------------------
# online: the low-latency read path
# ---------------------------------------------------------------------------------------
@dataclass
class OnlineFeatures:
    """One user's online features: values by feature name, and each view's event time (its as_of)."""

    user_id: str
    values: dict[str, Any]
    view_of: dict[str, str]  # feature -> view
    as_of: dict[str, datetime | None]  # view -> event time of its values (None: no value online)

    @property
    def found(self) -> bool:
        """True when any materialized or pushed view holds values for the user."""
        return any(ts is not None for ts in self.as_of.values())


@dataclass
class _Layout:
    """A service's (view, feature) pairs and which views are on-demand (computed, no own timestamp)."""

    pairs: list[tuple[str, str]]
    on_demand: set[str] = field(default_factory=set)


def _layout(store: FeatureStore, service: FeatureService) -> _Layout:
    pairs = [(p.name_to_use(), f.name) for p in service.feature_view_projections for f in p.features]
    odfvs = {v.name for v in store.list_on_demand_feature_views(allow_cache=True)}
    return _Layout(pairs=pairs, on_demand={v for v, _f in pairs if v in odfvs})


_layouts: dict[tuple[int, str], tuple[float, FeatureService, _Layout]] = {}


def _online_layout(store: FeatureStore, service: str) -> tuple[FeatureService, _Layout]:
    """The service and its layout, kept as long as the registry cache (the hot path reads no registry)."""
    key = (id(store), service)
    hit = _layouts.get(key)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1], hit[2]
    fs = _service(store, service, cached=True)
    layout = _layout(store, fs)
    _layouts[key] = (now + REGISTRY_CACHE_SECONDS, fs, layout)
    return fs, layout


def online_read(settings: Settings, user_ids: list[str], service: str = ALL_SERVICE) -> list[OnlineFeatures]:
    """Values and event times of a service's features for many users in one online read.

    Derived (on-demand) features have no event time of their own: they are as current as their sources.
    Feature names are unique across views, so the response uses plain names (with full names, Feast
    0.67 leaves python-mode on-demand features out of the online response).
    """
    from feast.online_response import TIMESTAMP_POSTFIX

    store = feature_store(settings)
    with _errors(settings, "reading online features"):
        fs, layout = _online_layout(store, service)
        response = store.get_online_features(features=fs, entity_rows=[{ENTITY: u} for u in user_ids])
        data = response.to_dict(include_event_timestamps=True)
    out = []
    for i, user in enumerate(user_ids):
        values: dict[str, Any] = {}
        view_of: dict[str, str] = {}
        as_of: dict[str, datetime | None] = {}
        for view, name in layout.pairs:
            values[name] = data[name][i]
            view_of[name] = view
            if view in layout.on_demand:
                continue
            seconds = data[name + TIMESTAMP_POSTFIX][i]
            if as_of.get(view) is None:
                as_of[view] = datetime.fromtimestamp(seconds, tz=UTC) if seconds else None
        out.append(OnlineFeatures(user_id=user, values=values, view_of=view_of, as_of=as_of))
    return out


def online_features(settings: Settings, user_id: str, service: str = ALL_SERVICE) -> OnlineFeatures:
    """One user's online features (see :func:`online_read`)."""
    return online_read(settings, [user_id], service)[0]
