"""The dbt warehouse from Python: dbt in-process with the platform's settings, the monthly build
behind its quality gate, and the gate's report.

`build(settings)` brings the warehouse up to the newest loaded drop: for every drop month not built
yet, in as_of order, it runs the source tests (the quality gate) and then the same dbt nodes an
analyst or Airflow runs for one month (`dbt build --vars '{"as_of": ...}'`). When an already built
month was re-ingested with other content or disappeared (`streamflow ingest --rebuild`), the
snapshots and marts are rebuilt from the raw history, month by month. Every month is gated before
anything is touched, so a bad drop leaves snapshots and marts exactly as they were.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamflow.core.settings import Settings

if TYPE_CHECKING:
    from dbt.cli.main import dbtRunnerResult
    from dbt.contracts.graph.manifest import Manifest

MARTS = ("subscriptions_profile", "usage_agg_30d", "payments_agg_90d", "support_agg_90d", "labels")
SNAPSHOTS = ("snap_users", "snap_subscriptions")
MART_SCHEMA = "marts"
SNAPSHOT_SCHEMA = "snapshots"
BUILD_LOG_TABLE = "dbt_build_log"
SAMPLE_ROWS = 5
BUILD_LOCK_KEY = 804_121_002  # advisory lock: one build at a time per database
SOURCE_SELECTOR = "source:raw"
# dbt commands that need neither the installed packages nor a database
_NO_PACKAGES = {"deps", "clean", "init", "--version", "-v", "--help", "-h"}
_SOURCE_IN_KWARG = re.compile(r"source\(\s*['\"](\w+)['\"]\s*,\s*['\"](\w+)['\"]\s*\)")
_REF_IN_KWARG = re.compile(r"ref\(\s*['\"](\w+)['\"]\s*\)")


class DbtError(RuntimeError):
    """dbt could not do its job (compile or database error, a failing model test): a clear message."""


class GateFailed(DbtError):
    """The quality gate refused a drop: snapshots and marts were not touched."""

    def __init__(self, report: GateReport):
        self.report = report
        super().__init__(report.render())


# ---------------------------------------------------------------------------------------
# running dbt in-process
# ---------------------------------------------------------------------------------------
def dbt_vars(settings: Settings, as_of: date | None = None) -> dict[str, Any]:
    """The dbt vars of a run: the month (None = the newest loaded drop) and the gate's threshold."""
    out: dict[str, Any] = {"gate_max_subscriber_change": settings.gate_max_subscriber_change}
    if as_of is not None:
        out["as_of"] = as_of.isoformat()
    return out


@contextlib.contextmanager
def _environment(settings: Settings) -> Iterator[None]:
    """os.environ as the dbt profile and CLI expect it, for the duration of one dbt call."""
    from streamflow.core.env import tool_environment

    wanted = tool_environment(settings)
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def invoke(
    settings: Settings,
    args: Sequence[str],
    *,
    manifest: Manifest | None = None,
    callbacks: list[Callable] | None = None,
) -> dbtRunnerResult:
    """Run one dbt command in this process (dbtRunner) with the platform's environment."""
    from dbt.cli.main import dbtRunner

    settings.dbt_target_dir.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        manifest = _fresh_copy(manifest)
    with _environment(settings):
        return dbtRunner(manifest=manifest, callbacks=callbacks or []).invoke(list(args))


def _fresh_copy(manifest: Manifest) -> Manifest:
    """A copy of a parsed manifest for one more run. dbt compiles nodes in place (ephemeral CTEs are
    injected once), so each run needs its own. Only the data fields are copied: copy.deepcopy goes
    through Manifest.__reduce_ex__, which in dbt 1.11 misses `fixtures` and shifts the cached lookups
    into the wrong fields; the lookups are rebuilt lazily instead."""
    data = {
        f.name: copy.deepcopy(getattr(manifest, f.name))
        for f in dataclasses.fields(manifest)
        if f.init and not f.name.startswith("_")
    }
    return type(manifest)(**data)


