"""Model quality against the oracle, and training / log-and-register wall times, on the real path.

    .venv/bin/python bench/ml_quality.py [--users 7043] [--months 6] [--seed 42] [--repeat 2]

Generates the drops, then ingest -> dbt build -> Feast apply on a temporary embedded PostgreSQL, and
for every month M from 2 on: `train(settings, M)` (features from Feast, out-of-time validation) and
`promote(settings)`. Prints, per training run, the validation metrics, the fit time of all model
families and the time to log and register in MLflow; then `evaluate` of the final champion: ROC-AUC
per labelled period next to the oracle's (the generator's true probabilities) and their ratio.
With --repeat N each month is trained N times: the metrics must be identical (determinism).
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

import psycopg

from ml.evaluate import evaluate
from ml.promote import promote
from ml.train import train
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator.params import as_of
from streamflow.drops.generator.run import generate
from streamflow.drops.ingest import ingest
from streamflow.features.apply import apply
from streamflow.warehouse.build import build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=7043)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=1, help="trainings per month (determinism check)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()

    figures: dict = {"users": args.users, "months": args.months, "seed": args.seed, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = Settings(_env_file=None, home=tmp / "home", pg_port=_free_port(), database_url=None)
        server = EmbeddedPostgres(base)
        server.up()
        try:
            with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                for db in ("bench_ml_wh", "bench_ml_mlflow", "bench_ml_feast"):
                    conn.execute(f"create database {db}")
            settings = base.model_copy(
                update={
                    "warehouse_db": "bench_ml_wh",
                    "mlflow_db": "bench_ml_mlflow",
                    "feast_registry_db": "bench_ml_feast",
                }
            )
            drops = tmp / "drops"
            _prepare(settings, args, drops, figures)
            _train_months(settings, args, figures)
            _evaluate(settings, args, drops, figures)
        finally:
            server.down()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def _prepare(settings: Settings, args: argparse.Namespace, drops: Path, figures: dict) -> None:
    """Generate the drops, ingest, build and register the features."""
    t0 = time.perf_counter()
    generate(drops, args.months, args.users, args.seed)
    ingest(settings, sorted(drops.glob("month_*")))
    build(settings)
    apply(settings)
    figures["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"prepared {args.months} months x {args.users:,} users in {figures['prepare_seconds']} s")


def _train_months(settings: Settings, args: argparse.Namespace, figures: dict) -> None:
    """Train and promote at every month from 2 on (``--repeat`` times each: the metrics must not change)."""
    print(
        f"{'as_of':<11} {'family':<23} {'rows':>6} {'ROC-AUC':>8} {'PR-AUC':>7} {'logloss':>8} "
        f"{'F1':>6} {'data s':>7} {'train s':>8} {'log+reg s':>9}  decision"
    )
    for month in range(2, args.months):
        seen = None
        for _ in range(args.repeat):
            r = train(settings, as_of(month))
            p = promote(settings)
            if seen is not None and seen != r.metrics:
                raise SystemExit(f"training at {as_of(month)} is not deterministic: {seen} != {r.metrics}")
            seen = r.metrics
            m, t = r.metrics, r.timings
            print(
                f"{as_of(month).isoformat():<11} {r.family:<23} {r.lineage['rows']['train']:>6} "
                f"{m['roc_auc']:>8.4f} {m['pr_auc']:>7.4f} {m['log_loss']:>8.4f} {m['f1']:>6.3f} "
                f"{t['data_seconds']:>7.1f} {t['train_seconds']:>8.1f} {t['log_register_seconds']:>9.1f}  "
                f"{p.decision.action} v{r.model_version}"
            )
            figures["runs"].append(
                {
                    "as_of": as_of(month).isoformat(),
                    "version": r.model_version,
                    "family": r.family,
                    "metrics": m,
                    "candidates": r.candidates,
                    "timings": t,
                    "decision": p.decision.action,
                }
            )


def _evaluate(settings: Settings, args: argparse.Namespace, drops: Path, figures: dict) -> None:
    """The final champion against the oracle, period by period."""
    ev = evaluate(settings, as_of(args.months), oracle_dir=drops)
    print(f"\nchampion v{ev.model_version} against the oracle")
    print(f"{'period':<11} {'role':<10} {'rows':>6} {'model':>7} {'oracle':>7} {'ratio':>6}")
    for q in ev.periods:
        print(
            f"{q.period.isoformat():<11} {q.role:<10} {q.rows:>6} {q.model_roc_auc:>7.4f} "
            f"{q.oracle_roc_auc:>7.4f} {q.ratio:>6.3f}"
        )
    figures["evaluation"] = ev.as_dict()


if __name__ == "__main__":
    main()
