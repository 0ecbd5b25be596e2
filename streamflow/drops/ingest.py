"""Load monthly drops into ``raw.*``: checked first, then COPY in one transaction, idempotent.

Every drop is read and checked first (:mod:`streamflow.drops.checks`: manifest, files, header, UTF-8).
Values are parsed by PostgreSQL's COPY into typed columns; when a value does not parse, the file is
scanned to name the first offending lines. Ids are checked against the contract's pattern.

Each raw table is partitioned by ``as_of``. A month is loaded into a fresh table that is attached as
that month's partition, so replacing a month is a swap inside one transaction, and reloading the
same drop changes nothing. Business rules that need SQL (ranges, accepted values, relationships)
belong to the dbt quality gate, not here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psycopg

from streamflow.core import faults, runlog
from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import CHURN_SCORES
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.drops import aggregated, contract
from streamflow.drops.checks import CHUNK, Drop, DropFile, IngestError, Problem, read_drop, scan_values


# ---------------------------------------------------------------------------------------
# the database side
# ---------------------------------------------------------------------------------------
def raw_ddl() -> list[str]:
    """DDL of the raw schema, idempotent."""
    stmts = ["create schema if not exists raw"]
    for spec in [*contract.FILES.values(), *aggregated.RAW_TABLES.values()]:
        cols = ["as_of date not null"] + [f"{c.name} {contract.PG_TYPES[c.type]}" for c in spec.columns]
        stmts.append(f"create table if not exists raw.{spec.table} ({', '.join(cols)}) partition by list (as_of)")
    stmts.append(
        """create table if not exists raw.load_log (
            as_of date primary key,
            drop_name text not null,
            drop_path text not null,
            manifest_sha256 text not null,
            files jsonb not null,
            loaded_at timestamptz not null default now()
        )"""
    )
    stmts.append(
        "comment on table raw.load_log is 'One row per loaded monthly drop: where it came from, "
        "its checksums and row counts, and when it was loaded.'"
    )
    return stmts


def ensure_raw_schema(conn) -> None:
    conn.execute(";\n".join(raw_ddl()))  # one round trip


def partition_name(table: str, as_of: date) -> str:
    return f"{table}__{as_of:%Y_%m_%d}"


@dataclass
class DropResult:
    name: str
    as_of: date
    status: str  # loaded | replaced | unchanged
    rows: dict[str, int]
    seconds: float


def ingest(
    settings: Settings,
    drop_dirs: Iterable[Path],
    rebuild: bool = False,
    progress: Progress = SILENT,
    forget_aggregated: bool = False,
) -> list[DropResult]:
    """Check and load drops in as_of order, all in one transaction. Raises IngestError.

    With ``rebuild`` the loaded event drops are replaced by exactly these drops; the months imported in the
    aggregated layout are kept as loaded (reported ``kept``) unless an event drop of the same month replaces
    one or ``forget_aggregated`` drops them all. ``progress`` counts the bytes loaded."""
    drops = _read_drops(drop_dirs)
    progress.start("loading", total=sum(f.path.stat().st_size for d in drops for f in d.files.values()))
    with pipeline_lock(settings, "ingest", drops[-1].as_of), connect(settings) as conn, conn.transaction():
        conn.execute("set local timezone = 'UTC'")
        conn.execute("set local datestyle = 'ISO, YMD'")
        ensure_raw_schema(conn)
        runlog.ensure_month_log(conn)
        loaded = {r[0]: r[1] for r in conn.execute("select as_of, manifest_sha256 from raw.load_log")}
        kept: list[DropResult] = []
        if rebuild:
            new = {d.as_of for d in drops}
            imported = {} if forget_aggregated else _aggregated_months(conn)
            kept = [r for as_of, r in sorted(imported.items()) if as_of not in new]
            _forget_history(conn, loaded, new, [r.as_of for r in kept])
            loaded = {}
        results = [_load_one(conn, d, loaded, progress) for d in drops]
    return sorted([*kept, *results], key=lambda r: r.as_of)


def _aggregated_months(conn) -> dict[date, DropResult]:
    """The loaded months of the aggregated layout (their raw.load_log entry lists a table only that layout
    has), as results of status ``kept``."""
    rows = conn.execute(
        "select as_of, drop_name, files from raw.load_log where files ?| %s order by as_of",
        (list(aggregated.RAW_TABLES),),
    ).fetchall()
    return {
        as_of: DropResult(name, as_of, "kept", {t: f["rows"] for t, f in files.items()}, 0.0)
        for as_of, name, files in rows
    }


def _load_one(conn, d: Drop, loaded: dict[date, str], progress: Progress) -> DropResult:
    """Load one drop unless this very drop is loaded already; a month reloaded forgets its later states."""
    if loaded.get(d.as_of) == d.manifest_sha256:
        return DropResult(d.name, d.as_of, "unchanged", {t: f.rows for t, f in d.files.items()}, 0)
    _refuse_rewrite(d, loaded)
    start = time.perf_counter()
    status = "replaced" if d.as_of in loaded else "loaded"
    rows = _load_drop(conn, d, progress)
    loaded[d.as_of] = d.manifest_sha256
    runlog.forget_months(conn, d.as_of)
    runlog.record_month(conn, d.as_of, "loaded", {"drop": d.name, "manifest_sha256": d.manifest_sha256})
    return DropResult(d.name, d.as_of, status, rows, time.perf_counter() - start)


def _forget_history(conn, loaded: dict[date, str], new: set[date], kept: list[date]) -> None:
    """``--rebuild``: drop every loaded month but the ``kept`` ones (aggregated months, loaded as they were),
    forget every month's states (the kept months are loaded again, nothing later), and remove what was
    derived from months the new history no longer has (their batch scores and drift decisions)."""
    for as_of in sorted(set(loaded) - set(kept)):
        _drop_month(conn, as_of)
    conn.execute("delete from raw.load_log where not (as_of = any(%s))", (kept,))
    runlog.forget_months(conn)
    for as_of, name, sha in conn.execute(
        "select as_of, drop_name, manifest_sha256 from raw.load_log order by as_of"
    ).fetchall():
        runlog.record_month(conn, as_of, "loaded", {"drop": name, "manifest_sha256": sha, "kept": True})
    gone = sorted(set(loaded) - new - set(kept))
    if not gone:
        return
    if conn.execute("select to_regclass(%s)", (CHURN_SCORES,)).fetchone()[0] is not None:
        conn.execute(f"delete from {CHURN_SCORES} where as_of = any(%s)", (gone,))
    if conn.execute("select to_regclass('ops.drift_reports')").fetchone()[0] is not None:
        conn.execute(
            "delete from ops.drift_reports where reference_as_of = any(%s) or current_as_of = any(%s)", (gone, gone)
        )


def _read_drops(drop_dirs: Iterable[Path]) -> list[Drop]:
    """Every drop read and checked, in as_of order; the problems of all of them in one IngestError."""
    drops: list[Drop] = []
    problems: list[Problem] = []
    for d in drop_dirs:
        try:
            drops.append(read_drop(Path(d)))
        except IngestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise IngestError(problems)
    if not drops:
        raise IngestError([Problem("(none)", "no drop folder given")])
    drops.sort(key=lambda x: x.as_of)
    seen: dict[date, str] = {}
    for d in drops:
        if d.as_of in seen:
            raise IngestError([Problem(d.name, f"two drops have as_of {d.as_of}: {seen[d.as_of]} and {d.name}")])
        seen[d.as_of] = d.name
    return drops


REBUILD_HINT = "to reload older months use --rebuild with every drop that should be loaded"
AGGREGATED_HINT = (
    "to load or replace an older month of the aggregated layout in place, the other months staying loaded, "
    "add --rebuild (streamflow ingest --layout aggregated --as-of DATE --rebuild DIR)"
)


def _refuse_rewrite(d: Drop | aggregated.AggregatedMonth, loaded: dict[date, str], hint: str = REBUILD_HINT) -> None:
    """History is append-only in business time: a drop older than the newest loaded month is refused."""
    newest = max(loaded) if loaded else None
    if newest is not None and d.as_of < newest:
        what = "replaces already loaded" if d.as_of in loaded else "is older than"
        raise IngestError(
            [
                Problem(
                    d.name,
                    f"as_of {d.as_of} {what} history: the newest loaded month is {newest}. History is "
                    f"append-only in business time; {hint}",
                )
            ]
        )


def _drop_month(conn, as_of: date, tables: Iterable[str] | None = None) -> None:
    for table in tables if tables is not None else [*contract.FILES, *aggregated.RAW_TABLES]:
        conn.execute(f'drop table if exists raw."{partition_name(table, as_of)}"')


def _load_drop(conn, d: Drop, progress: Progress) -> dict[str, int]:
    """COPY every file of a drop into a fresh table, then swap them in as the month's partitions."""
    rows: dict[str, int] = {}
    problems: list[Problem] = []
    new_tables: dict[str, str] = {}
    for table, f in d.files.items():
        tmp = f"_load_{partition_name(table, d.as_of)}"
        new_tables[table] = tmp
        conn.execute(_fresh_table_sql(table, tmp, d.as_of, f.spec))
        cols = ", ".join(f.spec.header)
        copy_sql = f'copy raw."{tmp}" ({cols}) from stdin with (format csv, header true)'
        try:
            # a savepoint: a failed COPY is explained, then everything rolls back
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(copy_sql) as copy, open(f.path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        copy.write(chunk)
                        progress.advance(len(chunk), f"{d.name}/{f.path.name}")
                        if len(new_tables) == 1 and fh.tell() <= CHUNK:
                            faults.pause("ingest.copy")  # the first chunk of the drop's first file
                rows[table] = cur.rowcount
        except psycopg.Error as exc:
            problems.extend(_explain_copy_error(d, f, exc))
            continue
        if rows[table] != f.rows:
            problems.append(
                Problem(
                    d.name,
                    "row count does not match the manifest",
                    file=f.path.name,
                    detail=f"manifest says {f.rows} rows, PostgreSQL read {rows[table]} "
                    "(a quoted field may span lines)",
                )
            )
    if problems:
        raise IngestError(problems)
    _drop_month(conn, d.as_of, aggregated.RAW_TABLES)  # a month of the other layout it replaces
    conn.execute(_swap_sql(new_tables, d.as_of))
    conn.execute(
        """insert into raw.load_log (as_of, drop_name, drop_path, manifest_sha256, files, loaded_at)
           values (%s, %s, %s, %s, %s, now())
           on conflict (as_of) do update set drop_name = excluded.drop_name, drop_path = excluded.drop_path,
             manifest_sha256 = excluded.manifest_sha256, files = excluded.files, loaded_at = excluded.loaded_at""",
        (d.as_of, d.name, str(d.path), d.manifest_sha256, json.dumps(d.log_files())),
    )
    return rows


def _fresh_table_sql(table: str, tmp: str, as_of: date, spec: contract.FileSpec) -> str:
    """The table a file is copied into: it checks its own month and the id format while COPY writes it
    (no second scan)."""
    day = as_of.isoformat()
    id_checks = "".join(
        f", constraint \"{tmp}_{c.name}_format\" check ({c.name} ~ '{contract.ID_PATTERN}')"
        for c in spec.columns
        if c.type == "id"
    )
    return (
        f'drop table if exists raw."{tmp}";'
        f'create table raw."{tmp}" (like raw.{table} including defaults, '
        f"constraint \"{tmp}_as_of\" check (as_of = '{day}'){id_checks});"
        f"alter table raw.\"{tmp}\" alter column as_of set default '{day}'"
    )


def _swap_sql(new_tables: dict[str, str], as_of: date) -> str:
    """The loaded tables become the month's partitions, replacing the ones there (one round trip)."""
    swap = []
    for table, tmp in new_tables.items():
        final = partition_name(table, as_of)
        swap += [
            f'drop table if exists raw."{final}"',
            f'alter table raw."{tmp}" rename to "{final}"',
            f"alter table raw.{table} attach partition raw.\"{final}\" for values in ('{as_of.isoformat()}')",
        ]
    return ";\n".join(swap)


_COPY_CONTEXT = re.compile(r'COPY [^,]+, line (\d+)(?:, column (\w+))?(?:: "(.*)")?', re.S)


def _explain_copy_error(d: Drop, f: DropFile, exc) -> list[Problem]:
    """Turn a COPY failure into problems with line numbers, by scanning the file."""
    found = scan_values(d.name, f)
    if found:
        return found
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag else None) or str(exc).splitlines()[0]
    context = (diag.context if diag else None) or ""
    m = _COPY_CONTEXT.search(context)
    lines = []
    column = None
    if m:
        column = m.group(2)
        lines = [(int(m.group(1)), m.group(3) or "")]
    return [
        Problem(d.name, f"PostgreSQL could not load the file: {primary}", file=f.path.name, column=column, lines=lines)
    ]


