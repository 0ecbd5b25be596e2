"""Realized model performance on real services: the dbt marts model_performance and model_calibration equal an
independent scikit-learn and pandas computation from ml.churn_scores, ml.shadow_scores and marts.labels, and the
promotion gate with realized evidence reads them from a real MLflow registry.

Scores are written, not computed by a model: the champion's through the scorer's own writer, the shadow's with
SQL as `streamflow score` writes them. Probabilities are rounded to two decimals so that ties, which the rank
formulas must average, are frequent. The warehouse is a copy of the session's built one (labels of months 0
and 1); month 2 is scored but has no labels yet."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import mlflow
import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from ml.promote import promote
from ml.score import write_scores
from ml.tracking import configure, ensure_experiment, version_by_alias
from streamflow.core.db import connect, database_url, with_role
from streamflow.core.names import CHAMPION, SHADOW
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator import params
from streamflow.warehouse import runner
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

LABELLED = [params.as_of(0), params.as_of(1)]
UNLABELLED = params.as_of(2)
KEY = ["as_of", "role", "model_version"]
STRANGER = "0000-ZZZZZ"  # scored, never labelled: counted in n_scored only
# shadow versions: 2 ranks better than the champion (v1) in both months, 3 is shadow-scored in month 1 only,
# 4 ranks worse in both months
QUALITY = {1: 1.0, 2: 2.5, 3: 2.5, 4: 0.3}
SHADOW_MONTHS = {2: LABELLED, 3: LABELLED[1:], 4: LABELLED}


def probabilities(labels: pd.Series, quality: float, seed: int) -> np.ndarray:
    """Probabilities that rank churners higher the larger ``quality`` is, rounded to 2 decimals (many ties)."""
    rng = np.random.default_rng(seed)
    margin = quality * (labels.to_numpy(float) * 2 - 1) + rng.normal(0, 1.5, len(labels))
    return np.round(1 / (1 + np.exp(-margin)), 2)


def month_users(settings: Settings, month: date) -> pd.DataFrame:
    """Users active at ``month`` with their label (None for month 2) and monthly fee."""
    with connect(settings) as conn:
        cur = conn.execute(
            "select p.user_id, l.churn_label, p.monthly_fee from marts.subscriptions_profile p "
            "left join marts.labels l on l.user_id = p.user_id and l.period_start = p.as_of "
            "where p.as_of = (%s::timestamp at time zone 'UTC') order by p.user_id",
            (month,),
        )
        return pd.DataFrame(cur.fetchall(), columns=["user_id", "churn_label", "monthly_fee"])


def write_month(settings: Settings, month: date, seed: int) -> pd.DataFrame:
    """Champion (v1) scores for every active user and a stranger, shadow batch rows for the versions scored in
    shadow that month, and API shadow rows the marts must ignore. Returns every batch score written."""
    users = month_users(settings, month)
    known = users["churn_label"].fillna(False).astype(bool)
    now = datetime.now(UTC)
    champion = pd.DataFrame(
        {
            "user_id": [*users["user_id"], STRANGER],
            "as_of": month,
            "churn_probability": [*probabilities(known, QUALITY[1], seed), 0.5],
            "churn_label_predicted": False,
            "model_version": 1,
            "scored_at": now,
        }
    )
    write_scores(settings, month, champion)
    written = [champion.assign(role="champion")]
    with connect(settings) as conn:
        for version, months in SHADOW_MONTHS.items():
            if month not in months and month != UNLABELLED:
                continue
            p = probabilities(known, QUALITY[version], seed + version)
            both = list(zip(users["user_id"], champion["churn_probability"], p, strict=False))
            rows = [(u, month, 1, c, version, s, "batch", now) for u, c, s in both]
            api = [(u, month, 1, c, version, 1 - s, "api", now) for u, c, s in both[:50]]
            if version == 2:  # and a version scored by the API only
                api += [(u, month, 1, c, 9, 0.5, "api", now) for u, c, _ in both[:20]]
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into ml.shadow_scores (user_id, as_of, champion_version, champion_probability, "
                    "shadow_version, shadow_probability, source, scored_at) values (%s, %s, %s, %s, %s, %s, %s, %s)",
                    rows + api,
                )
            written.append(
                pd.DataFrame(
                    {"user_id": users["user_id"], "as_of": month, "churn_probability": p, "model_version": version}
                ).assign(role="shadow")
            )
    return pd.concat(written, ignore_index=True)[["as_of", "role", "model_version", "user_id", "churn_probability"]]


@pytest.fixture(scope="module")
def performance(warehouse_copy, mlflow_settings) -> tuple[Settings, pd.DataFrame]:
    """A copy of the built warehouse with scores for months 0, 1 (labelled) and 2 (not yet), and the ML marts
    built; its own registered model in the session's MLflow store."""
    settings = warehouse_copy("performance_warehouse").model_copy(
        update={
            "mlflow_db": mlflow_settings.mlflow_db,
            "mlflow_tracking_uri": None,
            "model_name": "performance_churn",
            "mlflow_experiment": "performance",
        }
    )
    EmbeddedPostgres(settings).up()  # the analyst role's grants in this copy (marts built later get them too)
    scores = pd.concat([write_month(settings, m, seed=i) for i, m in enumerate([*LABELLED, UNLABELLED])])
    selected = ["model_performance", "model_calibration"]
    res = runner.invoke(settings, ["build", "--select", *selected, "--vars", json.dumps({"as_of": str(UNLABELLED)})])
    assert res.success, res.exception
    return settings, scores


