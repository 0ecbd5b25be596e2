"""Drop generator speed and memory: wall time, rows/s, MB/s and peak RSS per size.

    .venv/bin/python bench/generate.py                 # 7,043 x 4 months and 100,000 x 3 months
    .venv/bin/python bench/generate.py --million       # adds 1,000,000 users x 1 month
    .venv/bin/python bench/generate.py --size 20000x6  # any USERSxMONTHS

Each size runs in a fresh interpreter, so its peak RSS (getrusage) is its own; the time includes
loading the real customers and fitting the hazard, not the interpreter's start-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamflow.drops.generator.run import generate

ROOT = Path(__file__).resolve().parent.parent


def run_one(users: int, months: int, out: Path) -> dict:
    t0 = time.perf_counter()
    generate(out, months=months, users=users, seed=1)
    seconds = time.perf_counter() - t0
    rows = 0
    for manifest in sorted(out.glob("month_*/manifest.json")):
        rows += sum(f["rows"] for f in json.loads(manifest.read_text())["files"].values())
    size = sum(p.stat().st_size for p in out.rglob("*.csv"))
    return {
        "users": users,
        "months": months,
        "seconds": seconds,
        "rows": rows,
        "bytes": size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--million", action="store_true", help="also run 1,000,000 users x 1 month")
    ap.add_argument("--size", action="append", default=[], metavar="USERSxMONTHS", help="extra size to run")
    ap.add_argument("--one", metavar="USERSxMONTHS", help=argparse.SUPPRESS)  # child process mode
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        users, months = (int(v) for v in args.one.split("x"))
        print(json.dumps(run_one(users, months, args.out)))
        return

    sizes = ["7043x4", "100000x3", *(["1000000x1"] if args.million else []), *args.size]
    print(
        f"{'users':>9} {'months':>6} {'seconds':>8} {'rows':>11} {'rows/s':>10} {'MB':>7} {'MB/s':>6} "
        f"{'peak RSS MB':>11}"
    )
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", size, "--out", str(Path(tmp) / "drops")],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if proc.returncode != 0:
                sys.exit(f"{size} failed:\n{proc.stderr}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        mb = r["bytes"] / 1e6
        print(
            f"{r['users']:>9,} {r['months']:>6} {r['seconds']:>8.1f} {r['rows']:>11,} "
            f"{r['rows'] / r['seconds']:>10,.0f} {mb:>7,.0f} {mb / r['seconds']:>6.1f} {r['peak_rss_mb']:>11,.0f}"
        )


if __name__ == "__main__":
    main()
