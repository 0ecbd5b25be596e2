"""Derived ratios computed at retrieval time, online and offline, from the mart features.

The function runs inside Feast (serialized into the registry), so it is self-contained: no imports,
no module-level helpers. Denominators are floored at 1 so a new or inactive user gets a finite value.
"""

from typing import Any

from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64
from feature_views import subscriptions_profile, support_agg_90d, usage_agg_30d


@on_demand_feature_view(
    sources=[
        subscriptions_profile[["monthly_fee", "months_active"]],
        usage_agg_30d[["watch_hours_30d", "unique_devices_30d"]],
        support_agg_90d[["support_tickets_90d"]],
    ],
    schema=[
        Field(name="fee_per_active_month", dtype=Float64),
        Field(name="watch_hours_per_device", dtype=Float64),
        Field(name="tickets_per_active_month", dtype=Float64),
    ],
    mode="python",
    description="fee / months active, watch hours (30 d) / devices (30 d), tickets (90 d) / months active "
    "within those 90 days.",
)
def derived_ratios(inputs: dict[str, Any]) -> dict[str, Any]:
    def ratio(numerators, denominators, cap=None):
        out = []
        for num, den in zip(numerators, denominators, strict=True):
            if num is None or den is None:
                out.append(None)
                continue
            den = max(den, 1)
            if cap is not None:
                den = min(den, cap)
            out.append(float(num) / den)
        return out

    return {
        "fee_per_active_month": ratio(inputs["monthly_fee"], inputs["months_active"]),
        "watch_hours_per_device": ratio(inputs["watch_hours_30d"], inputs["unique_devices_30d"]),
        "tickets_per_active_month": ratio(inputs["support_tickets_90d"], inputs["months_active"], cap=3),
    }
