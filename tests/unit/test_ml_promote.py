"""The promotion rule: a pure decision from the challenger's and the champion's scores on the same rows."""

from __future__ import annotations

import pytest

from ml.promote import KEEP, PROMOTE, Policy, Scores, decide
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
