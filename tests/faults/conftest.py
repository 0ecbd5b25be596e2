"""Fixtures of the fault tests: a private platform (tests/serving_world.py) per module, a client loop that records
every answer, and a real redis-server that can be stopped and started again with its data.

Traffic goes to 127.0.0.1 only; every loop stops by itself (bounded in time)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import free_port


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
