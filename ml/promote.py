"""The promotion gate: does the challenger replace the champion?

:func:`decide` is the rule, a pure function of the two models' scores on the same validation rows.
:func:`promote` is the MLflow side: it scores the current champion on the challenger's validation
frame, applies the rule, writes the decision and its reasons as tags on both versions, and moves
the ``champion`` alias in one call when the challenger wins.

With ``STREAMFLOW_PROMOTION_EVIDENCE=realized`` and a champion in place, the evidence is what happened instead:
the shadow (alias ``shadow``, else the candidate) replaces the champion only when it ranked the last K labelled
months better (:mod:`ml.realized`, from the dbt mart ``marts.model_performance``). Without enough realized
evidence the gate says so and keeps the champion. The decision and the numbers are tagged the same way.

A challenger not stored in the safe form (skops with the project's trusted types, :mod:`ml.model_format`) is
refused before it is deserialized: the refusal is tagged on the version and raised with its reason, and the
champion stays. A champion in that form cannot be scored: the challenger is then held to the floors alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import log_loss, roc_auc_score

from ml import realized
from ml.errors import MLError
from ml.model_format import UnsafeModel
from ml.threads import limited_threads
from ml.tracking import (
    VALIDATION_FRAME_ARTIFACT,
    LoadedModel,
    configure,
    load_version,
    version_by_alias,
)
from streamflow.core import faults
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import CHALLENGER, CHAMPION, SHADOW
from streamflow.core.settings import Settings

PROMOTE = "promote"
KEEP = "keep"
REFUSE = "refuse"  # recorded on a challenger that is not in the safe form (promote raises)
NO_CHAMPION = "there is no champion yet"
VALIDATION, REALIZED = "validation", "realized"  # settings.promotion_evidence


@dataclass(frozen=True)
class Policy:
    """Absolute floor for any champion, and what a challenger must gain over the current one."""

    min_roc_auc: float = 0.70
    margin: float = 0.01
    logloss_tolerance: float = 0.02

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.promotion_min_roc_auc, settings.promotion_margin, settings.promotion_logloss_tolerance)


@dataclass(frozen=True)
class Scores:
    """A model's scores on the validation rows being compared."""

    roc_auc: float
    log_loss: float | None = None  # None: realized evidence (the mart holds no log-loss)


@dataclass(frozen=True)
class Decision:
    action: str  # PROMOTE or KEEP
    reasons: tuple[str, ...]

    @property
    def promote(self) -> bool:
        return self.action == PROMOTE


def decide(challenger: Scores, champion: Scores | None, policy: Policy) -> Decision:
    """Promote when the floors hold and either there is no champion, or the challenger beats it by
    ``margin`` ROC-AUC without losing more than ``logloss_tolerance`` log-loss. Otherwise keep.

    Every check that failed is a reason; when all pass, the reasons say what was shown.
    """
    failed: list[str] = []
    passed: list[str] = []
    if challenger.roc_auc >= policy.min_roc_auc:
        passed.append(f"ROC-AUC {challenger.roc_auc:.4f} meets the floor {policy.min_roc_auc:.4f}")
    else:
        failed.append(f"ROC-AUC {challenger.roc_auc:.4f} is below the floor {policy.min_roc_auc:.4f}")

    if champion is None:
        passed.append(NO_CHAMPION)
    else:
        gain = challenger.roc_auc - champion.roc_auc
        # rounding keeps a gain of exactly the margin from failing on floating-point noise
        if round(gain, 12) >= policy.margin:
            passed.append(
                f"ROC-AUC {challenger.roc_auc:.4f} beats the champion's {champion.roc_auc:.4f} by {gain:+.4f} "
                f"(margin {policy.margin:.4f})"
            )
        else:
            failed.append(
                f"ROC-AUC {challenger.roc_auc:.4f} vs the champion's {champion.roc_auc:.4f} is a gain of "
                f"{gain:+.4f}, less than the margin {policy.margin:.4f}"
            )
        worse = challenger.log_loss - champion.log_loss
        if round(worse, 12) <= policy.logloss_tolerance:
            passed.append(
                f"log-loss {challenger.log_loss:.4f} vs the champion's {champion.log_loss:.4f} "
                f"({worse:+.4f}) is within the tolerance {policy.logloss_tolerance:.4f}"
            )
        else:
            failed.append(
                f"log-loss {challenger.log_loss:.4f} is worse than the champion's {champion.log_loss:.4f} by "
                f"{worse:+.4f}, more than the tolerance {policy.logloss_tolerance:.4f}"
            )
    if failed:
        return Decision(KEEP, tuple(failed))
    return Decision(PROMOTE, tuple(passed))


