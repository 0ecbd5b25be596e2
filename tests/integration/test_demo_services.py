"""What `make demo` advertises answers, and `make stop` leaves nothing running.

The demo's own start-up code (`_serve_and_predict`, `_start_uis`, the "where everything is" table) runs on a
private platform (tests/serving_world.py), with a PATH that lacks the virtualenv's bin folder as a new user's
does; then `streamflow stop` (what `make stop` runs) must end every process it started and free every port."""

from __future__ import annotations

import io
import os
import socket
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from rich.console import Console

from streamflow.cli import demo
from streamflow.core import services
from streamflow.orchestration import airflow_environment
from tests.conftest import free_port, run_cli, server_home
from tests.serving_world import clone_world

pytestmark = pytest.mark.integration


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def process_tree(pids: list[int]) -> set[psutil.Process]:
    out = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        out |= {proc, *proc.children(recursive=True)}
    return out


def test_every_url_the_demo_prints_answers_and_stop_leaves_no_process_and_no_port(world_template, monkeypatch):
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin))
    with server_home("streamflow-demo-services-") as home:
        ports = {"api_port": free_port(), "mlflow_port": free_port(), "docs_port": free_port()}
        settings = clone_world(world_template, home, airflow_port=free_port(), **ports)
        local = services.local_services(settings)
        out = io.StringIO()
        console = Console(file=out, width=200)
        timings = demo.Timings()

        demo._serve_and_predict(settings, console, timings, local)
        answered = demo._start_uis(settings, console, timings, local, airflow_environment(settings))
        assert answered == {"mlflow": True, "docs": True, "airflow": True, "api": True}, (
            answered,
            {n: services.log_file(settings, n).read_text(errors="replace")[-2000:] for n in answered},
        )
        demo._print_where_everything_is(settings, console, timings, local, answered)
        printed = out.getvalue()
        assert "not answering" not in printed
        for name, service in local.items():
            assert service.url in printed
            page = httpx.get(service.url, timeout=30, follow_redirects=True)
            assert page.status_code == 200, (name, service.url, page.status_code)

        started = [p for name in local if (p := services.running_pid(settings, name)) is not None]
        tree = process_tree(started)
        assert len(tree) >= len(local) + 3  # Airflow alone supervises four programs

        run_cli(settings, "stop")
        gone, alive = psutil.wait_procs(list(tree), timeout=30)
        assert not alive, [(p.pid, p.info if hasattr(p, "info") else p) for p in alive]
        used = {"pg_port": settings.pg_port, "airflow_port": settings.airflow_port, **ports}
        busy = {name: port for name, port in used.items() if not port_free(port)}
        holders = [
            (c.laddr, c.status, c.pid and psutil.Process(c.pid).cmdline()[:4])
            for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port in busy.values()
        ]
        assert busy == {}, holders
