"""The ways the reader reads a feature service, and the checks that each answers what Feast's own read answers.

- :func:`read_whole`: Feast's ``get_online_features`` for the whole service, on-demand features included;
- :func:`read_split`: the stored features from Feast, then each on-demand view's registered function applied to
  them (used when :func:`agrees` found it equal to the whole read for the snapshot's first read);
- the columnar read of :mod:`streamflow.features.columnar_read` (used when :func:`columnar_plan` found it equal to
  Feast's read of the stored features).
"""

from __future__ import annotations

import logging

from feast import FeatureStore
from feast.online_response import TIMESTAMP_POSTFIX

from streamflow.core.names import ENTITY
from streamflow.features import online_store as ostore
from streamflow.features.catalog import ServiceLayout
from streamflow.features.columnar_read import ColumnarRead, StreamflowColumnarOnlineStore

log = logging.getLogger("streamflow.features.online")


def read_whole(store: FeatureStore, layout: ServiceLayout, user_ids: list[str]) -> dict[str, list]:
    """The feature service as Feast serves it, on-demand features included. Feature names are unique across
    views, so the response uses plain names (with full names, Feast leaves python-mode on-demand features out)."""
    response = store.get_online_features(features=layout.service, entity_rows=[{ENTITY: u} for u in user_ids])
    return response.to_dict(include_event_timestamps=True)


def read_split(store: FeatureStore, layout: ServiceLayout, user_ids: list[str]) -> dict[str, list]:
    """The stored features from Feast, then each on-demand view's own transformation applied to them: the same
    values with less work per request (checked equal to :func:`read_whole` for every registry snapshot)."""
    return derive(layout, read_stored(store, layout, user_ids))


def read_stored(store: FeatureStore, layout: ServiceLayout, user_ids: list[str]) -> dict[str, list]:
    """The service's stored features (no on-demand ones) as Feast reads them."""
    response = store.get_online_features(features=list(layout.stored_refs), entity_rows=[{ENTITY: u} for u in user_ids])
    return response.to_dict(include_event_timestamps=True)


def derive(layout: ServiceLayout, data: dict[str, list]) -> dict[str, list]:
    """The stored features plus each on-demand view's outputs, computed by the view's registered function."""
    n = len(data[ENTITY])
    inputs = {k: v for k, v in data.items() if not k.endswith(TIMESTAMP_POSTFIX)}
    for odfv, outputs in layout.transforms or ():
        result = odfv.feature_transformation.transform(inputs)  # the view's registered python function
        for name in outputs:
            data[name] = list(result[name])
            data[name + TIMESTAMP_POSTFIX] = [0] * n  # as Feast: derived values have no event time
    return data


def columnar_plan(store: FeatureStore, layout: ServiceLayout, user_ids: list[str]) -> ColumnarRead | None:
    """The columnar read of ``layout``'s stored features when the store offers it and, for ``user_ids``, it
    answers exactly what Feast's own read answers (else None: reads keep going through Feast)."""
    online = store._get_provider().online_store
    if not isinstance(online, StreamflowColumnarOnlineStore) or not layout.stored_refs:
        return None
    try:
        plan = ColumnarRead(store, layout.stored_refs, ENTITY)
        mine = online.read_columns(store.config, plan, user_ids)
    except Exception as exc:
        if ostore.is_store_error(exc):
            raise
        log.warning("the columnar read of %s failed (%s): reading through Feast", layout.name, exc)
        return None
    feast = read_stored(store, layout, user_ids)
    if mine.keys() != feast.keys() or not all(same(feast[k], mine[k]) for k in feast):
        log.warning("the columnar read of %s differs from Feast's: reading through Feast", layout.name)
        return None
    return plan


def agrees(store: FeatureStore, layout: ServiceLayout, user_ids: list[str], whole: dict) -> bool:
    if layout.transforms is None:
        return False
    try:
        split = read_split(store, layout, user_ids)
    except Exception as exc:
        if ostore.is_store_error(exc):
            raise
        log.warning("the split read of %s failed (%s): reading the whole service", layout.name, exc)
        return False
    equal = all(same(whole.get(k), split.get(k)) for k in whole)
    if not equal:
        log.warning("the split read of %s differs from Feast's: reading the whole service", layout.name)
    return equal


def same(a: list | None, b: list | None) -> bool:
    """Two response columns hold the same values (NaN equal to NaN)."""
    if a is None or b is None or len(a) != len(b):
        return a is b
    for x, y in zip(a, b, strict=True):
        if x != y and not (isinstance(x, float) and isinstance(y, float) and x != x and y != y):
            return False
    return True