# ---------------------------------------------------------------------------------------
# the aggregated layout (one month per call; see streamflow.drops.aggregated)
# ---------------------------------------------------------------------------------------
def ingest_aggregated(
    settings: Settings, month_dir: Path, as_of: date, progress: Progress = SILENT, replace: bool = False
) -> DropResult:
    """Check and load one month of the aggregated layout as drop month ``as_of``, in one transaction, with
    the guarantees of :func:`ingest`: checks first, idempotent, append-only in business time. With
    ``replace`` (``--rebuild``) the month is put in place even before newer months (a corrected or a missing
    export): every other month stays loaded, and the later months forget their states but ``loaded`` (the
    next build rebuilds from the raw history)."""
    month = aggregated.read_month(Path(month_dir), as_of)
    progress.start("loading", total=sum(p.path.stat().st_size for p in month.files.values()))
    with pipeline_lock(settings, "ingest", as_of), connect(settings) as conn, conn.transaction():
        conn.execute("set local timezone = 'UTC'")
        conn.execute("set local datestyle = 'ISO, YMD'")
        ensure_raw_schema(conn)
        runlog.ensure_month_log(conn)
        loaded = {r[0]: r[1] for r in conn.execute("select as_of, manifest_sha256 from raw.load_log")}
        if loaded.get(as_of) == month.digest:
            return DropResult(month.name, as_of, "unchanged", {t: p.rows for t, p in month.files.items()}, 0)
        if not replace:
            _refuse_rewrite(month, loaded, AGGREGATED_HINT)
        _refuse_after_events(month, set(loaded) - set(_aggregated_months(conn)))
        start = time.perf_counter()
        status = "replaced" if as_of in loaded else "loaded"
        rows = _load_aggregated(conn, month, progress)
        runlog.forget_months(conn, as_of)
        for later in sorted(m for m in loaded if m > as_of):
            runlog.forget_months(conn, later, states=tuple(s for s in runlog.STATES if s != "loaded"))
        runlog.record_month(conn, as_of, "loaded", {"drop": month.name, "manifest_sha256": month.digest})
    return DropResult(month.name, as_of, status, rows, time.perf_counter() - start)


