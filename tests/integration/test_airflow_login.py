"""Local Airflow as a new user starts it: `streamflow airflow` with a PATH that lacks the virtualenv.

It comes up, its REST API refuses a request without a token and a wrong password, accepts a token made
with the generated admin login and lists the project's DAGs, runs tasks whose logs the UI shows, shows in a
real browser (headless Chromium) the login form, the three DAGs and a finished run's tasks, and no
socket of any of its processes listens on anything but 127.0.0.1. `streamflow stop` then ends every one
of them. Bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from urllib.parse import quote

import httpx
import psutil
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from streamflow.orchestration import MATERIALIZE_DAG, MONITOR_DAG, MONTHLY_DAG, airflow_password_file
from tests.browser_support import PAGE_SECONDS, headless_chromium, keep_page
from tests.conftest import ROOT, STREAMFLOW, free_port, make_settings, settings_env

pytestmark = pytest.mark.integration

START_SECONDS = 240  # preparing (database, dbt parse, airflow db migrate) and starting the components
TASK_SECONDS = 240  # the scheduler's first task runs to an end


def _wait_for(check, seconds: float, proc: subprocess.Popen, log) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"streamflow airflow exited {proc.returncode}:\n{log.read_text()[-4000:]}"
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds:.0f} s:\n{log.read_text()[-4000:]}")


def _get(url: str, **kw) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kw)
    except httpx.HTTPError:
        return None


def _tree(proc: subprocess.Popen) -> set[int]:
    """`streamflow airflow` and every process below it (the components sit in process groups of their own)."""
    try:
        return {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    """The (address, port) pairs the processes ``pids`` listen on, IPv4 and IPv6."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
    return alive


def _finished_task_log(base: str, auth: dict) -> tuple[dict, dict] | None:
    """A task instance the scheduler ran to an end (the DAGs are scheduled and unpaused: their first runs
    start at once), with its log as the API server serves it; None while there is none yet."""
    r = _get(f"{base}/api/v2/dags/~/dagRuns/~/taskInstances", headers=auth)
    if r is None:  # a busy API server that did not answer within _get's timeout: ask again
        return None
    assert r.status_code == 200, r.text
    for ti in r.json()["task_instances"]:
        if ti["state"] in ("success", "skipped", "failed", "up_for_retry") and ti["try_number"] >= 1:
            url = (
                f"{base}/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}"
                f"/logs/{ti['try_number']}"
            )
            log = _get(url, headers={**auth, "Accept": "application/json"}, params={"full_content": "true"})
            assert log is not None and log.status_code == 200, log and log.text
            return ti, log.json()
    return None