def run(settings: Settings, args: Sequence[str]) -> int:
    """`streamflow dbt ARGS`: any dbt command, output as dbt prints it; returns dbt's exit code."""
    if not (set(args) & _NO_PACKAGES):
        ensure_packages(settings)
    res = invoke(settings, args)
    if res.exception is not None:
        return 2
    return 0 if res.success else 1


def ensure_packages(settings: Settings) -> None:
    """Install the project's (local) packages when they are missing: `dbt deps`, once, under a lock."""
    project = settings.dbt_project_dir
    wanted = _package_names(project)
    install = project / "dbt_packages"
    if all((install / name).exists() for name in wanted):
        return
    digest = hashlib.sha1(str(project).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"streamflow-dbt-deps-{digest}.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if all((install / name).exists() for name in wanted):
            return
        res = invoke(settings, ["deps", "--quiet"])
        if not res.success:
            raise DbtError(f"dbt deps failed: {res.exception or 'see the dbt log in ' + str(settings.dbt_log_dir)}")


def _package_names(project: Path) -> list[str]:
    """Names the packages of packages.yml install under (local packages: their dbt_project.yml name)."""
    import yaml

    spec = yaml.safe_load((project / "packages.yml").read_text()) or {}
    names = []
    for pkg in spec.get("packages") or []:
        if "local" in pkg:
            meta = yaml.safe_load((project / pkg["local"] / "dbt_project.yml").read_text())
            names.append(meta["name"])
        elif "package" in pkg:
            names.append(pkg["package"].split("/")[-1])
    return names


def parse(settings: Settings) -> Manifest:
    """`dbt parse`: the manifest (written to target/manifest.json). Needs no database."""
    ensure_packages(settings)
    res = invoke(settings, ["parse", "--quiet", "--vars", json.dumps(dbt_vars(settings))])
    if not res.success or res.result is None:
        raise DbtError(f"dbt parse failed: {_exception_text(res)}")
    return res.result


def manifest_path(settings: Settings) -> Path:
    """target/manifest.json, refreshed by `streamflow build` and `streamflow dbt parse`."""
    return settings.dbt_target_dir / "manifest.json"


def _exception_text(res: dbtRunnerResult) -> str:
    if res.exception is not None:
        return str(res.exception).strip()
    return "see the dbt log"


# ---------------------------------------------------------------------------------------
# the gate report
# ---------------------------------------------------------------------------------------
@dataclass
class FailedTest:
    """One failing (or erroring) test of the gate, with where its rows came from."""

    test: str  # generic test name, e.g. expect_column_values_to_be_between
    node: str  # dbt's unique test name
    table: str  # e.g. raw.sessions
    column: str | None
    status: str  # fail | error | warn
    failing_rows: int | None
    message: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def render(self) -> str:
        if self.column and "," in self.column:
            where = f"{self.table} ({self.column})"
        else:
            where = self.table + (f".{self.column}" if self.column else "")
        if self.status == "error":
            count = "could not run"
        elif self.failing_rows is not None:
            count = f"{self.failing_rows:,} failing row{'s' if self.failing_rows != 1 else ''}"
        else:
            count = "failed"
        mark = "!" if self.status == "warn" else "x"
        lines = [f"{mark} {self.test}  {where}  {count}"]
        for f in self.files:
            lines.append(f"    file: {f}")
        if self.status == "error" and self.message:
            lines += [f"    {line}" for line in self.message.strip().splitlines()[:6]]
        if self.rows:
            lines.extend("    " + line for line in _table_lines(self.columns, self.rows))
        return "\n".join(lines)


@dataclass
class GateReport:
    """The quality gate's verdict on one drop month."""

    as_of: date
    drop: str | None = None  # drop folder
    failures: list[FailedTest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tests_run: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        head = f"Quality gate failed for drop {self.as_of}" + (f" ({self.drop})" if self.drop else "")
        if self.ok:
            head = f"Quality gate passed for drop {self.as_of}: {self.tests_run} tests"
            lines = [head]
        else:
            n = len(self.failures)
            lines = [f"{head}: {n} of {self.tests_run} tests failed. Snapshots and marts were not changed.", ""]
            lines += [f.render() for f in self.failures]
        if self.warnings:
            lines += ["", "warnings:"] + [f"! {w}" for w in self.warnings]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["as_of"] = self.as_of.isoformat()
        out["ok"] = self.ok
        return json.loads(json.dumps(out, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = str(value)
    return text if len(text) <= 32 else text[:31] + "…"


def _table_lines(columns: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*columns).rstrip()] + [fmt.format(*r).rstrip() for r in cells]


def _tested_table(node) -> str:
    """raw.<table> (or the model) a test is about, from its `model` argument."""
    kwargs = (node.test_metadata.kwargs or {}) if getattr(node, "test_metadata", None) else {}
    model_arg = str(kwargs.get("model", ""))
    m = _SOURCE_IN_KWARG.search(model_arg)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    m = _REF_IN_KWARG.search(model_arg)
    if m:
        return m.group(1)
    return getattr(node, "attached_node", None) or "?"


def _tested_columns(node) -> list[str]:
    kwargs = (node.test_metadata.kwargs or {}) if getattr(node, "test_metadata", None) else {}
    cols: list[str] = []
    if getattr(node, "column_name", None):
        cols.append(node.column_name)
    for key in ("column_list", "column_A", "column_B"):
        value = kwargs.get(key)
        if isinstance(value, list):
            cols += [str(v) for v in value]
        elif value:
            cols.append(str(value))
    return list(dict.fromkeys(cols))


def _sample_columns(all_columns: list[str], table: str, tested: list[str]) -> list[int]:
    """Which columns of a failing row to show: the drop file's key, the tested columns and what the
    test added (n_records, problem, ...). Aggregate results are shown whole."""
    from streamflow.drops import contract

    spec = contract.FILES.get(table.split(".")[-1])
    if spec is None or not set(spec.header) <= set(all_columns):
        return list(range(len(all_columns)))
    keep = [*spec.key, "user_id", *tested, *[c for c in all_columns if c not in spec.header and c != "as_of"]]
    keep = list(dict.fromkeys(keep))
    return [all_columns.index(c) for c in keep if c in all_columns]


def _drop_files(conn, table: str, as_ofs: list[date]) -> list[str]:
    """drop_path/<file> of the given months, from raw.load_log."""
    name = table.split(".")[-1]
    rows = conn.execute(
        "select drop_path, files -> %s ->> 'path' from raw.load_log where as_of = any(%s) order by as_of",
        (name, as_ofs),
    ).fetchall()
    return [str(Path(p) / f) if f else str(p) for p, f in rows]


def _failure_from_result(conn, result, month: date) -> FailedTest:
    node = result.node
    meta = getattr(node, "test_metadata", None)
    test = meta.name if meta else node.name
    table = _tested_table(node)
    tested = _tested_columns(node)
    status = str(result.status.value if hasattr(result.status, "value") else result.status)
    failure = FailedTest(
        test=test,
        node=node.name,
        table=table,
        column=", ".join(tested) or None,
        status=status,
        failing_rows=result.failures if status != "error" else None,
        message=result.message or "",
    )
    as_ofs = [month]
    compiled = getattr(node, "compiled_code", None)
    if status != "error" and compiled:
        import psycopg

        try:
            with conn.transaction():
                cur = conn.execute(f"select * from ({compiled}) as failing limit {SAMPLE_ROWS}")
                names = [d.name for d in cur.description]
                rows = cur.fetchall()
        except psycopg.Error as exc:
            failure.message = f"(sample rows unavailable: {str(exc).strip().splitlines()[0]})"
        else:
            keep = _sample_columns(names, table, tested)
            failure.columns = [names[i] for i in keep]
            failure.rows = [[row[i] for i in keep] for row in rows]
            if "as_of" in names:
                found = sorted({r[names.index("as_of")] for r in rows if isinstance(r[names.index("as_of")], date)})
                as_ofs = found or as_ofs
    if table.startswith("raw."):
        failure.files = _drop_files(conn, table, as_ofs)
    return failure


# ---------------------------------------------------------------------------------------
# planning: which months to build
# ---------------------------------------------------------------------------------------
@dataclass
class BuildPlan:
    months: list[date]
    full_refresh: bool
    reason: str


class PlanError(DbtError):
    """Nothing can be built as asked (no drop loaded, an unknown month)."""


def plan_build(
    loaded: dict[date, str],
    built: dict[date, str],
    as_of: date | None = None,
    full_refresh: bool = False,
) -> BuildPlan:
    """Which drop months to process, in order, and whether snapshots and marts must be rebuilt.

    ``loaded`` and ``built`` map as_of to the version of the drop (manifest sha256 and load time,
    from raw.load_log and the build log). A built month whose drop was reloaded (`ingest
    --rebuild`), replaced by other content or removed forces a rebuild of everything from the raw
    history; otherwise only the months not built yet are processed, in order.
    """
    if not loaded:
        raise PlanError("No drop is loaded: run `streamflow ingest DROP_DIR` first.")
    target = as_of or max(loaded)
    if target not in loaded:
        known = ", ".join(d.isoformat() for d in sorted(loaded))
        raise PlanError(f"as_of {target} is not a loaded drop. Loaded: {known}.")
    upto = sorted(m for m in loaded if m <= target)
    if full_refresh:
        return BuildPlan(upto, True, "full refresh requested")
    changed = sorted(m for m in built if loaded.get(m) != built[m])
    if changed:
        gone = [m for m in changed if m not in loaded]
        what = "no longer loaded" if len(gone) == len(changed) else "reloaded since they were built"
        if gone and len(gone) != len(changed):
            what = "reloaded or no longer loaded"
        months = ", ".join(m.isoformat() for m in changed)
        return BuildPlan(upto, True, f"built month(s) {months} {what}: rebuilding from the raw history")
    pending = [m for m in upto if m not in built]
    if built and pending and min(pending) < max(built):
        return BuildPlan(
            upto,
            True,
            f"drop {min(pending)} is older than the built month {max(built)}: rebuilding from the raw history",
        )
    if not pending:
        return BuildPlan([], False, f"up to date (built through {max(built)})" if built else "up to date")
    return BuildPlan(pending, False, f"{len(pending)} new month(s)")


# ---------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    months: list[date]
    full_refresh: bool
    reason: str
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    month_seconds: dict[date, float] = field(default_factory=dict)
    gate_reports: list[GateReport] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.months


class _Progress:
    """Optional rich progress: one bar over every dbt node of the build, named after the current one."""

    def __init__(self, enabled: bool, console=None):
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._console = console
        self.stage = ""

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self._console or Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("dbt", total=None)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def set_total(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def stage_to(self, text: str) -> None:
        self.stage = text
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def callback(self, event) -> None:
        if self._progress is None:
            return
        name = event.info.name
        if name == "NodeStart":
            node = event.data.node_info.node_name
            self._progress.update(self._task, description=f"{self.stage}: {node}")
        elif name == "NodeFinished":
            self._progress.advance(self._task)


def _count_nodes(manifest: Manifest) -> tuple[int, int]:
    """(gate tests, nodes of one month's build) for the progress bar; unit tests do not run there."""
    gate = build = 0
    for node in manifest.nodes.values():
        rtype = str(node.resource_type)
        if rtype.endswith("test"):
            parents = node.depends_on.nodes
            if parents and all(p.startswith("source.") for p in parents):
                gate += 1
            else:
                build += 1
        elif rtype.endswith(("model", "snapshot")) and getattr(node.config, "materialized", "") != "ephemeral":
            build += 1
    return gate, build


def _ensure_build_log(conn, settings: Settings) -> str:
    schema = settings.dbt_target_schema
    conn.execute(f'create schema if not exists "{schema}"')
    conn.execute(
        f'''create table if not exists "{schema}".{BUILD_LOG_TABLE} (
            as_of date primary key,
            drop_version text not null,
            built_at timestamptz not null default now()
        )'''
    )
    conn.execute(
        f"""comment on table "{schema}".{BUILD_LOG_TABLE} is 'Drop months the snapshots and marts hold, with the """
        """version of the drop (manifest sha256 @ load time) they were built from (written by streamflow build).'"""
    )
    return f'"{schema}".{BUILD_LOG_TABLE}'


def drop_version(manifest_sha256: str, loaded_at: datetime) -> str:
    """What identifies one load of a drop: its manifest and when it was loaded (a reload by
    `ingest --rebuild` changes the latter even for the same files)."""
    return f"{manifest_sha256}@{loaded_at.astimezone(UTC).isoformat()}"


def _loaded_months(conn) -> dict[date, str]:
    if conn.execute("select to_regclass('raw.load_log')").fetchone()[0] is None:
        return {}
    rows = conn.execute("select as_of, manifest_sha256, loaded_at from raw.load_log").fetchall()
    return {as_of: drop_version(sha, loaded_at) for as_of, sha, loaded_at in rows}


def _existing_relations(conn) -> int:
    """How many of the snapshots and marts exist (someone may have dropped some by hand)."""
    names = [f"{SNAPSHOT_SCHEMA}.{s}" for s in SNAPSHOTS] + [f"{MART_SCHEMA}.{m}" for m in MARTS]
    return sum(conn.execute("select to_regclass(%s)", (n,)).fetchone()[0] is not None for n in names)


def _run_results(res: dbtRunnerResult) -> list:
    result = res.result
    return list(getattr(result, "results", None) or [])


def _status(result) -> str:
    status = result.status
    return str(status.value if hasattr(status, "value") else status)


def gate(
    settings: Settings,
    as_of: date,
    *,
    manifest: Manifest | None = None,
    conn=None,
    progress: _Progress | None = None,
) -> GateReport:
    """Run the source tests (the quality gate) for one drop month; the report says what failed."""
    if manifest is None:
        manifest = parse(settings)
    args = ["test", "--select", SOURCE_SELECTOR, "--vars", json.dumps(dbt_vars(settings, as_of)), "--log-level", "none"]
    res = invoke(settings, args, manifest=manifest, callbacks=[progress.callback] if progress else None)
    if res.exception is not None:
        raise DbtError(f"the quality gate could not run for drop {as_of}: {_exception_text(res)}")
    results = []
    for r in _run_results(res):
        if str(r.node.resource_type).endswith("test"):
            results.append(r)
        elif _status(r) in ("error", "runtime error"):  # e.g. the on-run-start check of the month
            raise DbtError(f"the quality gate could not run for drop {as_of}: {(r.message or '').strip()}")
    if not results and not res.success:
        raise DbtError(f"the quality gate could not run for drop {as_of}: see the dbt log in {settings.dbt_log_dir}")
    with contextlib.ExitStack() as stack:
        if conn is None:
            conn = stack.enter_context(_warehouse(settings))
        row = conn.execute("select drop_name from raw.load_log where as_of = %s", (as_of,)).fetchone()
        report = GateReport(as_of=as_of, drop=row[0] if row else None, tests_run=len(results))
        for r in results:
            status = _status(r)
            if status in ("fail", "error", "runtime error"):
                report.failures.append(_failure_from_result(conn, r, as_of))
            elif status == "warn":
                w = _failure_from_result(conn, r, as_of)
                report.warnings.append(f"{w.test} on {w.table}.{w.column}: {w.failing_rows} rows")
    report.failures.sort(key=lambda f: (f.table, f.column or "", f.test))
    return report


def freshness_warnings(settings: Settings, manifest: Manifest | None = None) -> list[str]:
    """`dbt source freshness` on raw.load_log: a warning per stale source (wall clock; never fatal)."""
    res = invoke(
        settings,
        [
            "source",
            "freshness",
            "--select",
            SOURCE_SELECTOR,
            "--log-level",
            "none",
            "--vars",
            json.dumps(dbt_vars(settings)),
        ],
        manifest=manifest,
    )
    out = []
    for r in _run_results(res):
        status = _status(r)
        if status == "pass" or not hasattr(r.node, "source_name"):
            continue
        name = f"{r.node.source_name}.{r.node.name}" if hasattr(r.node, "source_name") else str(r.node)
        if status == "warn":
            age_days = (r.age or 0) / 86400
            out.append(
                f"freshness of {name}: the newest drop was loaded {age_days:.0f} days ago ({r.max_loaded_at:%Y-%m-%d})"
            )
        else:
            out.append(f"freshness of {name} could not be checked: {getattr(r, 'message', status)}")
    if res.exception is not None:
        out.append(f"freshness could not be checked: {_exception_text(res)}")
    return out


def _raise_for_build(res: dbtRunnerResult, as_of: date) -> None:
    if res.exception is not None:
        raise DbtError(f"dbt build failed for drop {as_of}: {_exception_text(res)}")
    bad = [r for r in _run_results(res) if _status(r) in ("fail", "error", "runtime error")]
    if bad or not res.success:
        lines = [f"dbt build failed for drop {as_of}:"]
        for r in bad:
            kind = str(r.node.resource_type).split(".")[-1]
            msg = (r.message or "").strip().splitlines()
            lines.append(f"  x {kind} {r.node.name}: {msg[0] if msg else _status(r)}")
            lines += [f"      {line}" for line in msg[1:6]]
        skipped = [r.node.name for r in _run_results(res) if _status(r) == "skipped"]
        if skipped:
            lines.append(f"  skipped because of it: {', '.join(skipped)}")
        raise DbtError("\n".join(lines))


def build(
    settings: Settings,
    as_of: date | None = None,
    *,
    full_refresh: bool = False,
    progress: bool = False,
    console=None,
) -> BuildResult:
    """Bring snapshots and marts up to ``as_of`` (default: the newest loaded drop).

    Raises GateFailed (with the report) when a drop fails the quality gate: nothing is changed then.
    Raises PlanError when nothing can be built as asked, DbtError when dbt itself fails.
    """

    started = time.perf_counter()
    with _warehouse(settings, autocommit=True) as conn:
        if not conn.execute("select pg_try_advisory_lock(%s)", (BUILD_LOCK_KEY,)).fetchone()[0]:
            raise DbtError("another `streamflow build` is running on this warehouse; try again when it ends")
        try:
            log = _ensure_build_log(conn, settings)
            loaded = _loaded_months(conn)
            built = {r[0]: r[1] for r in conn.execute(f"select as_of, drop_version from {log}")}
            present = _existing_relations(conn)
            expected = len(SNAPSHOTS) + len(MARTS)
            # snapshots or marts missing, or present with no record of what they hold: rebuild them all
            unknown = (bool(built) and present < expected) or (not built and present > 0)
            plan = plan_build(loaded, {} if unknown else built, as_of, full_refresh or unknown)
            if unknown and not full_refresh:
                plan.reason = "snapshots and marts do not match the build log: rebuilding from the raw history"
            result = BuildResult(months=plan.months, full_refresh=plan.full_refresh, reason=plan.reason)
            with _Progress(progress, console) as bar:
                bar.stage_to("parsing the dbt project")
                manifest = parse(settings)
                bar.stage_to("source freshness")
                result.warnings += freshness_warnings(settings, manifest)
                if not plan.months:
                    result.seconds = time.perf_counter() - started
                    return result
                n_gate, n_build = _count_nodes(manifest)
                bar.set_total(len(plan.months) * (n_gate + n_build))
                # the gate: every month first, so a bad drop changes nothing
                for month in plan.months:
                    bar.stage_to(f"gate {month}")
                    report = gate(settings, month, manifest=manifest, conn=conn, progress=bar)
                    report.warnings = result.warnings + report.warnings
                    _write_report(settings, report)
                    result.gate_reports.append(report)
                    if not report.ok:
                        raise GateFailed(report)
                if plan.full_refresh:
                    for snap in SNAPSHOTS:
                        conn.execute(f"drop table if exists {SNAPSHOT_SCHEMA}.{snap}")
                    conn.execute(f"delete from {log}")
                for i, month in enumerate(plan.months):
                    bar.stage_to(f"build {month}")
                    t0 = time.perf_counter()
                    # dbt unit tests check the SQL, not the data: they run in CI (and with plain `dbt build`),
                    # not in every monthly build, as dbt recommends for production runs
                    args = [
                        "build",
                        "--exclude",
                        SOURCE_SELECTOR,
                        "--exclude-resource-type",
                        "unit_test",
                        "--vars",
                        json.dumps(dbt_vars(settings, month)),
                        "--log-level",
                        "none",
                    ]
                    if plan.full_refresh and i == 0:
                        args.append("--full-refresh")
                    res = invoke(settings, args, manifest=manifest, callbacks=[bar.callback])
                    _raise_for_build(res, month)
                    _log_built(conn, log, month, loaded[month])
                    result.month_seconds[month] = time.perf_counter() - t0
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (BUILD_LOCK_KEY,))
    result.seconds = time.perf_counter() - started
    return result


def record_built(settings: Settings, as_of: date) -> None:
    """Note drop month ``as_of`` as built in the build log, as `streamflow build` does, after its dbt
    nodes ran elsewhere (Airflow runs them one task per node). The next `streamflow build` then
    starts after it, or rebuilds from the raw history if that drop is reloaded later."""
    with _warehouse(settings, autocommit=True) as conn:
        log = _ensure_build_log(conn, settings)
        version = _loaded_months(conn).get(as_of)
        if version is None:
            raise PlanError(f"as_of {as_of} is not a loaded drop: nothing to record")
        _log_built(conn, log, as_of, version)


def _log_built(conn, log: str, as_of: date, version: str) -> None:
    conn.execute(
        f"insert into {log} (as_of, drop_version) values (%s, %s) on conflict (as_of) do update "
        "set drop_version = excluded.drop_version, built_at = excluded.built_at",
        (as_of, version),
    )


@contextlib.contextmanager
def _warehouse(settings: Settings, **kwargs) -> Iterator:
    """A warehouse connection, or a DbtError that says the database cannot be reached."""
    import psycopg

    from streamflow.core.db import connect

    try:
        conn = connect(settings, **kwargs)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DbtError(
            f"the warehouse database is not reachable ({first}); start it with `streamflow stack up` "
            "or check STREAMFLOW_DATABASE_URL"
        ) from None
    with conn:
        yield conn


def _write_report(settings: Settings, report: GateReport) -> None:
    """reports/dbt_gate_<as_of>.json: the gate's verdict for tools (Airflow, the demo)."""
    with contextlib.suppress(OSError):
        settings.reports_dir.mkdir(parents=True, exist_ok=True)
        path = settings.reports_dir / f"dbt_gate_{report.as_of.isoformat()}.json"
        path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")


# ---------------------------------------------------------------------------------------
# what the marts hold
# ---------------------------------------------------------------------------------------
def mart_row_counts(settings: Settings) -> dict[date, dict[str, int]]:
    """{as_of: {mart: rows}} for every built month; labels are counted by their period_start."""

    out: dict[date, dict[str, int]] = {}
    with _warehouse(settings) as conn:
        for mart in MARTS:
            if conn.execute("select to_regclass(%s)", (f"{MART_SCHEMA}.{mart}",)).fetchone()[0] is None:
                continue
            column = "period_start" if mart == "labels" else "as_of"
            rows = conn.execute(
                f"select ({column} at time zone 'UTC')::date, count(*) from {MART_SCHEMA}.{mart} group by 1"
            ).fetchall()
            for day, n in rows:
                out.setdefault(day, {m: 0 for m in MARTS})[mart] = n
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------
# docs
# ---------------------------------------------------------------------------------------
def generate_docs(settings: Settings) -> Path:
    """`dbt docs generate`: target/index.html with the catalog of the built warehouse."""
    ensure_packages(settings)
    res = invoke(settings, ["docs", "generate", "--quiet", "--vars", json.dumps(dbt_vars(settings))])
    if not res.success:
        raise DbtError(f"dbt docs generate failed: {_exception_text(res)}")
    return settings.dbt_target_dir / "index.html"


def serve_docs(settings: Settings, port: int | None = None, host: str = "127.0.0.1") -> None:
    """`dbt docs serve` on localhost; blocks until interrupted."""
    res = invoke(settings, ["docs", "serve", "--port", str(port or settings.docs_port), "--host", host, "--no-browser"])
    if not res.success and res.exception is not None:
        raise DbtError(f"dbt docs serve failed: {_exception_text(res)}")
