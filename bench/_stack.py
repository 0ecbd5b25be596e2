"""What the serving benchmarks share: a private stack, our API on loopback, and percentile helpers.

`bench/online.py` and `bench/soak.py` import this module (they run as scripts, so `bench/` is on the path).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from streamflow.core.env import settings_environment
from streamflow.core.settings import PROJECT_ROOT, Settings
from streamflow.core.stack import EmbeddedPostgres

OURS = "streamflow /predict"
PIPELINE = "streamflow /predict, full pipeline"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    env.update(settings_environment(settings))
    env["OMP_NUM_THREADS"] = "1"
    return env


# ---------------------------------------------------------------------------------------
# the stack
# ---------------------------------------------------------------------------------------
def build_stack(home: Path, users: int, months: int) -> tuple[Settings, list[str]]:
    """A private stack with a champion; returns its settings and the users active at the newest month."""
    from ml.promote import promote
    from ml.train import train
    from streamflow.drops.generator.params import as_of
    from streamflow.drops.generator.run import generate
    from streamflow.drops.ingest import ingest
    from streamflow.features import materialize
    from streamflow.features.apply import apply
    from streamflow.warehouse.build import build

    settings = Settings(
        _env_file=None,
        home=home,
        project_dir=PROJECT_ROOT,
        database_url=None,
        pg_port=free_port(),
        dbt_target_path=home / "dbt" / "target",
    )
    started = time.perf_counter()
    EmbeddedPostgres(settings).up()
    drops = home / "drops"
    generate(drops, months=months, users=users, seed=42)
    ingest(settings, sorted(drops.glob("month_*")))
    build(settings)
    apply(settings)
    ends = [as_of(m) for m in range(months)]
    for month in ends:
        materialize.materialize(settings, month)
    train(settings, ends[-1])
    decision = promote(settings)
    if not decision.decision.promote:
        raise SystemExit(f"the first model was not promoted: {decision.decision.reasons}")
    active = materialize.active_users(settings, ends[-1])
    print(
        f"stack ready in {time.perf_counter() - started:.0f} s: {users} users, {months} months, "
        f"{len(active)} active at {ends[-1]}",
        flush=True,
    )
    return settings, active


def stop_postgres(home: Path) -> None:
    """Stop the private stack's PostgreSQL, if it runs."""
    EmbeddedPostgres(Settings(_env_file=None, home=home, project_dir=PROJECT_ROOT)).down()


# ---------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    url: str
    body: str  # JSON template with {user}
    proc: subprocess.Popen
    log: Path

    def bodies(self, users: list[str]) -> list[str]:
        return [self.body.replace("{user}", u) for u in users]

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def start_ours(
    settings: Settings, workers: int, logs: Path, *, fast: bool = True, shadow: bool | None = None, name: str = ""
) -> Server:
    """Our API; ``fast=False`` scores with the full scikit-learn pipeline (a frame per request), as before the
    compiled model; ``shadow`` turns shadow scoring on or off (STREAMFLOW_SHADOW; None: the settings' own)."""
    port = free_port()
    log = logs / ("api.log" if fast else "api-pipeline.log")
    update: dict = {"model_fast_path": fast}
    if shadow is not None:
        update["shadow"] = shadow
        log = log.with_name(f"api-shadow-{'on' if shadow else 'off'}.log")
    settings = settings.model_copy(update=update)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("streamflow")),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for(f"http://127.0.0.1:{port}/ready", proc, log)
    label = name or (OURS if fast else PIPELINE)
    return Server(label, f"http://127.0.0.1:{port}/predict", '{"user_id":"{user}"}', proc, log)


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float, planned: int) -> float:
    """The q-quantile over every planned request, unanswered ones counted as infinitely slow."""
    if planned == 0:
        return math.nan
    rank = max(math.ceil(q * planned) - 1, 0)
    return sorted_values[rank] if rank < len(sorted_values) else math.inf


def finite(value):
    """JSON has no infinity: a percentile that no answer reached is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