# ---------------------------------------------------------------------------------------
# MLflow side
# ---------------------------------------------------------------------------------------
@dataclass
class PromotionResult:
    decision: Decision
    challenger_version: str
    champion_before: str | None
    champion_after: str | None
    challenger_scores: Scores | None  # None: realized evidence was not enough to score it
    champion_scores: Scores | None
    validation_rows: int  # realized evidence: the shadow's labelled rows over the months compared
    policy: Policy = field(default_factory=Policy)
    evidence: str = VALIDATION
    realized: dict | None = None  # realized evidence: the months compared, with both ROC-AUCs

    def as_dict(self) -> dict:
        return {
            "decision": self.decision.action,
            "reasons": list(self.decision.reasons),
            "challenger_version": self.challenger_version,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "challenger_scores": asdict(self.challenger_scores) if self.challenger_scores else None,
            "champion_scores": asdict(self.champion_scores) if self.champion_scores else None,
            "validation_rows": self.validation_rows,
            "policy": asdict(self.policy),
            "evidence": self.evidence,
            "realized": self.realized,
        }


def _scores(y, proba) -> Scores:
    p = np.clip(np.asarray(proba, dtype=float), 1e-15, 1 - 1e-15)
    return Scores(float(roc_auc_score(y, p)), float(log_loss(y, p, labels=[False, True])))


def _validation_frame(run_id: str):
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_FRAME_ARTIFACT)
    except Exception as exc:  # the artifact store raises its own types (file, HTTP, S3...)
        raise MLError(f"the challenger's run {run_id} has no validation frame ({exc}): retrain it") from None
    return pd.read_parquet(local)


def promote(settings: Settings, version: str | None = None) -> PromotionResult:
    """Compare a candidate with the champion on the candidate's validation rows; move ``champion`` if it wins.

    The candidate is ``version`` (the version a run registered), else the ``challenger`` alias. Under the
    pipeline lock, the champion is read again just before the alias moves; if it changed meanwhile, the
    candidate is compared with the new one first (compare-and-set), so the champion never regresses
    through a race. With realized evidence and a champion in place: :func:`promote_on_realized`.
    """
    client = configure(settings)
    name = settings.model_name
    with pipeline_lock(settings, "promote"):
        if settings.promotion_evidence == REALIZED and _current_champion(client, name) is not None:
            return promote_on_realized(settings, client, version)
        candidate = _candidate(client, name, version)
        try:
            challenger = load_version(settings, candidate, client)
        except UnsafeModel as exc:
            _record_refusal(client, name, candidate, _current_champion(client, name), str(exc))
            raise
        valid = _validation_frame(challenger.run_id)
        y = valid["churn_label"].astype(bool).to_numpy()
        with limited_threads(settings):
            challenger_scores = _scores(y, challenger.predict_proba(valid))
        return _decide_and_move(settings, client, challenger, valid, y, challenger_scores)


def _candidate(client: MlflowClient, name: str, version: str | None) -> str:
    if version is not None:
        return str(version)
    challenger_mv = version_by_alias(client, name, CHALLENGER)
    if challenger_mv is None:
        raise MLError(f"model {name!r} has no challenger: train one with `streamflow train --as-of M`")
    return str(challenger_mv.version)


