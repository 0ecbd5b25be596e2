"""The generator's parameters, its drift, its calendar (month m ↔ as_of) and its seeded random streams."""

from __future__ import annotations

import calendar
import zlib
from dataclasses import dataclass
from datetime import date

import numpy as np

from streamflow.core.errors import StreamflowError

FIRST_AS_OF = date(2024, 1, 31)
MAX_MONTHS = 1000  # folder names have three digits
MAX_USERS = 10_000_000
CHUNK_USERS = 25_000  # users per event chunk: bounds memory, one progress step each
ORACLE_DIR = "oracle"
STAGING_DIR = ".generate.partial"
RETIRED_DIR = ".generate.old"

ID_LETTERS = 26**5
ID_SPACE = 10_000 * ID_LETTERS
DAY = 86_400
HISTORY_MONTHS = 4  # a 90-day window can reach into the fourth month back (e.g. Feb-Apr of a common year)
_EPOCH = date(1970, 1, 1)
_CALIBRATION_SEED = 20240131  # the hidden hazard is a property of the generator, not of --seed


class GenerateError(StreamflowError, ValueError):
    """Bad arguments, a missing source file or an output folder that cannot be written."""


# ---------------------------------------------------------------------------------------
# parameters of the simulated business
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    """Every constant of the simulation, in one place (logit scale for hazard weights)."""

    # latent engagement: AR(1) around a per-user mean that falls with the profile's risk
    engagement_rho: float = 0.75
    engagement_risk: float = 0.2
    engagement_drop_when_leaving: float = 0.8
    engagement_new_user_boost: float = 0.8  # sign-ups start keen; the boost fades with engagement_rho
    # subscribers who stayed were selected for engagement: month 0 starts them where later months settle
    engagement_survivor_shift: float = 0.24
    # sessions and their content, driven by engagement
    sessions_per_month: float = 13.0
    sessions_engagement: float = 0.45
    minutes_median: float = 38.0
    minutes_engagement: float = 0.45
    minutes_sigma: float = 0.4
    minutes_max: float = 720.0
    skips_per_session: float = 0.9
    skips_engagement: float = -0.4
    device_pool_weights: tuple[float, ...] = (0.30, 0.35, 0.22, 0.13)  # 1..4 devices
    device_preference: float = 0.55  # each further device is used this much less often
    # rebuffering per session by net_service (DSL, Fiber optic, No), a user's lasting quality and monthly noise
    rebuffer_base: tuple[float, float, float] = (0.30, 0.20, 0.40)
    rebuffer_user_sigma: float = 0.7
    rebuffer_month_sigma: float = 0.3
    # payments: first attempt fails with a logistic probability, a failed one is retried 2-4 days later
    pay_fail_logit: float = -3.3
    pay_fail_method: tuple[float, float, float, float] = (1.0, 0.3, 0.0, 0.0)  # contract.PAYMENT_METHODS
    pay_fail_engagement: float = -0.5
    pay_retry_fail: float = 0.35
    # support tickets
    tickets_per_month: float = 0.10
    tickets_engagement: float = -0.5
    tickets_quality: float = 1.0
    tickets_max_per_month: int = 4
    ticket_weights: tuple[float, ...] = (0.22, 0.22, 0.22, 0.17, 0.17)  # contract.TICKET_CATEGORIES
    resolution_median_hours: float = 8.0
    resolution_sigma: float = 1.0
    # the hazard's behavioural terms
    hazard_engagement: float = -1.2
    hazard_rebuffer_7d: float = 0.45  # times log1p(rebuffer events in the last 7 days)
    hazard_failed_payments_90d: float = 0.6
    hazard_tickets_90d: float = 0.35
    # period 0 carries Telco's real churn (26.5%); later periods a lower monthly base rate
    later_period_offset: float = -1.8
    # population dynamics
    new_users_ratio: tuple[float, float] = (0.9, 1.1)  # sign-ups per churner of the month
    # new users copy the profile of a real customer who churned (share below) or of any real customer:
    # sign-ups resemble the people who leave, which keeps the subscriber mix stable month over month
    new_user_churner_share: float = 1.0
    plan_change_share: float = 0.03
    contract_change_share: float = 0.35  # of plan changes; the rest toggle one option
    contract_step_discount: float = 0.97  # fee factor per step towards a longer contract
    fee_floor: float = 5.0
    # sampling-importance-resampling of month-0 behaviour given the real label
    posterior_candidates: int = 32
    calibration_draws: int = 16


@dataclass(frozen=True)
class Drift:
    """Shift applied from month --drift-at on."""

    sessions: float = 0.55
    minutes: float = 0.65
    rebuffer: float = 2.5
    skips: float = 1.7
    fee: float = 1.18
    pay_fail_logit: float = 1.3
    device_preference: float = 0.25  # viewing concentrates on the main device
    tickets: float = 1.5
    resolution: float = 1.6


PARAMS = Params()
DRIFT = Drift()


# ---------------------------------------------------------------------------------------
# calendar
# ---------------------------------------------------------------------------------------
def as_of(month: int) -> date:
    """Last day of drop ``month`` (0 -> 2024-01-31, 1 -> 2024-02-29, ...)."""
    year, mon = divmod(FIRST_AS_OF.month - 1 + month, 12)
    year += FIRST_AS_OF.year
    return date(year, mon + 1, calendar.monthrange(year, mon + 1)[1])


def month_start(month: int) -> date:
    return as_of(month).replace(day=1)


def epoch_day(d: date) -> int:
    return (d - _EPOCH).days


def drop_name(month: int) -> str:
    return f"month_{month:03d}"


def oracle_name(month: int) -> str:
    return f"period_{as_of(month).isoformat()}.csv"


# ---------------------------------------------------------------------------------------
# random streams
# ---------------------------------------------------------------------------------------
def _rng(seed: int, month: int, purpose: str, part: int = 0) -> np.random.Generator:
    """An independent stream per (seed, month, purpose, part): stable across runs and platforms."""
    return np.random.default_rng(np.random.SeedSequence([seed, month + 1, zlib.crc32(purpose.encode()), part]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------
# monthly behaviour
# ---------------------------------------------------------------------------------------
def _month_seconds(month: int) -> int:
    return as_of(month).day * DAY


def _month0_start(tenure: np.ndarray, signup_day: np.ndarray) -> np.ndarray:
    """Seconds into month 0 at which a real customer becomes active (signup day for tenure 0)."""
    return np.where(tenure == 0, (signup_day.astype(np.int64) - 1) * DAY, 0)
