"""The monthly build behind its quality gate, and the build log of what snapshots and marts hold.

`build(settings)` brings the warehouse up to the newest loaded drop: for every drop month not built
yet, in as_of order, it runs the source tests (the quality gate) and then the same dbt nodes an
analyst or Airflow runs for one month (`dbt build --vars '{"as_of": ...}'`). When an already built
month was re-ingested with other content or disappeared (`streamflow ingest --rebuild`), the
snapshots and marts are rebuilt from the raw history, month by month, beside the live ones, and swapped
in when complete (:mod:`streamflow.warehouse.rebuild`). Every month is gated before anything is touched,
so a bad drop leaves snapshots and marts exactly as they were.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from streamflow.core import faults, runlog
from streamflow.core.lock import pipeline_lock
from streamflow.core.months import BUILD_LOG_TABLE, build_log
from streamflow.core.names import MART_SCHEMA, MARTS, SNAPSHOT_SCHEMA, SNAPSHOTS
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.warehouse import rebuild
from streamflow.warehouse.connection import warehouse_connection
from streamflow.warehouse.gate import SOURCE_SELECTOR, GateFailed, GateReport, _write_report, freshness_warnings, gate
from streamflow.warehouse.progress import DbtProgress, _count_nodes
from streamflow.warehouse.runner import DbtError, _exception_text, _run_results, _status, dbt_vars, invoke, parse

if TYPE_CHECKING:
    from dbt.cli.main import dbtRunnerResult
    from dbt.contracts.graph.manifest import Manifest


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


def _ensure_build_log(conn, settings: Settings) -> str:
    """Create the build log when missing; returns its qualified name."""
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
    return build_log(settings)


def drop_version(manifest_sha256: str, loaded_at: datetime) -> str:
    """What identifies one load of a drop: its manifest and when it was loaded (a reload by
    `ingest --rebuild` changes the latter even for the same files)."""
    return f"{manifest_sha256}@{loaded_at.astimezone(UTC).isoformat()}"


def _loaded_versions(conn) -> dict[date, str]:
    """{as_of: drop version} of every loaded drop (raw.load_log)."""
    if conn.execute("select to_regclass('raw.load_log')").fetchone()[0] is None:
        return {}
    rows = conn.execute("select as_of, manifest_sha256, loaded_at from raw.load_log").fetchall()
    return {as_of: drop_version(sha, loaded_at) for as_of, sha, loaded_at in rows}


def _existing_relations(conn) -> int:
    """How many of the snapshots and marts exist (someone may have dropped some by hand)."""
    names = [f"{SNAPSHOT_SCHEMA}.{s}" for s in SNAPSHOTS] + [f"{MART_SCHEMA}.{m}" for m in MARTS]
    return sum(conn.execute("select to_regclass(%s)", (n,)).fetchone()[0] is not None for n in names)


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
    progress: Progress = SILENT,
) -> BuildResult:
    """Bring snapshots and marts up to ``as_of`` (default: the newest loaded drop).

    Raises GateFailed (with the report) when a drop fails the quality gate: nothing is changed then.
    Raises PlanError when nothing can be built as asked, DbtError when dbt itself fails.
    """
    started = time.perf_counter()
    with pipeline_lock(settings, "build", as_of), warehouse_connection(settings, autocommit=True) as conn:
        log = _ensure_build_log(conn, settings)
        runlog.ensure_month_log(conn, log)
        loaded = _loaded_versions(conn)
        built = {r[0]: r[1] for r in conn.execute(f"select as_of, drop_version from {log}")}
        plan = plan_for_warehouse(loaded, built, _existing_relations(conn), as_of, full_refresh)
        result = BuildResult(months=plan.months, full_refresh=plan.full_refresh, reason=plan.reason)
        bar = DbtProgress(progress)
        bar.stage_to("parsing the dbt project")
        manifest = parse(settings)
        bar.stage_to("source freshness")
        result.warnings += freshness_warnings(settings, manifest)
        if plan.months:
            n_gate, n_build = _count_nodes(manifest)
            bar.set_total(len(plan.months) * (n_gate + n_build))
            _gate_months(settings, conn, manifest, plan.months, result, bar)
            if plan.full_refresh:
                _rebuild_beside(settings, conn, log, plan, loaded, result, bar)
            else:
                _build_months(settings, conn, log, manifest, plan, loaded, result, bar)
    result.seconds = time.perf_counter() - started
    return result


def plan_for_warehouse(
    loaded: dict[date, str],
    built: dict[date, str],
    present: int,
    as_of: date | None = None,
    full_refresh: bool = False,
) -> BuildPlan:
    """:func:`plan_build`, when ``present`` of the snapshots and marts exist: some missing, or present
    with no record of what they hold, means rebuilding them all from the raw history."""
    expected = len(SNAPSHOTS) + len(MARTS)
    unknown = (bool(built) and present < expected) or (not built and present > 0)
    plan = plan_build(loaded, {} if unknown else built, as_of, full_refresh or unknown)
    if unknown and not full_refresh:
        plan.reason = "snapshots and marts do not match the build log: rebuilding from the raw history"
    return plan


def _gate_months(
    settings: Settings, conn, manifest: Manifest, months: list[date], result: BuildResult, bar: DbtProgress
) -> None:
    """The gate: every month first, so a bad drop changes nothing. Raises GateFailed."""
    for month in months:
        bar.stage_to(f"gate {month}")
        report = gate(settings, month, manifest=manifest, conn=conn, progress=bar)
        report.warnings = result.warnings + report.warnings
        _write_report(settings, report)
        result.gate_reports.append(report)
        if not report.ok:
            raise GateFailed(report)
        recorded = report.as_dict()  # the warned tests (test, column, rows, samples) and other warnings
        runlog.record_month(conn, month, "gated", {k: recorded[k] for k in ("warned", "warnings")})


def _rebuild_beside(
    settings: Settings, conn, log: str, plan: BuildPlan, loaded: dict[date, str], result: BuildResult, bar: DbtProgress
) -> None:
    """A full refresh: every month built into the shadow schemas, then swapped in at once (see
    :mod:`streamflow.warehouse.rebuild`). Until the swap, the live snapshots, marts and logs are untouched."""
    bar.stage_to("parsing the rebuild")
    result.warnings += rebuild.drop_leftovers(conn)
    manifest = rebuild.parse_shadow(settings)
    _build_months(settings, conn, None, manifest, plan, loaded, result, bar, shadow=True)
    bar.stage_to("swapping the rebuilt history in")
    result.warnings += rebuild.swap(conn, log, {m: loaded[m] for m in plan.months})


def _build_months(
    settings: Settings,
    conn,
    log: str | None,
    manifest: Manifest,
    plan: BuildPlan,
    loaded: dict[date, str],
    result: BuildResult,
    bar: DbtProgress,
    shadow: bool = False,
) -> None:
    """`dbt build` of each planned month in order, each noted in the build log once it is built (``shadow``:
    into the rebuild's schemas, recorded only by the swap)."""
    for i, month in enumerate(plan.months):
        bar.stage_to(f"build {month}")
        t0 = time.perf_counter()
        args = build_args(settings, month, full_refresh=plan.full_refresh and i == 0, shadow=shadow)
        res = invoke(settings, args, manifest=manifest, callbacks=[bar.callback, _snapshot_fault_point])
        _raise_for_build(res, month)
        if not shadow:
            _log_built(conn, log, month, loaded[month])
            runlog.record_month(conn, month, "built", {"drop_version": loaded[month]})
        result.month_seconds[month] = time.perf_counter() - t0
        if i < len(plan.months) - 1:
            faults.pause("build.month")


def _snapshot_fault_point(event) -> None:
    """dbt event callback: the fault point between a month's snapshots and the marts built from them."""
    if event.info.name == "NodeFinished" and event.data.node_info.unique_id.startswith("snapshot."):
        faults.pause("build.snapshot")


def build_args(settings: Settings, month: date, full_refresh: bool = False, shadow: bool = False) -> list[str]:
    """The dbt arguments of one month's build (everything but the gate's source tests); ``shadow``: into the
    schemas and target folder of a full refresh (:mod:`streamflow.warehouse.rebuild`).

    dbt unit tests check the SQL, not the data: they run in CI (and with plain `dbt build`), not in
    every monthly build, as dbt recommends for production runs."""
    args = [
        "build",
        "--exclude",
        SOURCE_SELECTOR,
        "--exclude-resource-type",
        "unit_test",
        "--vars",
        json.dumps(rebuild.shadow_vars(settings, month) if shadow else dbt_vars(settings, month)),
        "--log-level",
        "none",
    ]
    if shadow:
        args += ["--target-path", str(rebuild.target_path(settings))]
    if full_refresh:
        args.append("--full-refresh")
    return args


def record_built(settings: Settings, as_of: date) -> None:
    """Note drop month ``as_of`` as built in the build log, as `streamflow build` does, after its dbt
    nodes ran elsewhere (Airflow runs them one task per node). The next `streamflow build` then
    starts after it, or rebuilds from the raw history if that drop is reloaded later."""
    with pipeline_lock(settings, "build", as_of), warehouse_connection(settings) as conn, conn.transaction():
        log = _ensure_build_log(conn, settings)
        runlog.ensure_month_log(conn, log)
        version = _loaded_versions(conn).get(as_of)
        if version is None:
            raise PlanError(f"as_of {as_of} is not a loaded drop: nothing to record")
        _log_built(conn, log, as_of, version)
        runlog.record_month(conn, as_of, "gated")  # its dbt nodes ran after the gate's task passed
        runlog.record_month(conn, as_of, "built", {"drop_version": version})


def _log_built(conn, log: str, as_of: date, version: str) -> None:
    conn.execute(
        f"insert into {log} (as_of, drop_version) values (%s, %s) on conflict (as_of) do update "
        "set drop_version = excluded.drop_version, built_at = excluded.built_at",
        (as_of, version),
    )


# ---------------------------------------------------------------------------------------
# what the marts hold
# ---------------------------------------------------------------------------------------
def mart_row_counts(settings: Settings) -> dict[date, dict[str, int]]:
    """{as_of: {mart: rows}} for every built month; labels are counted by their period_start."""
    out: dict[date, dict[str, int]] = {}
    with warehouse_connection(settings) as conn:
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
