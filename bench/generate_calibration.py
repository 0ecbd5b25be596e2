"""What the generated drops look like to a model: churn rate, oracle ROC-AUC and a baseline per period.

    .venv/bin/python bench/generate_calibration.py [--users 7043] [--months 6] [--seed 1] [--drift-at K]

Generates drops into a temporary folder, builds the platform's feature windows from the files
(watch_hours_30d, avg_session_mins_7d, unique_devices_30d, skips_7d, rebuffer_events_7d,
failed_payments_90d, support_tickets_90d, ticket_avg_resolution_hrs_90d + the subscription profile),
then for each period P prints the churn rate of its labels, the oracle's ROC-AUC, and the ROC-AUC of
a logistic regression trained on period P-1 (out of time), with and without the usage features.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streamflow.drops import contract
from streamflow.drops.generator.params import ORACLE_DIR, as_of, drop_name, oracle_name
from streamflow.drops.generator.run import generate

USAGE = [
    "watch_hours_30d",
    "avg_session_mins_7d",
    "unique_devices_30d",
    "skips_7d",
    "rebuffer_events_7d",
    "failed_payments_90d",
    "support_tickets_90d",
    "ticket_avg_resolution_hrs_90d",
]


def load(out: Path, month: int, name: str, **kw) -> pd.DataFrame:
    return pd.read_csv(out / drop_name(month) / contract.FILES[name].filename, **kw)


def features(out: Path, month: int) -> pd.DataFrame:
    """Feature windows as of the month end D: events in [D + 1 day - N days, D + 1 day)."""
    end = pd.Timestamp(as_of(month) + timedelta(days=1), tz="UTC")
    months = range(max(0, month - 3), month + 1)
    sess = pd.concat([load(out, k, "sessions", parse_dates=["started_at"]) for k in months])
    pay = pd.concat([load(out, k, "payments", parse_dates=["attempted_at"]) for k in months])
    tix = pd.concat([load(out, k, "tickets", parse_dates=["opened_at", "resolved_at"]) for k in months])

    def window(df, col, days):
        return df[(df[col] >= end - pd.Timedelta(days=days)) & (df[col] < end)]

    s30, s7 = window(sess, "started_at", 30), window(sess, "started_at", 7)
    p90, t90 = window(pay, "attempted_at", 90), window(tix, "opened_at", 90)
    x = load(out, month, "subscriptions").set_index("user_id")
    x["watch_hours_30d"] = s30.groupby("user_id").minutes.sum() / 60
    x["avg_session_mins_7d"] = s7.groupby("user_id").minutes.mean()
    x["unique_devices_30d"] = s30.groupby("user_id").device_id.nunique()
    x["skips_7d"] = s7.groupby("user_id").skips.sum()
    x["rebuffer_events_7d"] = s7.groupby("user_id").rebuffer_events.sum()
    x["failed_payments_90d"] = p90[p90.status == "failed"].groupby("user_id").size()
    x["support_tickets_90d"] = t90.groupby("user_id").size()
    hours = (t90.resolved_at - t90.opened_at).dt.total_seconds() / 3600
    x["ticket_avg_resolution_hrs_90d"] = hours.groupby(t90.user_id).mean()
    x[USAGE] = x[USAGE].fillna(0)
    for col in ("watch_hours_30d", "avg_session_mins_7d", "rebuffer_events_7d", "months_active"):
        x[col] = np.log1p(x[col])
    return pd.get_dummies(x, columns=["contract_type", "payment_method", "net_service"], dtype=float).astype(float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=7043)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--drift-at", type=int, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out, args.months, args.users, args.seed, args.drift_at)
        print(
            f"{'period':>10} {'active':>7} {'churn':>6} {'oracle AUC':>10} {'model AUC':>9} {'ratio':>6} "
            f"{'profile-only':>12} {'ratio':>6}"
        )
        data = {}
        for period in range(args.months - 1):
            x = features(out, period)
            y = load(out, period + 1, "labels").set_index("user_id").churn_label.astype(bool).loc[x.index]
            oracle = pd.read_csv(out / ORACLE_DIR / oracle_name(period)).set_index("user_id").churn_probability
            data[period] = x, y
            oracle_auc = roc_auc_score(y, oracle.loc[x.index])
            line = f"{as_of(period).isoformat():>10} {len(x):>7,} {y.mean():>6.1%} {oracle_auc:>10.4f}"
            if period > 0:
                (xt, yt), cols = data[period - 1], sorted(set(data[period - 1][0].columns) & set(x.columns))
                aucs = []
                for use in (cols, [c for c in cols if c not in USAGE]):
                    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(xt[use], yt)
                    aucs.append(roc_auc_score(y, model.predict_proba(x[use])[:, 1]))
                line += f" {aucs[0]:>9.4f} {aucs[0] / oracle_auc:>6.3f} {aucs[1]:>12.4f} {aucs[1] / oracle_auc:>6.3f}"
            print(line)


if __name__ == "__main__":
    main()
