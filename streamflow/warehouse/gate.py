"""The quality gate: a drop month's source tests (``dbt test --select source:raw``) and its report,
which names every failing test with sample rows and the drop files they came from.

A month that fails the gate is not built: snapshots and marts stay exactly as they were. A test
whose severity is ``warn`` (a rule on a value no mart or feature reads, such as an unseen ticket
category) never fails the month: it is reported, with the same details, in ``GateReport.warned``.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from streamflow.core.settings import Settings
from streamflow.drops import contract
from streamflow.warehouse.connection import warehouse_connection
from streamflow.warehouse.progress import DbtProgress
from streamflow.warehouse.runner import DbtError, _exception_text, _run_results, _status, dbt_vars, invoke, parse

if TYPE_CHECKING:
    from dbt.contracts.graph.manifest import Manifest

SAMPLE_ROWS = 5
SOURCE_SELECTOR = "source:raw"
_SOURCE_IN_KWARG = re.compile(r"source\(\s*['\"](\w+)['\"]\s*,\s*['\"](\w+)['\"]\s*\)")
_REF_IN_KWARG = re.compile(r"ref\(\s*['\"](\w+)['\"]\s*\)")


class GateFailed(DbtError):
    """The quality gate refused a drop: snapshots and marts were not touched."""

    def __init__(self, report: GateReport):
        self.report = report
        super().__init__(report.render())


# ---------------------------------------------------------------------------------------
# the gate report
# ---------------------------------------------------------------------------------------
@dataclass
class FailedTest:
    """One failing, erroring or warning test of the gate, with where its rows came from."""

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
    warnings: list[str] = field(default_factory=list)  # not about one test, e.g. source freshness
    tests_run: int = 0
    warned: list[FailedTest] = field(default_factory=list)  # tests of severity warn that found rows

    @property
    def ok(self) -> bool:
        return not self.failures

    def warning_lines(self) -> list[str]:
        """Every warning in one line each: the warned tests (test, table.column, failing rows), then
        the other warnings."""
        return [w.render().splitlines()[0].removeprefix("! ") for w in self.warned] + list(self.warnings)

    def render(self) -> str:
        head = f"Quality gate failed for drop {self.as_of}" + (f" ({self.drop})" if self.drop else "")
        if self.ok:
            head = f"Quality gate passed for drop {self.as_of}: {self.tests_run} tests"
            if self.warned:
                head += f", {len(self.warned)} warned (the month goes on)"
            lines = [head]
        else:
            n = len(self.failures)
            lines = [f"{head}: {n} of {self.tests_run} tests failed. Snapshots and marts were not changed.", ""]
            lines += [f.render() for f in self.failures]
        if self.warned or self.warnings:
            lines += ["", "warnings:"] + [w.render() for w in self.warned] + [f"! {w}" for w in self.warnings]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The report as JSON-ready data: failures and warned tests with their test, table, column,
        failing rows, sample rows and drop files; ``warnings`` for the others."""
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


def gate(
    settings: Settings,
    as_of: date,
    *,
    manifest: Manifest | None = None,
    conn=None,
    progress: DbtProgress | None = None,
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
            conn = stack.enter_context(warehouse_connection(settings))
        row = conn.execute("select drop_name from raw.load_log where as_of = %s", (as_of,)).fetchone()
        report = GateReport(as_of=as_of, drop=row[0] if row else None, tests_run=len(results))
        for r in results:
            status = _status(r)
            if status in ("fail", "error", "runtime error"):
                report.failures.append(_failure_from_result(conn, r, as_of))
            elif status == "warn":  # severity warn: reported with the same details, never fatal
                report.warned.append(_failure_from_result(conn, r, as_of))
    for tests in (report.failures, report.warned):
        tests.sort(key=lambda f: (f.table, f.column or "", f.test))
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


def _write_report(settings: Settings, report: GateReport) -> None:
    """reports/dbt_gate_<as_of>.json: the gate's verdict for tools (Airflow, the demo)."""
    with contextlib.suppress(OSError):
        settings.reports_dir.mkdir(parents=True, exist_ok=True)
        path = settings.reports_dir / f"dbt_gate_{report.as_of.isoformat()}.json"
        path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