def _refuse_after_events(month: aggregated.AggregatedMonth, event_months: set[date]) -> None:
    """The aggregated layout starts a history; event drops continue it. A month of that layout after an event
    month would put pre-aggregated windows over events already counted (the marts carry aggregated months
    forward into event months, never back), so it is refused."""
    earlier = sorted(m for m in event_months if m < month.as_of)
    if earlier:
        raise IngestError(
            [
                Problem(
                    month.name,
                    f"as_of {month.as_of} comes after event drops already loaded ({', '.join(map(str, earlier))}): "
                    "a history may start in the aggregated layout and continue with event drops, not the other "
                    "way round; load this month as an event drop, or rebuild the history in order "
                    "(streamflow ingest --rebuild --forget-aggregated with the event drops)",
                )
            ]
        )


def _load_aggregated(conn, month: aggregated.AggregatedMonth, progress: Progress) -> dict[str, int]:
    """Each file COPYed into a temporary table of its own columns, inserted renamed into a fresh table, and
    the fresh tables swapped in as the month's partitions (the event tables' partitions of that month go)."""
    rows: dict[str, int] = {}
    new_tables: dict[str, str] = {}
    for table, part in month.files.items():
        spec = contract.FILES.get(table) or aggregated.RAW_TABLES[table]
        tmp = f"_load_{partition_name(table, month.as_of)}"
        temp = f"_file_{table}"
        new_tables[table] = tmp
        conn.execute(_fresh_table_sql(table, tmp, month.as_of, spec))
        conn.execute(aggregated.staging_ddl(part, temp))
        cols = ", ".join(f'"{c}"' for c in part.header)
        with conn.cursor() as cur:
            copy_sql = f'copy "{temp}" ({cols}) from stdin with (format csv, header true)'
            with cur.copy(copy_sql) as copy, open(part.path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    copy.write(chunk)
                    progress.advance(len(chunk), f"{month.name}/{part.path.name}")
            cur.execute(aggregated.insert_sql(part, temp, tmp, spec))
            rows[table] = cur.rowcount
    _drop_month(conn, month.as_of, [t for t in contract.FILES if t not in new_tables])
    conn.execute(_swap_sql(new_tables, month.as_of))
    conn.execute(
        """insert into raw.load_log (as_of, drop_name, drop_path, manifest_sha256, files, loaded_at)
           values (%s, %s, %s, %s, %s, now())
           on conflict (as_of) do update set drop_name = excluded.drop_name, drop_path = excluded.drop_path,
             manifest_sha256 = excluded.manifest_sha256, files = excluded.files, loaded_at = excluded.loaded_at""",
        (month.as_of, month.name, str(month.path), month.digest, json.dumps(month.log_files())),
    )
    return rows
