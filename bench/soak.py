"""Soak: /predict under constant load while the champion moves, the online store is rewritten and PostgreSQL restarts.

    .venv/bin/python bench/soak.py [--users 7043] [--minutes 10] [--rate R] [--workers 1]
                                   [--out bench/results/soak.json]

Builds a private stack as `bench/online.py` does (embedded PostgreSQL in a temporary directory: generate ->
ingest -> build -> features apply -> materialize -> train -> promote), then trains a second version of the other
model family on the same month, so the two versions give different probabilities and a swap shows in every
answer. Starts `streamflow serve` on 127.0.0.1 and, before any load, freezes a table: each user's features as
the API serves them, and each version's probability for those features computed here with the version's own
scikit-learn pipeline from the registry.

Then, for --minutes, a client process (`bench/_load.py`: true constant arrival, keep-alive connections, every
answer kept) sends POST /predict at --rate for active users in turn (default: half the sustained rate in
bench/results/online.json, else 100 req/s), while this process

- moves the `champion` alias to the other version every minute (at 0:30, 1:30, ...),
- runs `streamflow features materialize --force` every two minutes (at 1:00, 3:00, ...; skipped while the
  previous one still runs),
- restarts PostgreSQL once at 60% of the run (fast stop, 5 s down, start; after a running materialization ends).

Every answer is checked: a 200 must name a registered version, carry the frozen features (values and as_of), and
its probability must equal that version's frozen probability (within 1e-9). Reported per phase (before, during
and after the restart window, which runs from the stop to --grace seconds after PostgreSQL accepts connections
again): requests due, answers by status, requests due but not sent (missing, failures), wrong answers, and
p50/p99 of the 200s from the moment each request was due (p99 all: every due request, non-200 ones counted as
infinitely slow); also how long each swap took to show and how long the API took to recover.

Target: no 5xx outside the restart window, none but 503 in it, no wrong answer; and, since missing requests
count as failures, no failed request outside the window. Bounded: the run stops by itself, and every process it
started (the API, the client, materializations, PostgreSQL) is stopped on the way out, on Ctrl-C or error too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
from _stack import build_stack, finite, percentile, settings_env, start_ours, stop_postgres

from streamflow.core.names import CHAMPION
from streamflow.core.settings import PROJECT_ROOT, Settings
from streamflow.core.stack import EmbeddedPostgres

BENCH = Path(__file__).resolve().parent
TOLERANCE = 1e-9  # the API's compiled scorer is checked equal to the pipeline within 1e-12 when it loads
PHASES = ("before", "during", "after")


def default_rate() -> tuple[float, str]:
    """Half the sustained rate bench/online.py measured on this machine, else 100 req/s."""
    measured = PROJECT_ROOT / "bench" / "results" / "online.json"
    try:
        sustained = json.loads(measured.read_text())["sustained_p99_below_50ms"]["streamflow /predict"]
    except (OSError, ValueError, KeyError, TypeError):
        return 100.0, "default (no sustained rate in bench/results/online.json)"
    if not sustained:
        return 100.0, "default (no sustained rate in bench/results/online.json)"
    return sustained / 2, f"half the sustained rate in {measured.relative_to(PROJECT_ROOT)} ({sustained:g} req/s)"


# ---------------------------------------------------------------------------------------
# models and the frozen table
# ---------------------------------------------------------------------------------------
def second_version(settings: Settings, months: int) -> list[str]:
    """Register a version of the family the champion is not; returns [champion, the new version]."""
    # heavy imports (MLflow, scikit-learn) after argument parsing, as build_stack does
    from ml.tracking import configure, version_by_alias
    from ml.train import FAMILIES, train
    from streamflow.drops.generator.params import as_of

    client = configure(settings)
    champion = version_by_alias(client, settings.model_name, CHAMPION)
    family = client.get_run(champion.run_id).data.params["family"]
    other = next(f for f in FAMILIES if f != family)
    started = time.perf_counter()
    result = train(settings, as_of(months - 1), families=[other])
    print(
        f"second version v{result.model_version} ({other}) registered in {time.perf_counter() - started:.0f} s; "
        f"champion v{champion.version} ({family})",
        flush=True,
    )
    return [str(champion.version), str(result.model_version)]


def freeze_features(url: str, users: list[str]) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """Each user's answer before any disturbance: features ({name: [value, as_of]}) and the answer itself."""
    features, answers, refused = {}, {}, []
    with httpx.Client(timeout=30) as client:
        for user in users:
            response = client.post(url, json={"user_id": user})
            if response.status_code != 200:
                refused.append(f"{user}: {response.status_code}")
                continue
            body = response.json()
            features[user] = {k: [v["value"], v["as_of"]] for k, v in body["features"].items()}
            answers[user] = body
    return features, answers, refused


