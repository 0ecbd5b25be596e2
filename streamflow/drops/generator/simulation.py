"""The monthly state transition: who stays, leaves and signs up, their behaviour and true churn
probability, and the events (sessions, payments, tickets) each month writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa

from streamflow.drops import contract
from streamflow.drops.generator import params
from streamflow.drops.generator.customers import RealCustomers, new_id_codes
from streamflow.drops.generator.hazard import (
    Hazard,
    HazardInputs,
    _draw_hazard_inputs,
    _draw_quality,
    _session_rate,
    behaviour_term,
    engagement_prior,
)
from streamflow.drops.generator.params import (
    DAY,
    DRIFT,
    HISTORY_MONTHS,
    PARAMS,
    Params,
    _month0_start,
    _month_seconds,
    _rng,
    _sigmoid,
    as_of,
    epoch_day,
    month_start,
)
from streamflow.drops.generator.population import Population, _profiles_from
from streamflow.drops.generator.writers import CsvSink, _bools, _choice, _dates, _fixed, _ints, _serials, _Timestamps


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


@dataclass
class _Chunk:
    """One chunk of a month's present users, as the event writers read it."""

    plan: _MonthPlan
    sl: slice  # the chunk's positions in plan.present
    idx: np.ndarray  # the chunk's user indices
    inp: HazardInputs  # their hazard inputs
    rng: np.random.Generator  # the chunk's one random stream, shared by the writers in order
    stamp: _Timestamps


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
        for part, lo in enumerate(range(0, len(idx), params.CHUNK_USERS)):
            sl = slice(lo, lo + params.CHUNK_USERS)
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
        """Sessions, payments and tickets of the present users in ``sl`` (one chunk).

        One random stream per chunk, drawn in this order: sessions, then tickets (payments draw none).
        """
        chunk = _Chunk(
            plan=plan,
            sl=sl,
            idx=plan.present[sl],
            inp=plan.inputs.take(np.arange(len(plan.present))[sl]),
            rng=_rng(self.seed, plan.month, "events", part),
            stamp=stamp,
        )
        counters["sessions"] += self._write_sessions(chunk, sinks["sessions"], counters["sessions"])
        counters["payments"] += self._write_payments(chunk, sinks["payments"], counters["payments"])
        counters["tickets"] += self._write_tickets(chunk, sinks["tickets"], counters["tickets"])

    def _write_sessions(self, c: _Chunk, sink: CsvSink, first: int) -> int:
        """Early sessions before the last 7 days, late ones inside them; returns how many."""
        p, pop, plan, rng, inp = self.p, self.pop, c.plan, c.rng, c.inp
        start, end = plan.start[c.sl], plan.end[c.sl]
        late_from = _month_seconds(plan.month) - 7 * DAY
        drift = DRIFT if plan.drift else None
        n_early, n_late = plan.sessions_early[c.sl], inp.sessions_late
        per_user = n_early + n_late
        total = int(per_user.sum())
        owner = np.repeat(np.arange(len(c.idx)), per_user)
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
        r_owner = np.repeat(np.arange(len(c.idx)), inp.rebuffer_late)
        r_pos = block[r_owner] + n_early[r_owner]
        r_pos = r_pos + np.floor(rng.random(len(r_owner)) * n_late[r_owner]).astype(np.int64)
        rebuffer = rebuffer + np.bincount(r_pos, minlength=total)
        pool = pop.devices[c.idx][owner].astype(np.float64)
        q = drift.device_preference if drift else p.device_preference
        slot = np.floor(np.log1p(-rng.random(total) * (1 - q**pool)) / np.log(q)).astype(np.int64)
        slot = np.minimum(slot, pool.astype(np.int64) - 1)
        sink.write(
            [
                _serials(f"S{plan.month:03d}", first + np.arange(total), 9),
                pop.id_str.take(pa.array(c.idx[owner])),
                c.stamp(at),
                _serials("D", c.idx[owner] * 10 + slot, 9),
                _fixed(np.rint(minutes * 100), 2),
                _ints(skips),
                _ints(rebuffer),
            ]
        )
        return total

    def _write_payments(self, c: _Chunk, sink: CsvSink, first: int) -> int:
        """Each attempt, then the retry of a failed attempt; returns how many."""
        pop, plan, inp = self.pop, c.plan, c.inp
        has_pay = plan.pay_at[c.sl] >= 0
        has_retry = inp.fail_first & (plan.retry_at[c.sl] >= 0)
        u = np.concatenate([np.flatnonzero(has_pay), np.flatnonzero(has_retry)])
        when = np.concatenate([plan.pay_at[c.sl][has_pay], plan.retry_at[c.sl][has_retry]])
        failed = np.concatenate([inp.fail_first[has_pay], inp.fail_retry[has_retry]])
        order = np.lexsort((when, u))
        u, when, failed = u[order], when[order], failed[order]
        sink.write(
            [
                _serials(f"P{plan.month:03d}", first + np.arange(len(u)), 9),
                pop.id_str.take(pa.array(c.idx[u])),
                c.stamp(when),
                _fixed(pop.fee[c.idx[u]], 2),
                _choice(contract.PAYMENT_STATUSES, failed.astype(np.int64)),
            ]
        )
        return len(u)

    def _write_tickets(self, c: _Chunk, sink: CsvSink, first: int) -> int:
        """Support tickets at their planned times, resolved (or still open at month end); returns how many."""
        p, pop, plan, rng, inp = self.p, self.pop, c.plan, c.rng, c.inp
        t_at = plan.ticket_at[c.sl]
        t_user, t_slot = np.nonzero(t_at >= 0)
        opened = t_at[t_user, t_slot]
        hours = p.resolution_median_hours * np.exp(p.resolution_sigma * rng.standard_normal(len(t_user)))
        if plan.drift:
            hours = hours * DRIFT.resolution
        resolved = opened + np.maximum(np.rint(hours * 3600).astype(np.int64), 600)
        resolved = np.where(resolved < _month_seconds(plan.month), resolved, -1)
        weights = np.tile(np.asarray(p.ticket_weights), (len(t_user), 1))
        weights[:, 0] *= np.where(inp.failed[t_user] > 0, 4.0, 1.0)
        weights[:, 1] *= np.where(inp.quality[t_user] > 0.5, 3.0, 1.0)
        cum = np.cumsum(weights, axis=1)
        category = (cum < (rng.random(len(t_user)) * cum[:, -1])[:, None]).sum(axis=1)
        sink.write(
            [
                _serials(f"T{plan.month:03d}", first + np.arange(len(t_user)), 9),
                pop.id_str.take(pa.array(c.idx[t_user])),
                c.stamp(opened),
                c.stamp(resolved),
                _choice(contract.TICKET_CATEGORIES, category),
            ]
        )
        return len(t_user)

    def write_users(self, sink: CsvSink, count: int) -> None:
        pop = self.pop
        for lo in range(0, count, 10 * params.CHUNK_USERS):
            i = np.arange(lo, min(count, lo + 10 * params.CHUNK_USERS))
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
        for lo in range(0, len(idx), 10 * params.CHUNK_USERS):
            i = idx[lo : lo + 10 * params.CHUNK_USERS]
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
