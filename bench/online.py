"""Online serving: our API's POST /predict against Feast's own feature server, same run, same machine, same store.

    .venv/bin/python bench/online.py [--users 7043] [--workers 1] [--duration 30] [--rates 100 200 500]
                                     [--ladder 100 150 200 ...] [--out bench/results/online.json]
    .venv/bin/python bench/online.py --shadow --servers ours no_reasons feast   # reasons and shadow, against today

Builds a private stack first (embedded PostgreSQL in a temporary directory: generate -> ingest -> dbt build ->
features apply -> materialize every month -> train -> promote), then starts both servers on loopback with the
same worker count:

- ours: `streamflow serve --workers W` answering POST /predict (online read of churn_model_v1, the champion
  model, the prediction with every feature and its as_of);
- Feast's: `feast serve --workers W --max-requests 0 --no-access-log` answering POST /get-online-features for
  the feature service churn_model_v1 (features only).

Load is open-loop at a constant arrival rate: the rate is spread over ceil(rate / 20) `hey` processes, one
connection each, started 1/rate apart, so arrivals interleave instead of leaving in bursts. Every request that
was due but not sent (a worker held back by a slow answer) or not answered 200 counts as a failure, i.e. as
infinitely slow in the percentiles (a process's last tick, which may fall on its deadline, is not counted as
due). Measured per rate: p50, p99, achieved rate, failures, the server's and PostgreSQL's CPU per request. (a)
fixed rates for --duration seconds each; (b) a ladder of rates per server until p99 reaches 50 ms: the highest rate
below that is the sustained rate (a failed step is tried a second time, so one noisy moment on a shared machine
does not end the ladder).

``--shadow`` also registers a second version (trained a month earlier, left unpromoted: the shadow) and runs our
API twice: with STREAMFLOW_SHADOW=off (``ours`` asked ``?reasons=3``, ``no_reasons`` asked ``?reasons=0``: the
figures without reasons and without shadow) and with it on (``?reasons=3`` and the shadow scored off the request
path), side by side in the same run; the rows the shadow wrote are counted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import httpx
import psutil
from _stack import (
    OURS,
    Server,
    build_stack,
    finite,
    free_port,
    percentile,
    settings_env,
    start_ours,
    stop_postgres,
    wait_for,
)

from streamflow.core.settings import PROJECT_ROOT, Settings

ALL_SERVERS: list[Server] = []  # every server started, so a step waits for all of them to be idle
PER_PROCESS_RATE = 20.0  # requests per second of one hey process (one connection)
P99_LIMIT = 0.050
HEY = shutil.which("hey")


FEAST = "feast serve /get-online-features"
SHADOWED = f"{OURS} ?reasons=3 + shadow"


def start_feast(settings: Settings, workers: int, logs: Path) -> Server:
    from streamflow.core.env import tool_environment

    port = free_port()
    log = logs / "feast.log"
    env = settings_env(settings)
    env.update(tool_environment(settings))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("feast")),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--max-requests",
                "0",
                "--no-access-log",
            ],
            env=env,
            cwd=settings.feature_repo_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for(f"http://127.0.0.1:{port}/health", proc, log)
    body = '{"feature_service":"churn_model_v1","entities":{"user_id":["{user}"]}}'
    return Server(FEAST, f"http://127.0.0.1:{port}/get-online-features", body, proc, log)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------
@dataclass
class Step:
    server: str
    rate: float
    seconds: float
    planned: int
    answered: int  # 200s
    failed: int  # sent, not 200 (or no answer)
    missing: int  # due, never sent
    p50_ms: float
    p99_ms: float
    achieved_rate: float
    server_cpu_ms_per_request: float
    postgres_cpu_ms_per_request: float
    load_average: list[float] = field(default_factory=list)

    @property
    def sustained(self) -> bool:
        return self.p99_ms < P99_LIMIT * 1000


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def settle(servers: list[Server], postgres: list[psutil.Process], timeout: float = 60) -> None:
    """Wait until every server and PostgreSQL are idle: an overloaded step leaves a queue of accepted requests
    behind, which must not compete with the next step."""
    processes = [p for server in servers for p in server.processes()] + postgres
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _cpu(processes)
        time.sleep(0.5)
        if _cpu(processes) - before < 0.05:  # under 10% of a core
            return


def run_step(server: Server, rate: float, seconds: float, bodies: list[str], postgres: list[psutil.Process]) -> Step:
    settle(ALL_SERVERS, postgres)
    processes = max(1, math.ceil(rate / PER_PROCESS_RATE))
    per = rate / processes
    outputs = []
    cpu0, pg0 = _cpu(server.processes()), _cpu(postgres)
    started = time.perf_counter()
    procs = []
    with contextlib.ExitStack() as files:
        for i in range(processes):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            out = files.enter_context(tempfile.TemporaryFile(mode="w+"))
            outputs.append(out)
            procs.append(
                subprocess.Popen(
                    [
                        HEY,
                        "-z",
                        f"{seconds}s",
                        "-c",
                        "1",
                        "-q",
                        f"{per:.4f}",
                        "-m",
                        "POST",
                        "-T",
                        "application/json",
                        "-d",
                        bodies[i % len(bodies)],
                        "-o",
                        "csv",
                        server.url,
                    ],
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                )
            )
        for proc in procs:
            proc.wait(timeout=seconds + 120)
        cpu1, pg1 = _cpu(server.processes()), _cpu(postgres)
        latencies: list[float] = []
        failed = 0
        for out in outputs:
            out.seek(0)
            for row in csv.DictReader(io.StringIO(out.read())):
                if row.get("status-code") == "200":
                    latencies.append(float(row["response-time"]))
                else:
                    failed += 1
    # hey sends one request per tick of its -q clock within -z: floor(seconds * per) ticks per process, the
    # last of which may fall on the deadline; that one boundary tick per process is not counted as missing
    planned = processes * max(math.floor(seconds * per) - 1, 0)
    sent = len(latencies) + failed
    missing = max(planned - sent, 0)
    latencies.sort()
    answered = len(latencies)
    return Step(
        server=server.name,
        rate=rate,
        seconds=seconds,
        planned=planned,
        answered=answered,
        failed=failed,
        missing=missing,
        p50_ms=round(percentile(latencies, 0.50, max(planned, sent)) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99, max(planned, sent)) * 1000, 2),
        achieved_rate=round(answered / seconds, 1),
        server_cpu_ms_per_request=round((cpu1 - cpu0) * 1000 / max(sent, 1), 3),
        postgres_cpu_ms_per_request=round((pg1 - pg0) * 1000 / max(sent, 1), 3),
        load_average=[round(x, 2) for x in os.getloadavg()],
    )


def show(step: Step) -> None:
    mark = "ok " if step.sustained else "NO "
    print(
        f"{mark}{step.server:34s} {step.rate:6.0f}/s  p50 {step.p50_ms:8.2f} ms  p99 {step.p99_ms:8.2f} ms  "
        f"answered {step.answered}/{step.planned} (failed {step.failed}, missing {step.missing})  "
        f"cpu {step.server_cpu_ms_per_request:.2f} ms/req  pg {step.postgres_cpu_ms_per_request:.2f} ms/req  "
        f"load {step.load_average[0]:.2f}",
        flush=True,
    )


def warm_up(server: Server, bodies: list[str], n: int = 500) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            response = client.post(
                server.url, content=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
            )
            response.raise_for_status()


def ladder(server: Server, rates: list[float], seconds: float, bodies, postgres) -> tuple[float, list[Step]]:
    best, steps = 0.0, []
    for rate in rates:
        step = run_step(server, rate, seconds, bodies, postgres)
        show(step)
        steps.append(step)
        if not step.sustained:
            retry = run_step(server, rate, seconds, bodies, postgres)
            show(retry)
            steps.append(retry)
            if not retry.sustained:
                break
        best = rate
    return best, steps


# ---------------------------------------------------------------------------------------
# the shadow
# ---------------------------------------------------------------------------------------
def add_shadow(settings: Settings, months: int) -> None:
    """A second version trained a month before the champion's and left unpromoted: the API's shadow."""
    from ml.train import train
    from streamflow.drops.generator.params import as_of

    result = train(settings, as_of(months - 2))
    print(f"shadow: v{result.model_version} registered as challenger, not promoted", flush=True)


def shadow_summary(settings: Settings, fixed: list[Step]) -> dict:
    """Rows the shadow wrote, and p99 with the shadow minus p99 without it (both ?reasons=3) per fixed rate."""
    from streamflow.core.db import connect
    from streamflow.core.names import SHADOW_SCORES

    with connect(settings) as conn:
        rows = conn.execute(f"select count(*), count(distinct user_id) from {SHADOW_SCORES}").fetchone()
    by = {(s.server, s.rate): s for s in fixed}
    delta = {}
    for server, rate in by:
        if server == SHADOWED and (OURS, rate) in by:
            with_shadow, without = by[(SHADOWED, rate)].p99_ms, by[(OURS, rate)].p99_ms
            both = math.isfinite(with_shadow) and math.isfinite(without)
            delta[f"{rate:.0f}"] = round(with_shadow - without, 2) if both else None  # None: a step not sustained
    return {"rows": rows[0], "users": rows[1], "p99_delta_ms_with_shadow": delta}


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=7043)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds per rate.")
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 200, 500])
    parser.add_argument(
        "--ladder", type=float, nargs="+", default=[100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800]
    )
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=["ours", "no_reasons", "feast", "pipeline"],
        default=["ours", "feast", "pipeline"],
        help="ours: the API (each prediction with its reasons, the default); no_reasons: the same server asked "
        "`?reasons=0` (needs ours); feast: `feast serve`; pipeline: the API scoring with the full scikit-learn "
        "pipeline (STREAMFLOW_MODEL_FAST_PATH=false), the reference before the compiled model.",
    )
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="Register an unpromoted challenger (the shadow) and add our API with shadow scoring on, asked "
        "?reasons=3; ours and no_reasons then run with STREAMFLOW_SHADOW=off.",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "online.json")
    args = parser.parse_args()
    if HEY is None:
        raise SystemExit("hey is missing: `make sysdeps` installs it (Debian package hey)")

    home = Path(tempfile.mkdtemp(prefix="streamflow-bench-online-"))
    servers: list[Server] = []
    try:
        settings, active = build_stack(home, args.users, args.months)
        if args.shadow:
            add_shadow(settings, args.months)
        users = active[:: max(1, len(active) // 200)][:200]
        logs = home / "logs"
        logs.mkdir(exist_ok=True)
        postmaster = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
        pg_root = psutil.Process(postmaster)
        no_shadow = False if args.shadow else None
        starters = {
            "ours": lambda: start_ours(settings, args.workers, logs, shadow=no_shadow),
            "feast": lambda: start_feast(settings, args.workers, logs),
            "pipeline": lambda: start_ours(settings, args.workers, logs, fast=False),
        }
        for kind in args.servers:
            if kind != "no_reasons":
                servers.append(starters[kind]())
        if "no_reasons" in args.servers:
            ours = next((s for s in servers if s.name == OURS), None)
            if ours is None:
                raise SystemExit("--servers no_reasons asks the API without reasons: add ours")
            servers.append(Server(f"{OURS} ?reasons=0", f"{ours.url}?reasons=0", ours.body, ours.proc, ours.log))
        if args.shadow:
            ours = next((s for s in servers if s.name == OURS), None)
            if ours is not None:
                ours.url += "?reasons=3"
            shadowed = start_ours(settings, args.workers, logs, shadow=True, name=SHADOWED)
            shadowed.url += "?reasons=3"
            servers.append(shadowed)
        ALL_SERVERS.extend(servers)
        for server in servers:
            warm_up(server, server.bodies(users))
        fixed: list[Step] = []
        for rate in args.rates:
            for server in servers:
                step = run_step(server, rate, args.duration, server.bodies(users), [pg_root, *pg_root.children()])
                show(step)
                fixed.append(step)
        sustained = {}
        ladders = {}
        for server in servers:
            best, steps = ladder(
                server, args.ladder, args.duration, server.bodies(users), [pg_root, *pg_root.children()]
            )
            sustained[server.name] = best
            ladders[server.name] = [asdict(s) for s in steps]
            print(f"{server.name}: sustained {best:.0f} req/s with p99 < {P99_LIMIT * 1000:.0f} ms", flush=True)
        result = {
            "date": date.today().isoformat(),
            "machine": {"cpus": os.cpu_count(), "load_average_end": [round(x, 2) for x in os.getloadavg()]},
            "users": args.users,
            "months": args.months,
            "workers": args.workers,
            "seconds_per_rate": args.duration,
            "generator": f"hey, ceil(rate/{PER_PROCESS_RATE:.0f}) processes x 1 connection, staggered 1/rate",
            "fixed_rates": [asdict(s) for s in fixed],
            "sustained_p99_below_50ms": sustained,
            "ladders": ladders,
        }
        if sustained.get(OURS) and sustained.get(FEAST):
            result["sustained_ratio_to_feast"] = round(sustained[OURS] / sustained[FEAST], 2)
        if args.shadow:
            result["shadow"] = shadow_summary(settings, fixed)
            print(f"shadow: {json.dumps(result['shadow'])}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite(result), indent=2, allow_nan=False) + "\n")
        print(f"results: {args.out}")
    finally:
        for server in servers:
            server.stop()
        stop_postgres(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