def expected_probabilities(settings: Settings, versions: list[str], features: dict[str, dict]) -> dict[str, dict]:
    """{version: {user: probability}} from each version's registered pipeline on the frozen features."""
    # heavy imports (MLflow, scikit-learn) after argument parsing
    from ml.tracking import configure, load_version
    from serving.scorer import canonical_frame

    client = configure(settings)
    users = list(features)
    rows = [{k: v[0] for k, v in features[u].items()} for u in users]
    out = {}
    for version in versions:
        loaded = load_version(settings, version, client)
        proba = loaded.pipeline.predict_proba(canonical_frame(rows, loaded.features))[:, 1]
        out[version] = dict(zip(users, (float(p) for p in proba), strict=True))
    return out


def wrong(answer: dict, features: dict[str, dict], expected: dict[str, dict]) -> str | None:
    """Why a 200 answer is wrong, or None."""
    version, user = answer.get("version"), answer["user"]
    if version not in expected:
        return "names an unknown model_version"
    if answer.get("features") != features[user]:
        return "features differ from the frozen ones"
    probability = answer.get("probability")
    if not isinstance(probability, float | int) or abs(probability - expected[version][user]) > TOLERANCE:
        return "probability is not the named version's"
    return None


# ---------------------------------------------------------------------------------------
# the disturbances
# ---------------------------------------------------------------------------------------
@dataclass
class Operator:
    """Runs the disturbances on the run's timeline and records each with its offset from the start."""

    settings: Settings
    versions: list[str]
    logs: Path
    t0: float
    events: list[dict] = field(default_factory=list)
    materializing: subprocess.Popen | None = None
    materialize_started: float = 0.0
    materializations: int = 0
    champion: int = 0  # index in versions
    restart: dict = field(default_factory=dict)
    _client: object = None

    def note(self, event: str, **details) -> None:
        entry = {"t": round(time.time() - self.t0, 2), "event": event, **details}
        self.events.append(entry)
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        print(f"  {entry['t']:7.1f} s  {event} {extra}", flush=True)

    def swap(self) -> None:
        from ml.tracking import configure  # heavy import (MLflow), loaded once before the run starts

        target = self.versions[1 - self.champion]
        for attempt in range(3):
            try:
                if self._client is None:
                    self._client = configure(self.settings)
                self._client.set_registered_model_alias(self.settings.model_name, CHAMPION, target)
            except Exception as exc:  # noqa: BLE001 - the registry may be reconnecting; record and retry
                self._client = None
                self.note("swap attempt failed", attempt=attempt + 1, error=type(exc).__name__)
                time.sleep(1)
                continue
            self.champion = 1 - self.champion
            self.note("champion moved", to=target, at=round(time.time(), 3))
            return
        self.note("champion not moved", to=target)

    def materialize(self) -> None:
        if self.poll_materialize():
            self.note("materialize skipped: the previous one still runs")
            return
        self.materializations += 1
        log = self.logs / f"materialize-{self.materializations}.log"
        with open(log, "w") as out:
            self.materializing = subprocess.Popen(
                [str(Path(sys.executable).with_name("streamflow")), "features", "materialize", "--force", "--json"],
                env=settings_env(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.materialize_started = time.time()
        self.note("materialize --force started", n=self.materializations)

    def poll_materialize(self) -> bool:
        """True while a materialization runs; records its end."""
        if self.materializing is None:
            return False
        code = self.materializing.poll()
        if code is None:
            return True
        self.note(
            "materialize finished",
            n=self.materializations,
            exit=code,
            seconds=round(time.time() - self.materialize_started, 1),
        )
        self.materializing = None
        return False

    def restart_postgres(self, down_seconds: float) -> None:
        waited = time.time()
        while self.poll_materialize() and time.time() - waited < 300:
            time.sleep(0.5)
        if time.time() - waited > 1:
            self.note("restart waited for the materialization", seconds=round(time.time() - waited, 1))
        stack = EmbeddedPostgres(self.settings)
        self.restart["stop"] = time.time()
        self.note("postgres stopping")
        stack.down()
        self.restart["stopped"] = time.time()
        self.note("postgres stopped")
        time.sleep(down_seconds)
        self.restart["start"] = time.time()
        stack.up()
        self.restart["up"] = time.time()
        self.note("postgres accepting connections")

    def stop(self) -> None:
        if self.materializing is not None and self.materializing.poll() is None:
            os.killpg(self.materializing.pid, signal.SIGTERM)
            try:
                self.materializing.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.materializing.pid, signal.SIGKILL)
                self.materializing.wait(timeout=30)


def timeline(seconds: float, swap_every: float, materialize_every: float, restart_at: float) -> list[tuple]:
    """(offset, kind) of every disturbance, in order; the restart before a materialization due at the same time."""
    plan = [(restart_at * seconds, 0, "restart")]
    t = swap_every / 2
    while t < seconds - 5:
        plan.append((t, 1, "swap"))
        t += swap_every
    t = materialize_every / 2
    while t < seconds - 5:
        plan.append((t, 2, "materialize"))
        t += materialize_every
    return [(t, kind) for t, _, kind in sorted(plan)]


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------
def start_client(url: str, rate: float, seconds: float, start: float, users: list[str], work: Path):
    port = int(url.split(":")[2].split("/")[0])
    users_file = work / "users.json"
    users_file.write_text(json.dumps(users))
    answers = work / "answers.jsonl"
    log = open(work / "client.log", "w")  # noqa: SIM115 - closed by the caller with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH / "_load.py"),
            "--port",
            str(port),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--start",
            repr(start),
            "--bodies",
            str(users_file),
            "--out",
            str(answers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log, answers


def drive(operator: Operator, plan: list[tuple], seconds: float, client, api, down_seconds: float) -> None:
    """Run the plan until the load ends."""
    end = operator.t0 + seconds
    while time.time() < end:
        while plan and time.time() >= operator.t0 + plan[0][0]:
            _, kind = plan.pop(0)
            if kind == "swap":
                operator.swap()
            elif kind == "materialize":
                operator.materialize()
            else:
                operator.restart_postgres(down_seconds)
        operator.poll_materialize()
        if api.proc.poll() is not None:
            operator.note("the API exited", code=api.proc.returncode)
            break
        if client.poll() is not None:
            operator.note("the client exited early", code=client.returncode)
            break
        time.sleep(0.2)
    try:
        client.wait(timeout=max(end - time.time(), 0) + 60)
    except subprocess.TimeoutExpired:
        operator.note("the client did not finish in time")
    waited = time.time()
    while operator.poll_materialize() and time.time() - waited < 300:
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------
def load_answers(path: Path, due_total: int, t0: float, rate: float) -> list[dict]:
    by_index = {}
    if path.exists():
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    answer = json.loads(line)
                    by_index[answer["i"]] = answer
    for i in range(due_total):  # due, but the client ended before recording it
        by_index.setdefault(i, {"i": i, "due": t0 + i / rate, "status": "unrecorded", "user": None})
    return [by_index[i] for i in sorted(by_index)]


def phase_of(due: float, window: tuple[float, float]) -> str:
    return "before" if due < window[0] else "during" if due < window[1] else "after"


def summarize(answers: list[dict], window: tuple[float, float], features, expected) -> tuple[dict, list[dict]]:
    """Per phase: due, by status, missing, wrong, p50/p99; and a few examples of wrong answers."""
    phases = {p: {"due": 0, "status": Counter(), "wrong": Counter(), "latencies": []} for p in (*PHASES, "total")}
    examples = []
    for answer in answers:
        for name in (phase_of(answer["due"], window), "total"):
            phase = phases[name]
            phase["due"] += 1
            phase["status"][str(answer["status"])] += 1
        if answer["status"] != 200:
            continue
        reason = wrong(answer, features, expected)
        for name in (phase_of(answer["due"], window), "total"):
            if reason:
                phases[name]["wrong"][reason] += 1
            else:
                phases[name]["latencies"].append(answer["latency"])
        if reason and len(examples) < 10:
            examples.append({**answer, "reason": reason})
    out = {}
    for name, phase in phases.items():
        latencies = sorted(phase["latencies"])
        status = dict(sorted(phase["status"].items()))
        out[name] = {
            "seconds": None,
            "due": phase["due"],
            "sent": phase["due"] - status.get("missing", 0),
            "status": status,
            "missing": status.get("missing", 0),
            "wrong": sum(phase["wrong"].values()),
            "wrong_by_reason": dict(phase["wrong"]),
            "p50_ms": round(percentile(latencies, 0.50, len(latencies)) * 1000, 2) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99, len(latencies)) * 1000, 2) if latencies else None,
            "p99_all_ms": round(percentile(latencies, 0.99, phase["due"]) * 1000, 2) if phase["due"] else None,
        }
    return out, examples