def labelled(settings: Settings, scores: pd.DataFrame) -> pd.DataFrame:
    with connect(settings) as conn:
        cur = conn.execute(
            "select l.user_id, (l.period_start at time zone 'UTC')::date, l.churn_label, p.monthly_fee "
            "from marts.labels l join marts.subscriptions_profile p "
            "on p.user_id = l.user_id and p.as_of = l.period_start"
        )
        labels = pd.DataFrame(cur.fetchall(), columns=["user_id", "as_of", "churn_label", "monthly_fee"])
    out = scores.merge(labels, on=["user_id", "as_of"], how="inner")
    # the deciles of the marts: by probability, highest first, ties by user_id; sizes differ by at most one
    out = out.sort_values([*KEY, "churn_probability", "user_id"], ascending=[True, True, True, False, True])
    out["risk_decile"] = 0
    for _, index in out.groupby(KEY).groups.items():
        for decile, part in enumerate(np.array_split(np.asarray(index), 10), start=1):
            out.loc[part, "risk_decile"] = decile
    return out.reset_index(drop=True)


def reference(settings: Settings, scores: pd.DataFrame) -> pd.DataFrame:
    rows = []
    rated = labelled(settings, scores)
    for (as_of, role, version), g in rated.groupby(KEY):
        y, p, fee = g["churn_label"].astype(bool), g["churn_probability"], g["monthly_fee"]
        top = y[g["risk_decile"] == 1].mean()
        rows.append(
            {
                "as_of": as_of,
                "role": role,
                "model_version": version,
                "n_scored": int(
                    ((scores.as_of == as_of) & (scores.role == role) & (scores.model_version == version)).sum()
                ),
                "n_labelled": len(g),
                "n_churned": int(y.sum()),
                "churn_rate": y.mean(),
                "mean_predicted": p.mean(),
                "roc_auc": roc_auc_score(y, p),
                "pr_auc": average_precision_score(y, p),
                "brier": brier_score_loss(y, p),
                "top_decile_churn_rate": top,
                "top_decile_lift": top / y.mean(),
                "revenue_at_risk": (p * fee).sum(),
                "revenue_lost": fee[y].sum(),
            }
        )
    return pd.DataFrame(rows).sort_values(KEY).reset_index(drop=True)


def mart(settings: Settings, name: str) -> pd.DataFrame:
    with connect(settings) as conn:
        cur = conn.execute(f"select * from marts.{name}")
        frame = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    frame["as_of"] = [ts.astimezone(UTC).date() for ts in frame["as_of"]]
    return frame


