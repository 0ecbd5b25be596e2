"""The hidden churn hazard: fitted to the real customers, plus the behaviour that drives it
(engagement, rebuffering, failed payments, support tickets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamflow.drops.generator.customers import RealCustomers
from streamflow.drops.generator.params import (
    _CALIBRATION_SEED,
    DAY,
    DRIFT,
    PARAMS,
    Params,
    _month0_start,
    _month_seconds,
    _rng,
    _sigmoid,
)


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