def swap_lags(answers: list[dict], events: list[dict], versions: list[str]) -> list[dict]:
    """For each alias move: when the first answer named the new version, when the last named the old one."""
    moves = [e for e in events if e["event"] == "champion moved"]
    served = [(a["due"] + a["latency"], a.get("version")) for a in answers if a["status"] == 200]
    out = []
    for n, move in enumerate(moves):
        start = move["at"]
        stop = moves[n + 1]["at"] if n + 1 < len(moves) else math.inf
        old = versions[1 - versions.index(move["to"])]
        first_new = min((t for t, v in served if v == move["to"] and start <= t < stop), default=None)
        last_old = max((t for t, v in served if v == old and start <= t < stop), default=None)
        out.append(
            {
                "to": move["to"],
                "first_answer_after_s": round(first_new - start, 2) if first_new else None,
                "last_old_answer_after_s": round(last_old - start, 2) if last_old else None,
            }
        )
    return out


def recovery(answers: list[dict], restart: dict) -> dict:
    """After PostgreSQL accepted connections again: the first 200, and the last answer that was not 200."""
    if not restart:
        return {}
    up, stop = restart["up"], restart["stop"]
    after = [a for a in answers if a["due"] >= stop]
    first_ok = min((a["due"] + a["latency"] for a in after if a["status"] == 200 and a["due"] >= up), default=None)
    failed = [a["due"] for a in after if a["status"] != 200]
    return {
        "postgres_down_s": round(restart["start"] - restart["stopped"], 2),
        "stop_to_accepting_s": round(up - stop, 2),
        "first_200_after_accepting_s": round(first_ok - up, 2) if first_ok else None,
        "last_failed_request_due_after_accepting_s": round(max(failed) - up, 2) if failed else None,
    }


