"""Fixtures of the fault tests: a private platform (tests/serving_world.py) per module, a client loop that records
every answer, a real redis-server that can be stopped and started again with its data, and a `streamflow` step
stopped at a named fault point to be killed there or resumed.

Traffic goes to 127.0.0.1 only; every loop stops by itself (bounded in time)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from streamflow.core import faults
from tests.conftest import ROOT, STREAMFLOW, free_port, settings_env


@dataclass
class Answer:
    at: float  # monotonic time the request was sent
    seconds: float
    status: int  # 0: no HTTP answer (connection error)
    body: dict
    retry_after: str | None


@dataclass
class ClientLoop:
    """POST ``path`` with ``bodies`` in turn from a thread until stopped or ``limit`` seconds pass."""

    url: str
    path: str
    bodies: list[dict]
    limit: float = 120.0
    pause: float = 0.02
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        i = 0
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                body = self.bodies[i % len(self.bodies)]
                i += 1
                started = time.monotonic()
                try:
                    r = client.post(self.path, json=body)
                    seconds = time.monotonic() - started
                    answer = Answer(started, seconds, r.status_code, r.json(), r.headers.get("retry-after"))
                except httpx.HTTPError:
                    answer = Answer(started, time.monotonic() - started, 0, {}, None)
                self.answers.append(answer)
                time.sleep(self.pause)

    def __enter__(self) -> ClientLoop:
        self._thread = threading.Thread(target=self._run, name="client-loop", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def since(self, t: float) -> list[Answer]:
        return [a for a in self.answers if a.at >= t]


def wait_for(answers: ClientLoop, predicate, timeout: float, what: str) -> float:
    """Wait until an answer after now satisfies ``predicate``; returns when it was sent."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for a in answers.since(start):
            if predicate(a):
                return a.at
        time.sleep(0.05)
    tail = [(a.status, a.body.get("detail")) for a in answers.answers[-5:]]
    raise AssertionError(f"no answer {what} within {timeout} s; last: {tail}")


class RedisServer:
    """redis-server on a loopback port, saving its data on stop so a restart serves the same values."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (installed by `make sysdeps`)"
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", "3600 1", "--appendonly", "no", "--dbfilename", "faults.rdb"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: redis saves its data set (a save point is configured) and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------
# a `streamflow` step stopped at a named fault point (streamflow/core/faults.py)
# ---------------------------------------------------------------------------------------
class PausedStep:
    """`streamflow ARGS` started with ``STREAMFLOW_FAULT_PAUSE=point``; its output is collected as it comes."""

    def __init__(self, settings, point: str | None, *args: str, **env: str):
        extra = {faults.ENV_VAR: point} if point else {}
        self.point, self.args = point, args
        self.proc = subprocess.Popen(
            [STREAMFLOW, *args],
            env=settings_env(settings, **extra, **env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in iter(stream.readline, ""):
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def describe(self) -> str:
        return f"streamflow {' '.join(self.args)}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"

    def wait_for(self, text: str, timeout: float = 240) -> None:
        """Until ``text`` appears on stderr; fails if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while text not in " ".join(self.stderr.split()):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the readers catch up
                if text in " ".join(self.stderr.split()):
                    return
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}: {self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s: {self.describe()}")
            time.sleep(0.1)

    def wait_paused(self, timeout: float = 240) -> None:
        self.wait_for(f"paused at {self.point}", timeout)

    def kill(self) -> None:
        """SIGKILL to the step's process group (it was started in a session of its own)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def resume(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 300) -> int:
        """Wait for the end (closing its input resumes a pause); returns the exit status."""
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not end within {timeout} s: {self.describe()}") from None
        for t in self._readers:
            t.join(timeout=10)
        return code

    def __enter__(self) -> PausedStep:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.kill()


def killed_at(settings, point: str, *args: str, timeout: float = 240) -> PausedStep:
    """Run `streamflow ARGS` until it reaches ``point``, then kill -9 it there; returns the dead step."""
    with PausedStep(settings, point, *args) as step:
        step.wait_paused(timeout)
        step.kill()
    assert step.proc.returncode == -signal.SIGKILL, step.describe()
    return step