def _current_champion(client: MlflowClient, name: str) -> str | None:
    champion_mv = version_by_alias(client, name, CHAMPION)
    return str(champion_mv.version) if champion_mv is not None else None


def _decide_and_move(
    settings: Settings, client: MlflowClient, challenger: LoadedModel, valid: pd.DataFrame, y, challenger_scores
) -> PromotionResult:
    """Decide against the champion of the moment; move the alias only if the champion is still that one."""
    name, policy = settings.model_name, Policy.from_settings(settings)
    for _attempt in range(3):
        before = _current_champion(client, name)
        if before == challenger.version:
            # nothing to compare; the tags of the promotion that made it champion stay as they are
            decision = Decision(KEEP, (f"version {challenger.version} is already the champion",))
            return PromotionResult(
                decision, challenger.version, before, before, challenger_scores, challenger_scores, len(valid), policy
            )
        champion_scores, unsafe = None, None
        if before is not None:
            try:
                champion_scores = _champion_scores(settings, client, before, valid, y)
            except UnsafeModel as exc:  # it cannot be scored (nor served): the floors decide alone
                unsafe = f"the champion (version {before}) is not compared: {exc}"
        decision = decide(challenger_scores, champion_scores, policy)
        if unsafe is not None:
            reasons = [r for r in decision.reasons if r != NO_CHAMPION]
            decision = Decision(decision.action, (*reasons, unsafe))
        if _current_champion(client, name) != before:
            continue  # the champion moved while we scored: compare with the new one
        _record(client, name, decision, challenger, before, challenger_scores, champion_scores)
        faults.pause("promote.alias")
        after = before
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
            after = challenger.version
        return PromotionResult(
            decision, challenger.version, before, after, challenger_scores, champion_scores, len(valid), policy
        )
    raise MLError("the champion kept moving while this promotion compared against it; run `streamflow promote` again")


def _champion_scores(settings: Settings, client: MlflowClient, version, valid: pd.DataFrame, y) -> Scores:
    """The current champion's scores on the challenger's validation rows."""
    champion = load_version(settings, version, client)
    missing = [f for f in champion.features if f not in valid.columns]
    if missing:
        raise MLError(
            f"the champion (version {champion.version}) needs features the challenger's validation rows "
            f"lack ({missing}): the two cannot be compared on the same rows"
        )
    with limited_threads(settings):
        return _scores(y, champion.predict_proba(valid))


def _record(
    client: MlflowClient,
    name: str,
    decision: Decision,
    challenger: LoadedModel,
    before: str | None,
    challenger_scores: Scores,
    champion_scores: Scores | None,
) -> None:
    """The decision and its reasons as tags on both versions and on the challenger's run."""
    tags = {
        "promotion.decision": decision.action,
        "promotion.reasons": "; ".join(decision.reasons),
        "promotion.evidence": VALIDATION,
        "promotion.challenger": challenger.version,
        "promotion.champion": before or "none",
        "promotion.challenger_roc_auc": f"{challenger_scores.roc_auc:.6f}",
        "promotion.challenger_log_loss": f"{challenger_scores.log_loss:.6f}",
        "promotion.champion_roc_auc": f"{champion_scores.roc_auc:.6f}" if champion_scores else "none",
        "promotion.champion_log_loss": f"{champion_scores.log_loss:.6f}" if champion_scores else "none",
        "promotion.validation_frame_sha256": challenger.lineage.get("validation_frame_sha256", "unknown"),
    }
    _tag(client, name, (challenger.version, before), challenger.run_id, tags)


def _tag(client: MlflowClient, name: str, versions, run_id: str, tags: dict[str, str]) -> None:
    """The decision's tags on each version (None skipped), and the decision and its reasons on the run."""
    for version in sorted({v for v in versions if v}):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    client.set_tag(run_id, "promotion.decision", tags["promotion.decision"])
    client.set_tag(run_id, "promotion.reasons", tags["promotion.reasons"])


