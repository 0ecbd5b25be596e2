"""Every step of a month's run, at several sizes, in one run: wall time and peak memory per step.

    .venv/bin/python bench/scale.py [--users 7043 --users 100000 --users 1000000] [--out bench/results/scale.json]

For each size, on a private embedded PostgreSQL in a temporary directory: `streamflow generate --months 2`,
then the first month set up (ingest, build, features apply, materialize), then the second month's steps, each
as its own `streamflow` process: ingest, build, features apply, features materialize, train, promote, score.
Per step: wall time, the peak resident memory of the `streamflow` process (its rusage from wait4: exact, the
process alone), and the highest total memory of PostgreSQL's processes sampled every second while the step ran
(proportional set size, so shared buffers are counted once). After the month: the database's size, and a plain
INSERT ... SELECT of the same rows materialization wrote (bench/_reference.py), the reference its rows/s is
held to. Printed: a table per step with time and peak memory at each size and each step's growth factor between
consecutive sizes; the month's total against the 15-minute target; each step against the 4 GB target;
materialization rows/s against the reference (0.8x target). JSON goes to ``--out``.

Run it on an otherwise idle machine: the figures are wall times. 1,000,000 users take about 20 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil
from _reference import insert_select
from _stack import free_port, settings_env

from streamflow.core.db import connect
from streamflow.core.settings import PROJECT_ROOT, Settings
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator.params import as_of as month_end

STREAMFLOW = str(Path(sys.executable).with_name("streamflow"))
MONTH_TARGET_S = 15 * 60
STEP_TARGET_MB = 4 * 1024
MATERIALIZE_TARGET = 0.8
STEPS = ("ingest", "build", "features apply", "materialize", "train", "promote", "score")


class PostgresMemory:
    """The highest total memory (PSS, else RSS) of the server's processes while a step runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.peak_mb, self._stop = settings, 0.0, threading.Event()

    def _total_mb(self) -> float:
        pid_file = self.settings.home / "pgdata" / "postmaster.pid"
        try:
            root = psutil.Process(int(pid_file.read_text().split()[0]))
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                    total += getattr(info, "pss", info.rss)
                except psutil.Error:
                    continue
            return total / 2**20
        except (OSError, ValueError, psutil.Error):
            return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._total_mb())
            self._stop.wait(1.0)

    def __enter__(self) -> PostgresMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def step(settings: Settings, *args: str, cwd: Path) -> dict:
    """One `streamflow` command in its own process: wall time, its peak RSS, PostgreSQL's peak, its JSON."""
    started = time.perf_counter()
    with PostgresMemory(settings) as pg:
        proc = subprocess.Popen(
            [STREAMFLOW, *args],
            env=settings_env(settings),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out_box: dict[str, str] = {}
        reader = threading.Thread(target=lambda: out_box.update(out=proc.stdout.read(), err=proc.stderr.read()))
        reader.start()
        _, status, usage = os.wait4(proc.pid, 0)
        reader.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"`streamflow {' '.join(args)}` failed ({proc.returncode}):\n{out_box['err'][-4000:]}")
    result = {
        "seconds": round(seconds, 2),
        "peak_mb": round(usage.ru_maxrss / 1024, 1),
        "pg_peak_mb": round(pg.peak_mb, 1),
    }
    if "--json" in args:
        result["output"] = json.loads(out_box["out"].strip().splitlines()[-1])
    return result


def one_size(users: int, root: Path) -> dict:
    """The two-month run at ``users``; the second month's steps measured."""
    home = root / f"users_{users}"
    settings = Settings(
        _env_file=None,
        home=home,
        project_dir=PROJECT_ROOT,
        pg_port=free_port(),
        database_url=None,
        dbt_target_path=home / "dbt" / "target",
    )
    server = EmbeddedPostgres(settings)
    server.up()
    try:
        drops = home / "drops"
        first, second = month_end(0), month_end(1)
        out: dict = {"users": users, "month": second.isoformat()}
        out["generate"] = step(
            settings, "generate", "--out", str(drops), "--months", "2", "--users", str(users), cwd=home
        )
        print(f"  generate: {out['generate']['seconds']:.0f} s", flush=True)
        setup = time.perf_counter()  # the first month, so the second one runs as every later month does
        step(settings, "ingest", str(drops / "month_000"), cwd=home)
        step(settings, "build", cwd=home)
        step(settings, "features", "apply", cwd=home)
        step(settings, "features", "materialize", "--as-of", first.isoformat(), cwd=home)
        out["setup_seconds"] = round(time.perf_counter() - setup, 1)
        print(f"  first month set up in {out['setup_seconds']:.0f} s", flush=True)
        commands = {
            "ingest": ("ingest", str(drops / "month_001")),
            "build": ("build",),
            "features apply": ("features", "apply"),
            "materialize": ("features", "materialize", "--as-of", second.isoformat(), "--json"),
            "train": ("train", "--as-of", second.isoformat(), "--json"),
            "promote": ("promote", "--json"),
            "score": ("score", "--as-of", second.isoformat(), "--json"),
        }
        out["steps"] = {}
        for name, args in commands.items():
            out["steps"][name] = step(settings, *args, cwd=home)
            s = out["steps"][name]
            print(
                f"  {name}: {s['seconds']:.1f} s, {s['peak_mb']:.0f} MB (PostgreSQL {s['pg_peak_mb']:.0f} MB)",
                flush=True,
            )
        out["reference"] = materialize_reference(settings, second, out["steps"]["materialize"])
        with connect(settings) as conn:
            out["database_mb"] = round(
                conn.execute("select pg_database_size(current_database())").fetchone()[0] / 2**20, 1
            )
        return out
    finally:
        server.down()


