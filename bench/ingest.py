"""Ingestion throughput against a plain COPY of the same files, in the same run and server.

    .venv/bin/python bench/ingest.py [--users 7043 100000] [--months 3]

For each size: generate drops, then (a) `ingest` them into an empty warehouse (checks, sha256, typed
COPY into fresh partitions, id checks, attach, load log) and (b) a bare `COPY ... FROM STDIN` of the same
files into empty unpartitioned copies of the same tables. Prints rows/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

import psycopg

from streamflow.core.db import connect
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops import contract
from streamflow.drops.generator.run import generate
from streamflow.drops.ingest import ensure_raw_schema, ingest


def plain_copy(settings: Settings, drops: list[Path]) -> int:
    rows = 0
    with connect(settings) as conn:
        ensure_raw_schema(conn)
        conn.execute("drop schema if exists bench_copy cascade")
        conn.execute("create schema bench_copy")
        for spec in contract.FILES.values():
            conn.execute(f"create table bench_copy.{spec.table} (like raw.{spec.table})")
        conn.commit()
        for drop in drops:
            as_of = json.loads((drop / "manifest.json").read_text())["as_of"]
            for spec in contract.FILES.values():
                conn.execute(f"alter table bench_copy.{spec.table} alter column as_of set default '{as_of}'")
                cols = ", ".join(spec.header)
                with conn.cursor() as cur:
                    with (
                        cur.copy(
                            f"copy bench_copy.{spec.table} ({cols}) from stdin with (format csv, header true)"
                        ) as copy,
                        open(drop / spec.filename, "rb") as fh,
                    ):
                        while chunk := fh.read(1 << 20):
                            copy.write(chunk)
                    rows += cur.rowcount
            conn.commit()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, nargs="+", default=[7043, 100_000])
    ap.add_argument("--months", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        settings = Settings(_env_file=None, home=tmp / "home", pg_port=port, database_url=None)
        server = EmbeddedPostgres(settings)
        server.up()
        try:
            print(
                f"{'users':>9} {'rows':>11} {'ingest s':>9} {'ingest rows/s':>14} {'COPY s':>8} "
                f"{'COPY rows/s':>12} {'ratio':>6}"
            )
            for users in args.users:
                out = tmp / f"drops_{users}"
                generate(out, months=args.months, users=users, seed=1)
                drops = sorted(out.glob("month_*"))
                db = f"bench_{users}"
                with psycopg.connect(server.url("postgres"), autocommit=True) as c:
                    c.execute(f"drop database if exists {db} with (force)")
                    c.execute(f"create database {db}")
                s = settings.model_copy(update={"warehouse_db": db})
                t0 = time.perf_counter()
                results = ingest(s, drops)
                t_ingest = time.perf_counter() - t0
                n = sum(sum(r.rows.values()) for r in results)
                t0 = time.perf_counter()
                n_copy = plain_copy(s, drops)
                t_copy = time.perf_counter() - t0
                assert n == n_copy
                print(
                    f"{users:>9,} {n:>11,} {t_ingest:>9.2f} {n / t_ingest:>14,.0f} {t_copy:>8.2f} "
                    f"{n_copy / t_copy:>12,.0f} {t_copy / t_ingest:>6.2f}x"
                )
        finally:
            server.down()


if __name__ == "__main__":
    main()