def checks(phases: dict) -> dict[str, int]:
    """The target, as counts that must all be zero."""

    def count(phase: str, keep) -> int:
        return sum(n for s, n in phases[phase]["status"].items() if keep(s))

    def five(s: str) -> bool:
        return s.isdigit() and int(s) >= 500

    outside = ("before", "after")
    return {
        "5xx outside the restart window": sum(count(p, five) for p in outside),
        "5xx other than 503 in the restart window": count("during", lambda s: five(s) and s != "503"),
        "wrong answers": phases["total"]["wrong"],
        "failed requests outside the restart window (non-200, no answer, missing)": sum(
            count(p, lambda s: s != "200") for p in outside
        ),
        "requests in the restart window neither 200 nor 503 (incl. missing)": count(
            "during", lambda s: s not in ("200", "503")
        ),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else "inf" if math.isinf(value) else f"{value:.2f}"


def show(phases: dict, lags: list[dict], recovered: dict, verdict: dict[str, int]) -> None:
    print()
    head = f"{'phase':8s} {'seconds':>8s} {'due':>7s} {'sent':>7s} {'status':34s} {'missing':>7s} {'wrong':>6s}"
    print(head + f" {'p50 ms':>8s} {'p99 ms':>8s} {'p99 all':>8s}")
    for name in (*PHASES, "total"):
        p = phases[name]
        status = " ".join(f"{s}:{n}" for s, n in p["status"].items() if s != "missing") or "-"
        print(
            f"{name:8s} {p['seconds']:8.1f} {p['due']:7d} {p['sent']:7d} {status:34s} {p['missing']:7d} "
            f"{p['wrong']:6d} {_ms(p['p50_ms']):>8s} {_ms(p['p99_ms']):>8s} {_ms(p['p99_all_ms']):>8s}"
        )
    shown = [f"v{lag['to']} first after {lag['first_answer_after_s']} s" for lag in lags]
    print("\nswaps: " + ("; ".join(shown) if shown else "none"))
    print("restart: " + ", ".join(f"{k} {v}" for k, v in recovered.items()))
    print()
    for name, n in verdict.items():
        print(f"  {'ok  ' if n == 0 else 'FAIL'} {name}: {n}")
    print("\n" + ("PASS" if not any(verdict.values()) else "FAIL"), flush=True)


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=7043)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="Requests per second (default: half the sustained rate in bench/results/online.json, else 100).",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sample", type=int, default=1000, help="Active users the load cycles through.")
    parser.add_argument("--swap-every", type=float, default=60.0, help="Seconds between champion moves.")
    parser.add_argument("--materialize-every", type=float, default=120.0, help="Seconds between materializations.")
    parser.add_argument("--restart-at", type=float, default=0.6, help="When PostgreSQL restarts (run fraction).")
    parser.add_argument("--down", type=float, default=5.0, help="Seconds PostgreSQL stays stopped.")
    parser.add_argument("--grace", type=float, default=15.0, help="Seconds after PostgreSQL is back in the window.")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "soak.json")
    return parser.parse_args()


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:  # long: the run's steps in order, with the one try/finally that stops every process
    args = arguments()
    rate, rate_source = (args.rate, "--rate") if args.rate else default_rate()
    seconds = args.minutes * 60
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    home = Path(tempfile.mkdtemp(prefix="streamflow-bench-soak-"))
    api = client = operator = client_log = None
    started = time.perf_counter()
    try:
        settings, active = build_stack(home, args.users, args.months)
        versions = second_version(settings, args.months)
        logs = home / "logs"
        logs.mkdir(exist_ok=True)
        users = active[:: max(1, len(active) // args.sample)][: args.sample]
        api = start_ours(settings, args.workers, logs)
        features, frozen, refused = freeze_features(api.url, users)
        users = list(features)
        expected = expected_probabilities(settings, versions, features)
        warmup_wrong = sum(
            wrong({"user": u, "version": a["model_version"], "probability": a["churn_probability"], "features": f},
                  features, expected) is not None
            for (u, a), f in zip(frozen.items(), features.values(), strict=True)
        )  # fmt: skip
        differ = sum(abs(expected[versions[0]][u] - expected[versions[1]][u]) > TOLERANCE for u in users)
        print(
            f"frozen table: {len(users)} users ({len(refused)} refused), versions {versions}, "
            f"{differ} users whose probability differs between them; warm-up answers not matching: {warmup_wrong}",
            flush=True,
        )
        print(f"load: {rate:g} req/s for {seconds:.0f} s ({rate_source}), {args.workers} worker(s)", flush=True)
        t0 = time.time() + 3
        client, client_log, answers_file = start_client(api.url, rate, seconds, t0, users, home)
        operator = Operator(settings, versions, logs, t0)
        plan = timeline(seconds, args.swap_every, args.materialize_every, args.restart_at)
        drive(operator, plan, seconds, client, api, args.down)
        api_alive = api.proc.poll() is None
        due_total = int(rate * seconds)
        answers = load_answers(answers_file, due_total, t0, rate)
        restart = operator.restart
        window = (restart["stop"], restart["up"] + args.grace) if restart else (math.inf, math.inf)
        phases, examples = summarize(answers, window, features, expected)
        end = t0 + seconds
        bounds = {"before": (t0, min(window[0], end)), "during": (window[0], min(window[1], end))}
        bounds["after"] = (min(window[1], end), end)
        bounds["total"] = (t0, end)
        for name, (a, b) in bounds.items():
            phases[name]["seconds"] = round(max(b - a, 0.0), 1) if math.isfinite(a) else 0.0
        lags = swap_lags(answers, operator.events, versions)
        recovered = recovery(answers, restart)
        verdict = checks(phases)
        if not api_alive:
            verdict["API process exited"] = 1
        show(phases, lags, recovered, verdict)
        client_summary = (home / "client.log").read_text().strip().splitlines()
        result = {
            "date": date.today().isoformat(),
            "machine": {"cpus": os.cpu_count(), "load_average_end": [round(x, 2) for x in os.getloadavg()]},
            "command": " ".join(sys.argv),
            "users": args.users,
            "months": args.months,
            "users_in_rotation": len(users),
            "workers": args.workers,
            "rate": rate,
            "rate_source": rate_source,
            "seconds": seconds,
            "versions": versions,
            "users_whose_probability_differs_between_versions": differ,
            "warmup_answers_not_matching": warmup_wrong,
            "restart_window": {"grace_s": args.grace, "seconds": phases["during"]["seconds"]},
            "phases": phases,
            "wrong_examples": examples,
            "swaps": lags,
            "restart": recovered,
            "events": operator.events,
            "client": client_summary[-1] if client_summary else None,
            "api_alive_at_end": api_alive,
            "checks": verdict,
            "verdict": "PASS" if not any(verdict.values()) else "FAIL",
            "wall_seconds_including_build": round(time.perf_counter() - started, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite(result), indent=2, allow_nan=False) + "\n")
        print(f"results: {args.out}")
    finally:
        if client is not None and client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait(timeout=30)
        if client_log is not None:
            client_log.close()
        if operator is not None:
            operator.stop()
        if api is not None:
            api.stop()
        stop_postgres(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