def _record_refusal(client: MlflowClient, name: str, version: str, champion: str | None, reason: str) -> None:
    """A challenger refused for its form: the decision and the reason as tags on it (the champion is untouched)."""
    tags = {
        "promotion.decision": REFUSE,
        "promotion.reasons": reason,
        "promotion.challenger": version,
        "promotion.champion": champion or "none",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


# ---------------------------------------------------------------------------------------
# realized evidence
# ---------------------------------------------------------------------------------------
def _shadow_candidate(client: MlflowClient, name: str, version: str | None) -> str:
    """The model under test in shadow: alias ``shadow``, else ``version``, else the ``challenger`` alias."""
    shadow_mv = version_by_alias(client, name, SHADOW)
    if shadow_mv is not None:
        return str(shadow_mv.version)
    if version is None and version_by_alias(client, name, CHALLENGER) is None:
        raise MLError(
            f"model {name!r} has no shadow and no challenger: set the alias `{SHADOW}` on the version to test, "
            "or train one with `streamflow train --as-of M`"
        )
    return _candidate(client, name, version)


def promote_on_realized(settings: Settings, client: MlflowClient, version: str | None = None) -> PromotionResult:
    """The gate on realized evidence (the caller holds the pipeline lock and there is a champion): the shadow
    becomes champion only when it beat the champion on the last K labelled months of marts.model_performance.
    The decision, the months and both ROC-AUCs are tagged on the versions and the shadow's run; a promoted
    shadow loses the ``shadow`` alias (it is the champion now)."""
    name, policy, k = settings.model_name, Policy.from_settings(settings), settings.promotion_realized_months
    candidate = _shadow_candidate(client, name, version)
    run_id = client.get_model_version(name, candidate).run_id
    for _attempt in range(3):
        before = _current_champion(client, name)
        if before == candidate:
            decision = Decision(KEEP, (f"version {candidate} is already the champion",))
            return PromotionResult(decision, candidate, before, before, None, None, 0, policy, REALIZED)
        evidence = realized.read_evidence(settings, candidate, k)
        wins, reasons = realized.decide_realized(evidence, policy.min_roc_auc, policy.margin)
        decision = Decision(PROMOTE if wins else KEEP, reasons)
        complete = evidence.complete
        challenger_scores = champion_scores = None
        if complete:
            challenger_scores = Scores(realized.mean(m.shadow_roc_auc for m in complete))
            champion_scores = Scores(realized.mean(m.champion_roc_auc for m in complete))
        if _current_champion(client, name) != before:
            continue  # the champion moved while we read: decide again against the new one
        tags = {
            "promotion.decision": decision.action,
            "promotion.reasons": "; ".join(decision.reasons),
            "promotion.evidence": REALIZED,
            "promotion.challenger": candidate,
            "promotion.champion": before,
            "promotion.realized_months": ",".join(m.as_of.isoformat() for m in evidence.months) or "none",
            "promotion.challenger_roc_auc": f"{challenger_scores.roc_auc:.6f}" if challenger_scores else "none",
            "promotion.champion_roc_auc": f"{champion_scores.roc_auc:.6f}" if champion_scores else "none",
        }
        _tag(client, name, (candidate, before), run_id, tags)
        faults.pause("promote.alias")
        after = before
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, candidate)
            shadow_mv = version_by_alias(client, name, SHADOW)
            if shadow_mv is not None and str(shadow_mv.version) == candidate:
                client.delete_registered_model_alias(name, SHADOW)
            after = candidate
        return PromotionResult(
            decision,
            candidate,
            before,
            after,
            challenger_scores,
            champion_scores,
            evidence.labelled_rows,
            policy,
            REALIZED,
            evidence.as_dict(),
        )
    raise MLError("the champion kept moving while this promotion compared against it; run `streamflow promote` again")
