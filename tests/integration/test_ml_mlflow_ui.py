"""`streamflow mlflow`: the MLflow UI and REST API served on localhost from the platform's own store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import httpx
import pytest

from ml.tracking import configure, ensure_experiment
from tests.conftest import ROOT, STREAMFLOW, free_port, settings_env

pytestmark = pytest.mark.integration


@pytest.fixture()
def ui(mlflow_settings):
    port = free_port()
    proc = subprocess.Popen(
        [STREAMFLOW, "mlflow", "--port", str(port)],
        env=settings_env(mlflow_settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`streamflow mlflow` exited {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the MLflow UI did not answer within 120 s")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_streamflow_mlflow_serves_the_ui_on_the_platforms_tracking_store(mlflow_settings, ui):
    client = configure(mlflow_settings)
    experiment_id = ensure_experiment(client, mlflow_settings, "ui_check")

    page = httpx.get(f"{ui}/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    found = httpx.get(
        f"{ui}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "ui_check"}, timeout=10
    )
    assert found.status_code == 200, found.text
    assert found.json()["experiment"]["experiment_id"] == experiment_id
    # new experiments keep their artifacts under the platform's home
    assert found.json()["experiment"]["artifact_location"].startswith(mlflow_settings.artifacts_dir.as_uri())


def test_a_port_in_use_is_a_clear_error(mlflow_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [STREAMFLOW, "mlflow", "--port", str(port)],
            env=settings_env(mlflow_settings),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"port {port} is already in use" in proc.stderr
