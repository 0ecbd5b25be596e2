"""The promotion rule: a pure decision from the challenger's and the champion's scores on the same rows."""

from __future__ import annotations

from datetime import date

import pytest

from ml.promote import KEEP, PROMOTE, Policy, Scores, decide
from ml.realized import MonthEvidence, RealizedEvidence, decide_realized
from streamflow.core.settings import Settings

POLICY = Policy(min_roc_auc=0.70, margin=0.01, logloss_tolerance=0.02)

# (case, challenger, champion, expected action, words that must appear in the reasons)
CASES = [
    ("no champion, floor holds", Scores(0.80, 0.40), None, PROMOTE, ["no champion", "meets the floor"]),
    ("no champion, exactly at the floor", Scores(0.70, 0.40), None, PROMOTE, ["meets the floor"]),
    ("no champion, floor failed", Scores(0.65, 0.40), None, KEEP, ["below the floor 0.7000"]),
    ("better by more than the margin", Scores(0.85, 0.40), Scores(0.80, 0.41), PROMOTE, ["beats the champion"]),
    ("better by exactly the margin", Scores(0.81, 0.40), Scores(0.80, 0.40), PROMOTE, ["beats the champion"]),
    ("equal", Scores(0.80, 0.40), Scores(0.80, 0.40), KEEP, ["less than the margin"]),
    ("better within the margin", Scores(0.805, 0.39), Scores(0.80, 0.40), KEEP, ["+0.0050", "less than the margin"]),
    ("worse", Scores(0.75, 0.45), Scores(0.80, 0.40), KEEP, ["-0.0500", "less than the margin"]),
    (
        "better AUC but log-loss beyond tolerance",
        Scores(0.85, 0.45),
        Scores(0.80, 0.40),
        KEEP,
        ["log-loss 0.4500 is worse", "tolerance 0.0200"],
    ),
    (
        "better AUC, log-loss worse within tolerance",
        Scores(0.85, 0.415),
        Scores(0.80, 0.40),
        PROMOTE,
        ["within the tolerance"],
    ),
    ("beats a weak champion but fails the floor", Scores(0.68, 0.50), Scores(0.60, 0.60), KEEP, ["below the floor"]),
    (
        "shuffled labels against a real champion",
        Scores(0.50, 0.69),
        Scores(0.88, 0.40),
        KEEP,
        ["below the floor", "less than the margin", "log-loss 0.6900 is worse"],
    ),
]


@pytest.mark.parametrize(("case", "challenger", "champion", "action", "words"), CASES, ids=[c[0] for c in CASES])
def test_promotion_rule_decides_and_explains(case, challenger, champion, action, words):
    decision = decide(challenger, champion, POLICY)
    assert decision.action == action, decision.reasons
    text = " | ".join(decision.reasons)
    for word in words:
        assert word in text


def test_a_kept_challenger_lists_only_the_checks_it_failed():
    decision = decide(Scores(0.75, 0.39), Scores(0.80, 0.40), POLICY)
    assert decision.action == KEEP
    assert len(decision.reasons) == 1 and "margin" in decision.reasons[0]


def test_margin_and_tolerance_come_from_the_policy():
    challenger, champion = Scores(0.83, 0.44), Scores(0.80, 0.40)
    assert decide(challenger, champion, POLICY).action == KEEP  # log-loss +0.04 > 0.02
    assert decide(challenger, champion, Policy(0.70, 0.01, 0.05)).action == PROMOTE
    assert decide(challenger, champion, Policy(0.70, 0.05, 0.05)).action == KEEP  # gain 0.03 < 0.05


def test_policy_reads_the_settings_fields():
    settings = Settings(
        _env_file=None, promotion_min_roc_auc=0.6, promotion_margin=0.02, promotion_logloss_tolerance=0.1
    )
    assert Policy.from_settings(settings) == Policy(0.6, 0.02, 0.1)


# ---------------------------------------------------------------------------------------
# realized evidence (ml.realized.decide_realized)
# ---------------------------------------------------------------------------------------
def _evidence(*months, wanted=2, missing_mart=False):
    return RealizedEvidence(
        "7",
        wanted,
        tuple(MonthEvidence(date(2024, 1 + i, 28), 3, c, s, 100) for i, (c, s) in enumerate(months)),
        missing_mart,
    )


def test_realized_evidence_promotes_a_shadow_that_beat_the_champion_every_month_by_the_margin():
    wins, reasons = decide_realized(_evidence((0.80, 0.83), (0.78, 0.80)), min_roc_auc=0.7, margin=0.01)
    assert wins
    assert reasons[0] == "2024-01-28: shadow v7 ROC-AUC 0.8300 vs champion v3 0.8000 (+0.0300)"
    assert "mean realized ROC-AUC over 2 month(s) 0.8150 vs the champion's 0.7900 (+0.0250" in reasons[2]


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (_evidence((0.80, 0.83)), "holds 1 labelled month(s), 2 needed"),
        (
            _evidence((0.80, 0.83), (0.78, None)),
            "version 7 has no realized ROC-AUC next to the champion's for 2024-02-28",
        ),
        (_evidence((None, 0.83), (0.78, 0.80)), "for 2024-01-28 (of the last 2"),
        (_evidence(missing_mart=True), "marts.model_performance does not exist yet"),
    ],
)
def test_realized_evidence_that_is_missing_keeps_the_champion_and_says_so(evidence, expected):
    wins, reasons = decide_realized(evidence, min_roc_auc=0.7, margin=0.01)
    assert not wins and len(reasons) == 1
    assert reasons[0].startswith("not enough realized evidence: ") and expected in reasons[0]


def test_realized_evidence_keeps_a_shadow_worse_in_one_month_or_short_of_the_margin_or_the_floor():
    wins, reasons = decide_realized(_evidence((0.80, 0.90), (0.80, 0.79)), min_roc_auc=0.7, margin=0.01)
    assert not wins and reasons == (
        "2024-02-28: shadow v7 ROC-AUC 0.7900 vs champion v3 0.8000 (-0.0100): the shadow is not better",
    )
    wins, reasons = decide_realized(_evidence((0.80, 0.805), (0.80, 0.805)), min_roc_auc=0.7, margin=0.01)
    assert not wins and "margin 0.0100" in reasons[0]
    wins, reasons = decide_realized(_evidence((0.60, 0.65), (0.60, 0.65)), min_roc_auc=0.7, margin=0.01)
    assert not wins and reasons == ("mean realized ROC-AUC 0.6500 against the floor 0.7000",)
