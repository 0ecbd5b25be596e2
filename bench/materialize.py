"""Materialization against a plain INSERT ... SELECT of the same rows, in the same run, with its peak memory.

    .venv/bin/python bench/materialize.py [--users 7043] [--months 3] [--chunk-rows 50000] [--feast]

Builds a warehouse first (generate -> ingest -> dbt build -> features apply) on a private embedded
PostgreSQL in a temporary directory, then materializes the newest month (first run: window as_of - 35 days
.. as_of, the four mart views) in a child process of its own, so its peak resident memory (ru_maxrss) is the
materialization's alone, and afterwards runs a plain INSERT ... SELECT of the same rows (each user's latest
row in the window, one row per feature) into empty tables of the same shape as the online tables (same
columns and indexes). Rows = users x views written. ``--feast`` also times Feast's own
``FeatureStore.materialize`` on a second Feast project (its writer, whole window in memory), for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from _reference import insert_select

from streamflow.core.env import settings_environment
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator.run import generate
from streamflow.drops.ingest import ingest
from streamflow.features import apply
from streamflow.warehouse.build import build

sys.path.insert(0, str(Path(__file__).parent))
from features import free_port  # noqa: E402 - the sibling benchmark's helper

CHILD = """
import json, resource, sys, time
from datetime import date
from streamflow.core.settings import Settings
from streamflow.features import materialize, store
as_of, mode = date.fromisoformat(sys.argv[1]), sys.argv[2]
settings = Settings()
t0 = time.perf_counter()
if mode == "bulk":
    r = materialize.materialize(settings, as_of)
    out = {"rows": sum(r.written.values()), "write_s": r.feast_seconds}
else:  # Feast's own materialization of the same window
    fs = store.feature_store(settings)
    end = store.business_timestamp(as_of)
    start = end - fs.get_feature_view("subscriptions_profile").ttl
    with store._silenced():
        fs.materialize(start_date=start, end_date=end, feature_views=list(materialize.FEATURE_MARTS))
    out = {"write_s": time.perf_counter() - t0}
out["total_s"] = time.perf_counter() - t0
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run_child(settings: Settings, as_of: date, mode: str, cwd: Path) -> dict:
    """One materialization in a fresh interpreter; its figures as JSON (peak memory of that process only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    env.update(settings_environment(settings))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, as_of.isoformat(), mode],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"materialization failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=7043)
    ap.add_argument("--months", type=int, default=3)
    ap.add_argument("--chunk-rows", type=int, default=Settings.model_fields["materialize_chunk_rows"].default)
    ap.add_argument("--feast", action="store_true", help="also time Feast's own materialize, for reference")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="streamflow-bench-") as tmp:
        tmp = Path(tmp)
        settings = Settings(
            _env_file=None,
            home=tmp / "home",
            pg_port=free_port(),
            database_url=None,
            dbt_target_path=tmp / "target",
            feast_project="bench",
            materialize_chunk_rows=args.chunk_rows,
        )
        server = EmbeddedPostgres(settings)
        server.up()
        try:
            t0 = time.perf_counter()
            drops = generate(tmp / "drops", months=args.months, users=args.users, seed=42)
            ingest(settings, sorted((tmp / "drops").glob("month_*")))
            build(settings)
            apply.apply(settings)
            as_of = drops.months[-1].as_of
            print(f"warehouse: {args.users:,} users x {args.months} months built in {time.perf_counter() - t0:.0f} s")

            bulk = run_child(settings, as_of, "bulk", tmp)
            sql_s, sql_users, values = insert_select(settings, as_of)
            rows = bulk["rows"]
            assert rows == sql_users, (rows, sql_users)
            print(f"\nmaterialization of {as_of}: {rows:,} user x view rows ({values:,} feature values)")
            print(f"{'path':<34} {'s':>8} {'rows/s':>10} {'peak MB':>8}")
            print(
                f"{'streamflow materialize (write)':<34} {bulk['write_s']:>8.2f} {rows / bulk['write_s']:>10,.0f} "
                f"{bulk['peak_mb']:>8.0f}  (step total with leaver removal {bulk['total_s']:.2f} s)"
            )
            print(f"{'plain INSERT ... SELECT':<34} {sql_s:>8.2f} {rows / sql_s:>10,.0f} {'':>8}")
            if args.feast:
                other = settings.model_copy(update={"feast_project": "bench_feast"})
                apply.apply(other)
                feast = run_child(other, as_of, "feast", tmp)
                print(
                    f"{'Feast store.materialize':<34} {feast['write_s']:>8.2f} {rows / feast['write_s']:>10,.0f} "
                    f"{feast['peak_mb']:>8.0f}"
                )
            print(f"\nratio (rows/s, streamflow / INSERT ... SELECT): {sql_s / bulk['write_s']:.2f}x")
        finally:
            server.down()


if __name__ == "__main__":
    main()