def test_model_performance_equals_scikit_learn_on_the_labelled_months_for_champion_and_shadows(performance):
    settings, scores = performance
    expected = reference(settings, scores)
    got = mart(settings, "model_performance").sort_values(KEY).reset_index(drop=True)
    # months 0 and 1 only (month 2 has no labels yet); the champion, shadows 2 and 4 in both, 3 in month 1;
    # API-only shadow rows are no evidence
    assert list(zip(got.as_of, got.role, got.model_version, strict=True)) == [
        (m, r, v)
        for m in LABELLED
        for r, v in [("champion", 1), ("shadow", 2), ("shadow", 3), ("shadow", 4)]
        if not (v == 3 and m == LABELLED[0])
    ]
    assert list(got.columns) == list(expected.columns)
    for column in ("as_of", "role", "model_version", "n_scored", "n_labelled", "n_churned"):
        assert list(got[column]) == list(expected[column]), column
    champion = got[got.role == "champion"]
    assert (champion.n_scored == champion.n_labelled + 1).all()  # the stranger is scored, never labelled
    for column in expected.columns[6:]:
        np.testing.assert_allclose(
            got[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-9, err_msg=column
        )
    by_version = got.groupby("model_version").roc_auc.mean()
    assert by_version[2] > by_version[1] > by_version[4] > 0.5
    assert (got.top_decile_lift > 1).all() and (got.revenue_lost > 0).all()


def test_model_calibration_equals_the_pandas_deciles(performance):
    settings, scores = performance
    rated = labelled(settings, scores)
    expected = (
        rated.groupby([*KEY, "risk_decile"])
        .agg(
            n_users=("user_id", "size"),
            n_churned=("churn_label", "sum"),
            mean_predicted=("churn_probability", "mean"),
            realized_churn_rate=("churn_label", "mean"),
            min_predicted=("churn_probability", "min"),
            max_predicted=("churn_probability", "max"),
        )
        .reset_index()
    )
    got = mart(settings, "model_calibration").sort_values([*KEY, "risk_decile"]).reset_index(drop=True)
    assert len(got) == len(expected) == 7 * 10
    for column in ("as_of", "role", "model_version", "risk_decile", "n_users", "n_churned"):
        assert list(got[column]) == [int(v) if isinstance(v, np.integer | bool) else v for v in expected[column]], (
            column
        )
    for column in ("mean_predicted", "realized_churn_rate", "min_predicted", "max_predicted"):
        np.testing.assert_allclose(
            got[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-9, err_msg=column
        )
    per_model = got.groupby(KEY)
    assert (per_model.n_users.max() - per_model.n_users.min() <= 1).all()  # deciles of equal size
    assert (got.sort_values([*KEY, "risk_decile"]).groupby(KEY).mean_predicted.is_monotonic_decreasing).all()


def test_the_dashboard_queries_run_as_analyst_and_show_the_marts(performance):
    """The SQL of the Grafana model dashboard, run as the read-only role its data source logs in as."""
    settings, _ = performance
    dashboard = json.loads((ROOT / "ops/grafana/dashboards/model.json").read_text())
    queries = {
        panel["title"]: target["rawSql"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if target["datasource"]["uid"] == "warehouse"
    }
    assert len(queries) == 4
    with psycopg.connect(database_url(with_role(settings, "analyst"))) as conn:
        assert conn.execute("select current_user").fetchone() == ("analyst",)
        rows = {title: conn.execute(sql).fetchall() for title, sql in queries.items()}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select 1 from ml.churn_scores limit 1")
    perf = mart(settings, "model_performance")
    assert len(rows["Realized performance per month and model version"]) == len(perf)
    assert [r[0] for r in rows["Realized ROC-AUC per month (champion vs best shadow)"]] == ["2024-01", "2024-02"]
    assert len(rows["Calibration table by risk decile (last labelled month)"]) == 4 * 10  # champion and 3 shadows
    assert [r[0] for r in rows["Calibration by risk decile (champion, last labelled month)"]] == [
        str(d) for d in range(1, 11)
    ]


# ---------------------------------------------------------------------------------------
# the promotion gate on realized evidence
# ---------------------------------------------------------------------------------------
def register(settings: Settings, count: int) -> None:
    """Versions 1..count of the settings' model in the real registry, each from a run of its own (the gate on
    realized evidence reads the mart, never the model files)."""
    client = configure(settings)
    experiment = ensure_experiment(client, settings, settings.mlflow_experiment)
    client.create_registered_model(settings.model_name)
    for i in range(1, count + 1):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("stand_in", i)
        mv = client.create_model_version(settings.model_name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        assert str(mv.version) == str(i)
    client.set_registered_model_alias(settings.model_name, CHAMPION, "1")


def alias(settings: Settings, name: str) -> str | None:
    mv = version_by_alias(configure(settings), settings.model_name, name)
    return str(mv.version) if mv is not None else None


def test_the_gate_on_realized_evidence_promotes_only_a_shadow_that_beat_the_champion_on_the_last_k_months(
    performance,
):
    settings, _ = performance
    settings = settings.model_copy(update={"promotion_evidence": "realized", "promotion_min_roc_auc": 0.5})
    register(settings, 4)
    client = configure(settings)
    perf = mart(settings, "model_performance").set_index(KEY)
    auc = {(m, v): perf.loc[(m, "champion" if v == 1 else "shadow", v), "roc_auc"] for m, _, v in perf.index}

    def tags(version: str) -> dict:
        return client.get_model_version(settings.model_name, version).tags

    # more months asked than are labelled: not enough evidence, nothing moves; the numbers there are are tagged
    client.set_registered_model_alias(settings.model_name, SHADOW, "2")
    out = promote(settings.model_copy(update={"promotion_realized_months": 3})).as_dict()
    assert out["decision"] == "keep" and out["evidence"] == "realized" and out["challenger_version"] == "2"
    assert out["reasons"] == [
        "not enough realized evidence: marts.model_performance holds 2 labelled month(s), 3 needed "
        "(STREAMFLOW_PROMOTION_REALIZED_MONTHS)"
    ]
    assert alias(settings, CHAMPION) == "1" and alias(settings, SHADOW) == "2"
    assert tags("2")["promotion.decision"] == "keep" and tags("2")["promotion.evidence"] == "realized"
    assert float(tags("2")["promotion.challenger_roc_auc"]) == pytest.approx(np.mean([auc[(m, 2)] for m in LABELLED]))

    # a shadow scored in one of the last two labelled months only
    client.set_registered_model_alias(settings.model_name, SHADOW, "3")
    result = promote(settings)
    assert not result.decision.promote and alias(settings, CHAMPION) == "1"
    (reason,) = result.decision.reasons
    assert reason.startswith("not enough realized evidence: version 3 has no realized ROC-AUC")
    assert LABELLED[0].isoformat() in reason and LABELLED[1].isoformat() not in reason

    # a shadow that ranked worse: kept, with the numbers of each month
    client.set_registered_model_alias(settings.model_name, SHADOW, "4")
    result = promote(settings)
    assert not result.decision.promote and alias(settings, CHAMPION) == "1" and alias(settings, SHADOW) == "4"
    assert all("the shadow is not better" in r for r in result.decision.reasons[:2])
    assert result.challenger_scores.roc_auc == pytest.approx(np.mean([auc[(m, 4)] for m in LABELLED]))

    # a shadow that ranked better in both months: promoted, the shadow alias freed, the numbers tagged
    client.set_registered_model_alias(settings.model_name, SHADOW, "2")
    result = promote(settings)
    assert result.decision.promote and result.champion_before == "1" and result.champion_after == "2"
    assert alias(settings, CHAMPION) == "2" and alias(settings, SHADOW) is None
    shadow_mean, champion_mean = (np.mean([auc[(m, v)] for m in LABELLED]) for v in (2, 1))
    assert result.challenger_scores.roc_auc == pytest.approx(shadow_mean)
    assert result.champion_scores.roc_auc == pytest.approx(champion_mean)
    assert [m["as_of"] for m in result.realized["months"]] == [m.isoformat() for m in LABELLED]
    for version in ("1", "2"):
        t = tags(version)
        assert t["promotion.decision"] == "promote" and t["promotion.evidence"] == "realized"
        assert t["promotion.challenger"] == "2" and t["promotion.champion"] == "1"
        assert float(t["promotion.challenger_roc_auc"]) == pytest.approx(shadow_mean, abs=1e-6)
        assert float(t["promotion.champion_roc_auc"]) == pytest.approx(champion_mean, abs=1e-6)
        assert t["promotion.realized_months"] == ",".join(m.isoformat() for m in LABELLED)
    run = client.get_run(client.get_model_version(settings.model_name, "2").run_id)
    assert run.data.tags["promotion.decision"] == "promote"
    assert f"{LABELLED[1]}: shadow v2 ROC-AUC {auc[(LABELLED[1], 2)]:.4f}" in run.data.tags["promotion.reasons"]
