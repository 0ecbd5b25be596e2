"""`streamflow build` wall time per drop month, and how it grows with the number of users.

    .venv/bin/python bench/warehouse.py [--users 7043 100000] [--months 3] [--seed 1]

For each size: generate drops, ingest them all into an empty warehouse on a private embedded
PostgreSQL (temporary directory), then run `streamflow build --as-of M` once per month, oldest
first, as separate processes: the wall time a user waits for a month (start-up, parse, freshness,
quality gate, staging, snapshots, marts and their tests). Prints the time per month, the mean of
the months after the first (history in place, incremental marts), the time of a build with
nothing to do (the fixed part), and the growth factor of the mean from the smallest to the largest
size next to the growth of users (at most linear: the factor stays at or below the users ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator.run import generate
from streamflow.drops.ingest import ingest

STREAMFLOW = str(Path(sys.executable).with_name("streamflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    for name in ("home", "pg_port", "warehouse_db", "dbt_target_path"):
        env[f"STREAMFLOW_{name.upper()}"] = str(getattr(settings, name))
    return env


def build_month(settings: Settings, as_of: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [STREAMFLOW, "build", "--as-of", as_of], env=environment(settings), capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"streamflow build --as-of {as_of} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[7043, 100_000])
    ap.add_argument("--months", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.months < 2:
        ap.error("--months must be at least 2 (the first month also creates the tables)")

    with tempfile.TemporaryDirectory(prefix="streamflow-bench-") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)  # the server's OS user must reach its data directory below
        settings = Settings(_env_file=None, home=tmp / "home", pg_port=free_port(), database_url=None)
        server = EmbeddedPostgres(settings)
        server.up()
        means: dict[int, float] = {}
        try:
            for users in args.users:
                out = tmp / f"drops_{users}"
                t0 = time.perf_counter()
                generate(out, months=args.months, users=users, seed=args.seed)
                t_gen = time.perf_counter() - t0
                drops = sorted(out.glob("month_*"))
                db = f"bench_{users}"
                with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                    conn.execute(f"drop database if exists {db} with (force)")
                    conn.execute(f"create database {db}")
                s = settings.model_copy(update={"warehouse_db": db, "dbt_target_path": tmp / f"dbt_{users}" / "target"})
                t0 = time.perf_counter()
                ingest(s, drops)
                t_ingest = time.perf_counter() - t0
                rows = {}
                with psycopg.connect(server.url(db)) as conn:
                    for table in ("subscriptions", "sessions", "payments", "tickets"):
                        rows[table] = conn.execute(f"select count(*) from raw.{table}").fetchone()[0]
                print(
                    f"\n{users:,} users, {args.months} months: generated in {t_gen:.0f} s, ingested in "
                    f"{t_ingest:.0f} s; raw rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items())
                )
                times = []
                for drop in drops:
                    as_of = json.loads((drop / "manifest.json").read_text())["as_of"]
                    seconds = build_month(s, as_of)
                    times.append(seconds)
                    print(f"  streamflow build --as-of {as_of}: {seconds:6.1f} s")
                means[users] = sum(times[1:]) / len(times[1:])
                fixed = build_month(s, str(max(json.loads((d / "manifest.json").read_text())["as_of"] for d in drops)))
                print(
                    f"  mean of months 2..{args.months}: {means[users]:.1f} s per month; an up-to-date build "
                    f"(start-up, parse, freshness only): {fixed:.1f} s"
                )
        finally:
            server.down()

    sizes = sorted(means)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        growth = means[large] / means[small]
        ratio = large / small
        verdict = "at most linear" if growth <= ratio else "faster than linear"
        print(
            f"\ngrowth from {small:,} to {large:,} users ({ratio:.1f}x users): {growth:.2f}x time per month ({verdict})"
        )


if __name__ == "__main__":
    main()