def _body(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def _see_in_the_browser(base: str, password: str, ti: dict, auth: dict) -> None:
    """Airflow's UI in headless Chromium: a page asks for the login first; after it, the DAG list shows the three
    DAGs and the run page the run's task instances (rendered by the UI, not read from the API)."""
    tasks = _get(f"{base}/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances", headers=auth).json()
    task_ids = {t["task_id"] for t in tasks["task_instances"]}
    with headless_chromium() as browser:
        wait = WebDriverWait(browser, PAGE_SECONDS)
        browser.get(f"{base}/dags")
        wait.until(lambda b: "/auth/login" in b.current_url and b.find_elements(By.NAME, "password"))
        keep_page(browser, "airflow_login")
        browser.find_element(By.NAME, "username").send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(password)
        next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Sign in").click()
        wait.until(lambda b: "/auth/login" not in b.current_url)
        browser.get(f"{base}/dags")
        wait.until(lambda b: {MONTHLY_DAG, MATERIALIZE_DAG, MONITOR_DAG} <= set(_body(b).split()))
        assert "3 Dags" in _body(browser)
        keep_page(browser, "airflow_dags")
        browser.get(f"{base}/dags/{ti['dag_id']}/runs/{quote(ti['dag_run_id'], safe='')}")
        wait.until(lambda b: task_ids <= set(_body(b).split()))
        assert ti["dag_run_id"] in _body(browser)
        keep_page(browser, "airflow_run")


def _stop(proc: subprocess.Popen, env: dict) -> subprocess.CompletedProcess:
    """`streamflow stop`, as a user ends it all; then whatever is left of the test's process group goes."""
    stopped = subprocess.run([STREAMFLOW, "stop"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # only if `streamflow stop` failed
    proc.wait(timeout=10)
    return stopped


def test_local_airflow_requires_the_generated_login_and_listens_on_loopback_only(own_home, tmp_path):
    port = free_port()
    settings = make_settings(own_home, airflow_port=port)  # its own server: `streamflow stop` stops it too
    env = settings_env(
        settings,
        PATH="/usr/bin:/bin",  # a new user's shell: the virtualenv is not activated
        AIRFLOW__API__WORKERS="1",
        # were the log servers started, they would listen on these ports (on every interface)
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
    )
    log = tmp_path / "airflow.log"
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [STREAMFLOW, "airflow"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
    stopped = None
    try:
        health = lambda: (r := _get(f"{base}/api/v2/monitor/health")) is not None and r.status_code == 200  # noqa: E731
        _wait_for(health, START_SECONDS, proc, log)

        file = airflow_password_file(settings)
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        password = json.loads(file.read_text())["admin"]
        printed = log.read_text()
        assert f"admin / {password}" in printed  # `streamflow airflow` says how to log in
        assert printed.count(password) == 1  # and only there: Airflow itself does not echo it
        component_logs = "".join(p.read_text() for p in (own_home / "logs").glob("airflow-*.log"))
        assert password not in component_logs

        # no token, a made-up token, a wrong password: refused
        assert _get(f"{base}/api/v2/dags").status_code in (401, 403)
        assert _get(f"{base}/api/v2/dags", headers={"Authorization": "Bearer not-a-token"}).status_code in (401, 403)
        wrong = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": "admin"}, timeout=10)
        assert wrong.status_code == 401

        # the generated login gets a token that lists the project's DAGs (once the DAG processor has parsed them)
        answer = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=10)
        assert answer.status_code == 201, answer.text
        auth = {"Authorization": f"Bearer {answer.json()['access_token']}"}

        def dags():
            r = _get(f"{base}/api/v2/dags", headers=auth)
            assert r is not None and r.status_code == 200, r and r.text
            ids = {d["dag_id"] for d in r.json()["dags"]}
            return ids if {MONTHLY_DAG, MATERIALIZE_DAG, MONITOR_DAG} <= ids else None

        assert _wait_for(dags, 90, proc, log) >= {MONTHLY_DAG, MATERIALIZE_DAG, MONITOR_DAG}

        # the scheduler runs tasks (LocalExecutor workers reach the execution API on our port) and the UI
        # shows their logs, read from the local files: no log server is needed
        ti, task_log = _wait_for(lambda: _finished_task_log(base, auth), TASK_SECONDS, proc, log)
        text = json.dumps(task_log["content"])
        assert str(own_home / "airflow" / "logs") in text, text[:2000]  # the source: the local log file
        assert "Could not read served logs" not in text
        assert len(task_log["content"]) > 2, text[:2000]  # more than the source details: the task's own lines

        # the same in a real browser: the login form, the three DAGs, the finished run's tasks
        _see_in_the_browser(base, password, ti, auth)

        # every socket of every Airflow process: loopback only (the API server; no log server, no 0.0.0.0, no ::)
        tree = _tree(proc)
        assert len(tree) >= 5, tree  # `streamflow airflow` and its four components at least
        listening = _listening(tree)
        assert ("127.0.0.1", port) in listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
        stopped = _stop(proc, env)
    finally:
        if stopped is None:
            tree = _tree(proc)
            _stop(proc, env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "airflow" in stopped.stdout
    assert not _alive(tree), [psutil.Process(p).cmdline() for p in _alive(tree)]  # every component and task
    assert not _listening(tree)
    assert _get(f"{base}/api/v2/monitor/health") is None  # nothing answers any more
    assert "Airflow stopped" in log.read_text()