def materialize_reference(settings: Settings, as_of: date, materialized: dict) -> dict:
    """Materialization's write rows/s (users x views / its write seconds) against INSERT ... SELECT's, same rows."""
    result = materialized.pop("output")
    rows = sum(result["written"].values())
    sql_s, sql_rows, values = insert_select(settings, as_of)
    ours = result["rows_per_second"]
    return {
        "rows": rows,
        "feature_values": values,
        "streamflow_rows_per_s": round(ours, 1),
        "insert_select_seconds": round(sql_s, 2),
        "insert_select_rows_per_s": round(sql_rows / sql_s, 1),
        "ratio": round(ours / (sql_rows / sql_s), 3),
    }


def report(results: list[dict]) -> None:
    """The tables: per step at each size with growth factors, then the targets."""
    sizes = [r["users"] for r in results]
    head = f"{'step':<16}" + "".join(f"{f'{n:,} users':>26}" for n in sizes)
    head += "".join(f"{f'x{b / a:.0f} users':>18}" for a, b in zip(sizes, sizes[1:], strict=False))
    print("\nper step: seconds / peak MB of the streamflow process [PostgreSQL's peak MB]; growth: x time, x memory")
    print(head)
    for name in STEPS:
        cells = [r["steps"][name] for r in results]
        line = f"{name:<16}"
        for c in cells:
            cell = f"{c['seconds']:.1f} s / {c['peak_mb']:.0f} [{c['pg_peak_mb']:.0f}]"
            line += f"{cell:>26}"
        for a, b in zip(cells, cells[1:], strict=False):
            growth = f"x{b['seconds'] / a['seconds']:.1f} / x{b['peak_mb'] / a['peak_mb']:.1f}"
            line += f"{growth:>18}"
        print(line)
    print("\ntargets")
    for r in results:
        total = sum(s["seconds"] for s in r["steps"].values())
        r["month_seconds"] = round(total, 1)
        worst = max(r["steps"].items(), key=lambda kv: kv[1]["peak_mb"])
        ref = r["reference"]
        verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
        print(
            f"{r['users']:>10,} users: month {total:.0f} s of {MONTH_TARGET_S} s [{verdict(total <= MONTH_TARGET_S)}]; "
            f"largest step memory {worst[0]} {worst[1]['peak_mb']:.0f} MB of {STEP_TARGET_MB} MB "
            f"[{verdict(worst[1]['peak_mb'] <= STEP_TARGET_MB)}]; materialization {ref['streamflow_rows_per_s']:,.0f} "
            f"rows/s = {ref['ratio']:.2f}x INSERT ... SELECT ({ref['insert_select_rows_per_s']:,.0f} rows/s) "
            f"[{verdict(ref['ratio'] >= MATERIALIZE_TARGET)}]; database {r['database_mb']:.0f} MB"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, action="append", help="A size (repeat); default 7043 100000 1000000.")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "scale.json")
    ap.add_argument("--keep", type=Path, help="Work in this folder and keep it (servers stopped), e.g. to read logs.")
    args = ap.parse_args()
    sizes = sorted(set(args.users or [7043, 100_000, 1_000_000]))
    results = []
    with tempfile.TemporaryDirectory(prefix="streamflow-scale-") as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o755)  # the embedded server may run as its own OS user: it must reach its home
        for users in sizes:
            print(f"\n{users:,} users", flush=True)
            started = time.perf_counter()
            results.append(one_size(users, Path(tmp)))
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    report(results)
    machine = {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "sizes": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
