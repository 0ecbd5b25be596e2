"""Realized evidence for the promotion gate: did a shadow rank the last labelled months better than the champion?

The dbt mart ``marts.model_performance`` holds, once a month's labels have arrived, the realized metrics of each
model version that scored it: the champion's batch scores and a shadow's (``ml.shadow_scores``, source batch) on
the same users. :func:`read_evidence` takes the last K labelled months from it; :func:`decide_realized` is the
rule, a pure function of those numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from streamflow.core.db import connect
from streamflow.core.names import MART_SCHEMA, PERFORMANCE_MART
from streamflow.core.settings import Settings

PERFORMANCE = f"{MART_SCHEMA}.{PERFORMANCE_MART}"
NOT_ENOUGH = "not enough realized evidence"


@dataclass(frozen=True)
class MonthEvidence:
    """One labelled month: the champion that scored it and the shadow's result on the same users."""

    as_of: date
    champion_version: int | None
    champion_roc_auc: float | None
    shadow_roc_auc: float | None
    shadow_labelled: int


@dataclass(frozen=True)
class RealizedEvidence:
    shadow_version: str
    wanted: int  # K: the labelled months the rule looks at
    months: tuple[MonthEvidence, ...]  # the last labelled months, oldest first (at most K)
    missing_mart: bool = False

    @property
    def complete(self) -> tuple[MonthEvidence, ...]:
        """The months where both the champion and the shadow have a realized ROC-AUC."""
        return tuple(m for m in self.months if m.champion_roc_auc is not None and m.shadow_roc_auc is not None)

    @property
    def labelled_rows(self) -> int:
        return sum(m.shadow_labelled for m in self.months)

    def as_dict(self) -> dict:
        return {
            "shadow_version": self.shadow_version,
            "months_wanted": self.wanted,
            "months": [{**asdict(m), "as_of": m.as_of.isoformat()} for m in self.months],
        }


def read_evidence(settings: Settings, shadow_version: str, months: int) -> RealizedEvidence:
    """The last ``months`` labelled months of marts.model_performance, with the champion's and the shadow's
    realized ROC-AUC in each (None where that model has no result for the month)."""
    with connect(settings) as conn:
        if conn.execute("select to_regclass(%s)", (PERFORMANCE,)).fetchone()[0] is None:
            return RealizedEvidence(str(shadow_version), months, (), missing_mart=True)
        rows = conn.execute(
            f"""
            with labelled as (
                select distinct as_of from {PERFORMANCE} order by as_of desc limit %(k)s
            ),
            champion as (
                select distinct on (as_of) as_of, model_version, roc_auc
                from {PERFORMANCE} where role = 'champion'
                order by as_of, n_labelled desc, model_version desc
            )
            select (labelled.as_of at time zone 'UTC')::date, champion.model_version, champion.roc_auc,
                   shadow.roc_auc, coalesce(shadow.n_labelled, 0)
            from labelled
            left join champion on champion.as_of = labelled.as_of
            left join {PERFORMANCE} as shadow
                on shadow.as_of = labelled.as_of and shadow.role = 'shadow' and shadow.model_version = %(v)s
            order by labelled.as_of
            """,
            {"k": months, "v": int(shadow_version)},
        ).fetchall()
    return RealizedEvidence(str(shadow_version), months, tuple(MonthEvidence(*row) for row in rows))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def decide_realized(evidence: RealizedEvidence, min_roc_auc: float, margin: float) -> tuple[bool, tuple[str, ...]]:
    """(promote, reasons). Promote only when each of the last K labelled months has a realized ROC-AUC for both
    models, the shadow's is higher than the champion's in every one of them, its mean beats the champion's by
    ``margin`` and meets the floor ``min_roc_auc``. Anything less keeps the champion, and the reasons say why."""
    k, shadow = evidence.wanted, evidence.shadow_version
    if evidence.missing_mart:
        return False, (f"{NOT_ENOUGH}: {PERFORMANCE} does not exist yet (run `streamflow build`)",)
    if len(evidence.months) < k:
        return False, (
            f"{NOT_ENOUGH}: {PERFORMANCE} holds {len(evidence.months)} labelled month(s), {k} needed "
            f"(STREAMFLOW_PROMOTION_REALIZED_MONTHS)",
        )
    absent = [m.as_of.isoformat() for m in evidence.months if m not in evidence.complete]
    if absent:
        return False, (
            f"{NOT_ENOUGH}: version {shadow} has no realized ROC-AUC next to the champion's for "
            f"{', '.join(absent)} (of the last {k} labelled months); it must be scored in shadow "
            f"(`streamflow score` with a shadow) in each of them",
        )
    reasons, failed = [], []
    for m in evidence.months:
        line = (
            f"{m.as_of}: shadow v{shadow} ROC-AUC {m.shadow_roc_auc:.4f} vs champion v{m.champion_version} "
            f"{m.champion_roc_auc:.4f} ({m.shadow_roc_auc - m.champion_roc_auc:+.4f})"
        )
        if m.shadow_roc_auc > m.champion_roc_auc:
            reasons.append(line)
        else:
            failed.append(f"{line}: the shadow is not better")
    shadow_mean = mean(m.shadow_roc_auc for m in evidence.months)
    champion_mean = mean(m.champion_roc_auc for m in evidence.months)
    gain = shadow_mean - champion_mean
    summary = (
        f"mean realized ROC-AUC over {k} month(s) {shadow_mean:.4f} vs the champion's {champion_mean:.4f} "
        f"({gain:+.4f}, margin {margin:.4f})"
    )
    (reasons if round(gain, 12) >= margin else failed).append(summary)
    floor = f"mean realized ROC-AUC {shadow_mean:.4f} against the floor {min_roc_auc:.4f}"
    (reasons if shadow_mean >= min_roc_auc else failed).append(floor)
    if failed:
        return False, tuple(failed)
    return True, tuple(reasons)
