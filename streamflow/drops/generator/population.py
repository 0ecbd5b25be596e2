"""The simulated population: one column per user attribute, grown as users sign up."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamflow.drops.generator.customers import RealCustomers, id_strings
from streamflow.drops.generator.hazard import _draw_quality, profile_features
from streamflow.drops.generator.params import HISTORY_MONTHS, PARAMS, Params

# ---------------------------------------------------------------------------------------
# population state
# ---------------------------------------------------------------------------------------
_STATE_FIELDS = {
    "code": np.int64,
    "signup": np.int64,
    "gender": np.int8,
    "senior": bool,
    "partner": bool,
    "dependents": bool,
    "contract": np.int8,
    "months": np.int32,
    "fee": np.int64,
    "paperless": bool,
    "method": np.int8,
    "net": np.int8,
    "real_churn": bool,
    "billing_day": np.int8,
    "devices": np.int8,
    "quality": np.float64,
    "engagement": np.float64,
    "active": bool,
    "leaving": bool,
}


class Population:
    """Per-user state in numpy arrays (a user's index is its serial number, stable across months)."""

    def __init__(self) -> None:
        for name, dtype in _STATE_FIELDS.items():
            setattr(self, name, np.empty(0, dtype=dtype))
        self.options = np.empty((0, 6), dtype=bool)
        # failed-payment and ticket days (days since 2024-01-01, -1 = none) of the last HISTORY_MONTHS months
        self.fail_days = np.empty((0, HISTORY_MONTHS, 2), dtype=np.int16)
        self.ticket_days = np.empty((0, HISTORY_MONTHS, PARAMS.tickets_max_per_month), dtype=np.int16)
        self.id_str = pa.array([], pa.string())
        self._taken = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.code)

    def append(self, values: dict[str, np.ndarray]) -> np.ndarray:
        n = len(values["code"])
        first = len(self)
        for name, dtype in _STATE_FIELDS.items():
            setattr(self, name, np.concatenate([getattr(self, name), np.asarray(values[name], dtype=dtype)]))
        self.options = np.concatenate([self.options, values["options"]])
        self.fail_days = np.concatenate([self.fail_days, np.full((n, HISTORY_MONTHS, 2), -1, np.int16)])
        self.ticket_days = np.concatenate(
            [self.ticket_days, np.full((n, HISTORY_MONTHS, PARAMS.tickets_max_per_month), -1, np.int16)]
        )
        self.id_str = pa.concat_arrays([self.id_str, id_strings(values["code"])])
        self._taken = np.sort(np.concatenate([self._taken, values["code"]]))
        return np.arange(first, first + n)

    def profile(self, idx: np.ndarray) -> np.ndarray:
        return profile_features(
            self.contract[idx],
            self.months[idx],
            self.fee[idx],
            self.paperless[idx],
            self.method[idx],
            self.net[idx],
            self.options[idx],
            self.senior[idx],
            self.partner[idx],
            self.dependents[idx],
        )


def _profiles_from(real: RealCustomers, src: np.ndarray, rng, p: Params) -> dict[str, np.ndarray]:
    """Per-user fields copied from real customers ``src`` plus the simulation's own draws."""
    n = len(src)
    return {
        "gender": real.gender[src],
        "senior": real.senior[src],
        "partner": real.partner[src],
        "dependents": real.dependents[src],
        "contract": real.contract[src],
        "fee": real.fee[src],
        "paperless": real.paperless[src],
        "method": real.method[src],
        "net": real.net[src],
        "options": real.options[src],
        "real_churn": real.churn[src],
        "devices": rng.choice(np.arange(1, len(p.device_pool_weights) + 1), size=n, p=p.device_pool_weights),
        "quality": _draw_quality(rng, real.net[src], p),
        "active": np.zeros(n, bool),
        "leaving": np.zeros(n, bool),
    }
