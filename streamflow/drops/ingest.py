"""Load monthly drops into ``raw.*``: checked first, then COPY in one transaction, idempotent.

Checks before anything is loaded: manifest present and valid, known ``format_version``, ``as_of`` a
month end, every listed file present with matching sha256 and row count, UTF-8, exact header. Values
are parsed by PostgreSQL's COPY into typed columns; when a value does not parse, the file is scanned
to name the first offending lines. Ids are checked against the contract's pattern.

Each raw table is partitioned by ``as_of``. A month is loaded into a fresh table that is attached as
that month's partition, so replacing a month is a swap inside one transaction, and reloading the
same drop changes nothing. Business rules that need SQL (ranges, accepted values, relationships)
belong to the dbt quality gate, not here.
"""

from __future__ import annotations

import calendar
import codecs
import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from streamflow.core.errors import StreamflowError
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.drops import contract

CHUNK = 1 << 20
MAX_SAMPLES = 5
LOCK_KEY = 804_121_001  # advisory lock: one ingestion at a time


# ---------------------------------------------------------------------------------------
# problems and their report
# ---------------------------------------------------------------------------------------
@dataclass
class Problem:
    """One broken rule, located as precisely as we can."""

    drop: str
    rule: str
    file: str | None = None
    column: str | None = None
    detail: str = ""
    lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, offending value)

    def render(self) -> str:
        where = " / ".join(x for x in (self.drop, self.file, f"column {self.column}" if self.column else None) if x)
        out = [f"- {where}: {self.rule}"]
        if self.detail:
            out.append(f"    {self.detail}")
        for line, value in self.lines:
            out.append(f"    line {line}: {value!r}")
        return "\n".join(out)


class IngestError(StreamflowError):
    """Ingestion refused: nothing was loaded, raw.* is exactly as it was."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        head = "Ingestion refused: nothing was loaded, raw.* is unchanged."
        return "\n".join([head, *(p.render() for p in self.problems)])


# ---------------------------------------------------------------------------------------
# reading and checking a drop (no database)
# ---------------------------------------------------------------------------------------
@dataclass
class DropFile:
    spec: contract.FileSpec
    path: Path
    rows: int
    sha256: str


@dataclass
class Drop:
    path: Path
    name: str
    as_of: date
    manifest_sha256: str
    files: dict[str, DropFile]

    def log_files(self) -> dict:
        return {t: {"path": f.path.name, "rows": f.rows, "sha256": f.sha256} for t, f in self.files.items()}


def is_month_end(d: date) -> bool:
    return d.day == calendar.monthrange(d.year, d.month)[1]


def read_drop(path: Path) -> Drop:
    """Parse and check a drop folder without touching the database. Raises IngestError."""
    path = Path(path)
    name = path.name or str(path)
    problems: list[Problem] = []

    def refuse(rule: str, **kw) -> IngestError:
        return IngestError([Problem(drop=name, rule=rule, **kw)])

    if not path.is_dir():
        raise refuse("drop folder does not exist", detail=str(path))
    manifest_path = path / contract.MANIFEST
    if not manifest_path.is_file():
        raise refuse(f"{contract.MANIFEST} is missing: every drop must carry a manifest", file=contract.MANIFEST)
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise refuse("manifest is not valid UTF-8", file=contract.MANIFEST, detail=str(exc)) from None
    except json.JSONDecodeError as exc:
        raise refuse(
            "manifest is not valid JSON",
            file=contract.MANIFEST,
            detail=f"{exc.msg} at line {exc.lineno}, column {exc.colno}",
        ) from None
    if not isinstance(manifest, dict):
        raise refuse("manifest must be a JSON object", file=contract.MANIFEST)

    version = manifest.get("format_version")
    if version != contract.FORMAT_VERSION:
        raise refuse(
            f"unknown format_version {version!r}: this version of StreamFlow reads format_version "
            f"{contract.FORMAT_VERSION}",
            file=contract.MANIFEST,
        )
    as_of_text = manifest.get("as_of")
    try:
        as_of = date.fromisoformat(as_of_text) if isinstance(as_of_text, str) else None
        if as_of is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", as_of_text):
            as_of = None
    except ValueError:
        as_of = None
    if as_of is None:
        raise refuse(f"as_of {as_of_text!r} is not a date in YYYY-MM-DD form", file=contract.MANIFEST)
    if not is_month_end(as_of):
        last = calendar.monthrange(as_of.year, as_of.month)[1]
        raise refuse(
            f"as_of {as_of_text} is not a month end (the last day of that month is "
            f"{as_of.replace(day=last).isoformat()})",
            file=contract.MANIFEST,
        )

    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise refuse('manifest has no "files" object', file=contract.MANIFEST)
    for key in sorted(set(listed) - set(contract.FILES)):
        problems.append(
            Problem(
                name,
                f"manifest lists an unknown file {key!r}",
                file=contract.MANIFEST,
                detail=f"known files: {', '.join(contract.FILES)}",
            )
        )
    files: dict[str, DropFile] = {}
    for table, spec in contract.FILES.items():
        entry = listed.get(table)
        if not isinstance(entry, dict):
            problems.append(Problem(name, f"manifest does not list the {table!r} file", file=contract.MANIFEST))
            continue
        rel, rows, sha = entry.get("path"), entry.get("rows"), entry.get("sha256")
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            problems.append(
                Problem(
                    name, f"files.{table}.path must be a file name inside the drop, got {rel!r}", file=contract.MANIFEST
                )
            )
            continue
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            problems.append(
                Problem(
                    name, f"files.{table}.rows must be a non-negative integer, got {rows!r}", file=contract.MANIFEST
                )
            )
            continue
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            problems.append(Problem(name, f"files.{table}.sha256 must be 64 hex digits", file=contract.MANIFEST))
            continue
        fpath = path / rel
        if not fpath.is_file():
            problems.append(Problem(name, "file listed in the manifest is missing", file=rel))
            continue
        problems.extend(_check_file(name, spec, fpath, rel, rows, sha.lower()))
        files[table] = DropFile(spec, fpath, rows, sha.lower())
    if problems:
        raise IngestError(problems)
    return Drop(
        path=path.resolve(), name=name, as_of=as_of, manifest_sha256=hashlib.sha256(raw).hexdigest(), files=files
    )


def _check_file(drop: str, spec: contract.FileSpec, fpath: Path, rel: str, rows: int, sha: str) -> list[Problem]:
    """One streaming pass: sha256, line count, UTF-8, header, truncation."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    last_byte = b""
    header = bytearray()
    header_done = False
    utf8_problem: Problem | None = None
    with open(fpath, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if utf8_problem is None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    bad_line = newlines + chunk[: exc.start].count(b"\n") + 1
                    snippet = chunk[max(0, exc.start - 20) : exc.start + 10]
                    utf8_problem = Problem(
                        drop,
                        "file is not valid UTF-8",
                        file=rel,
                        detail=f"invalid byte 0x{chunk[exc.start]:02x} at line {bad_line}",
                        lines=[(bad_line, snippet.decode("utf-8", "replace"))],
                    )
            if not header_done:
                cut = chunk.find(b"\n")
                header += chunk if cut < 0 else chunk[:cut]
                header_done = cut >= 0
            newlines += chunk.count(b"\n")
            last_byte = chunk[-1:]
    problems: list[Problem] = []
    if utf8_problem:
        problems.append(utf8_problem)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        if not utf8_problem:
            problems.append(Problem(drop, "file is not valid UTF-8 (it ends inside a multi-byte character)", file=rel))

    got_header = bytes(header).decode("utf-8", "replace").rstrip("\r").split(",")
    want = spec.header
    if not header and newlines == 0:
        problems.append(
            Problem(drop, "file is empty: expected a header row", file=rel, detail=f"expected header: {','.join(want)}")
        )
        return problems
    if got_header != want:
        missing = [c for c in want if c not in got_header]
        extra = [c for c in got_header if c not in want]
        parts = []
        if missing:
            parts.append(f"missing column(s): {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s): {', '.join(extra)}")
        if not parts:
            parts.append("columns are in the wrong order")
        problems.append(
            Problem(
                drop,
                "header does not match the contract: " + "; ".join(parts),
                file=rel,
                detail=f"expected: {','.join(want)}\n    found:    {','.join(got_header)}",
            )
        )

    data_rows = max(newlines - 1, 0)
    if last_byte and last_byte != b"\n":
        problems.append(
            Problem(
                drop,
                "file is truncated: the last line has no line ending",
                file=rel,
                detail=f"the file ends in the middle of line {newlines + 1}",
            )
        )
    elif data_rows != rows:
        problems.append(
            Problem(
                drop,
                "row count does not match the manifest",
                file=rel,
                detail=f"manifest says {rows} rows, the file has {data_rows}",
            )
        )
    actual = digest.hexdigest()
    if actual != sha:
        problems.append(
            Problem(
                drop, "sha256 does not match the manifest", file=rel, detail=f"manifest: {sha}\n    file:     {actual}"
            )
        )
    return problems


# ---------------------------------------------------------------------------------------
# value checks (used to explain a COPY failure with line numbers)
# ---------------------------------------------------------------------------------------
_INT = re.compile(r"-?\d+")
_DEC = re.compile(r"-?\d+(\.\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TS = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)?")
TYPE_RULES = {
    "int": "must be an integer",
    "decimal": "must be a decimal number like 12.50",
    "bool": "must be true or false",
    "date": "must be a date YYYY-MM-DD",
    "timestamp": "must be an ISO 8601 timestamp like 2024-01-05T13:22:10Z",
    "id": f"must be an id like 7590-VHVEG (pattern {contract.ID_PATTERN})",
}


def value_ok(typ: str, value: str) -> bool:
    """Does ``value`` (non-empty) parse as the contract type ``typ``?"""
    if typ == "int":
        return bool(_INT.fullmatch(value)) and -(2**31) <= int(value) < 2**31
    if typ == "decimal":
        if not _DEC.fullmatch(value):
            return False
        try:
            return abs(Decimal(value)) < Decimal(10) ** 10
        except InvalidOperation:
            return False
    if typ == "bool":
        return value in ("true", "false")
    if typ == "date":
        if not _DATE.fullmatch(value):
            return False
        try:
            date.fromisoformat(value)
            return True
        except ValueError:
            return False
    if typ == "timestamp":
        if not _TS.fullmatch(value):
            return False
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return True
        except ValueError:
            return False
    if typ == "id":
        return bool(contract.ID_RE.fullmatch(value))
    return True


def scan_values(drop: str, f: DropFile, columns: Iterable[str] | None = None) -> list[Problem]:
    """Check every value of a file against its column type; first offending lines per column."""
    import csv

    wanted = set(columns) if columns else None
    specs = [c for c in f.spec.columns if wanted is None or c.name in wanted]
    index = {c.name: i for i, c in enumerate(f.spec.columns)}
    bad: dict[str, list[tuple[int, str]]] = {}
    counts: dict[str, int] = {}
    width_problem: list[tuple[int, str]] = []
    with open(f.path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            line = reader.line_num
            if len(row) != len(f.spec.columns):
                if len(width_problem) < MAX_SAMPLES:
                    width_problem.append((line, ",".join(row)))
                continue
            for col in specs:
                value = row[index[col.name]]
                if value == "" or value_ok(col.type, value):
                    continue
                counts[col.name] = counts.get(col.name, 0) + 1
                samples = bad.setdefault(col.name, [])
                if len(samples) < MAX_SAMPLES:
                    samples.append((line, value))
    problems = []
    if width_problem:
        problems.append(
            Problem(drop, f"row does not have {len(f.spec.columns)} fields", file=f.path.name, lines=width_problem)
        )
    for col in specs:
        if col.name in bad:
            n = counts[col.name]
            problems.append(
                Problem(
                    drop,
                    f"value {TYPE_RULES[col.type]}",
                    file=f.path.name,
                    column=col.name,
                    detail=f"{n} offending row{'s' if n != 1 else ''}; first:",
                    lines=bad[col.name],
                )
            )
    return problems


# ---------------------------------------------------------------------------------------
# the database side
# ---------------------------------------------------------------------------------------
def raw_ddl() -> list[str]:
    """DDL of the raw schema, idempotent."""
    stmts = ["create schema if not exists raw"]
    for spec in contract.FILES.values():
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
) -> list[DropResult]:
    """Check and load drops in as_of order, all in one transaction. Raises IngestError.

    ``progress`` counts the bytes loaded."""
    from streamflow.core.db import connect

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

    results: list[DropResult] = []
    progress.start("loading", total=sum(f.path.stat().st_size for d in drops for f in d.files.values()))
    with connect(settings) as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute("set local timezone = 'UTC'")
        conn.execute("set local datestyle = 'ISO, YMD'")
        ensure_raw_schema(conn)
        loaded = {r[0]: r[1] for r in conn.execute("select as_of, manifest_sha256 from raw.load_log")}
        if rebuild:
            for as_of in sorted(loaded):
                _drop_month(conn, as_of)
            conn.execute("delete from raw.load_log")
            loaded = {}
        for d in drops:
            newest = max(loaded) if loaded else None
            if loaded.get(d.as_of) == d.manifest_sha256:
                results.append(DropResult(d.name, d.as_of, "unchanged", {t: f.rows for t, f in d.files.items()}, 0))
                continue
            if newest is not None and d.as_of < newest:
                what = "replaces already loaded" if d.as_of in loaded else "is older than"
                raise IngestError(
                    [
                        Problem(
                            d.name,
                            f"as_of {d.as_of} {what} history: the newest loaded month is {newest}. History is "
                            "append-only in business time; to reload older months use --rebuild with every drop "
                            "that should be loaded",
                        )
                    ]
                )
            start = time.perf_counter()
            status = "replaced" if d.as_of in loaded else "loaded"
            rows = _load_drop(conn, d, progress)
            loaded[d.as_of] = d.manifest_sha256
            results.append(DropResult(d.name, d.as_of, status, rows, time.perf_counter() - start))
    return results


def _drop_month(conn, as_of: date) -> None:
    for spec in contract.FILES.values():
        conn.execute(f'drop table if exists raw."{partition_name(spec.table, as_of)}"')


def _load_drop(conn, d: Drop, progress: Progress) -> dict[str, int]:
    import psycopg

    rows: dict[str, int] = {}
    problems: list[Problem] = []
    new_tables: dict[str, str] = {}
    for table, f in d.files.items():
        tmp = f"_load_{partition_name(table, d.as_of)}"
        new_tables[table] = tmp
        day = d.as_of.isoformat()
        # the fresh table checks its own month and the id format while COPY writes it (no second scan)
        id_checks = "".join(
            f", constraint \"{tmp}_{c.name}_format\" check ({c.name} ~ '{contract.ID_PATTERN}')"
            for c in f.spec.columns
            if c.type == "id"
        )
        conn.execute(
            f'drop table if exists raw."{tmp}";'
            f'create table raw."{tmp}" (like raw.{table} including defaults, '
            f"constraint \"{tmp}_as_of\" check (as_of = '{day}'){id_checks});"
            f"alter table raw.\"{tmp}\" alter column as_of set default '{day}'"
        )
        cols = ", ".join(f.spec.header)
        copy_sql = f'copy raw."{tmp}" ({cols}) from stdin with (format csv, header true)'
        try:
            # a savepoint: a failed COPY is explained, then everything rolls back
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(copy_sql) as copy, open(f.path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        copy.write(chunk)
                        progress.advance(len(chunk), f"{d.name}/{f.path.name}")
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
    swap = []
    for table, tmp in new_tables.items():
        final = partition_name(table, d.as_of)
        swap += [
            f'drop table if exists raw."{final}"',
            f'alter table raw."{tmp}" rename to "{final}"',
            f"alter table raw.{table} attach partition raw.\"{final}\" for values in ('{d.as_of.isoformat()}')",
        ]
    conn.execute(";\n".join(swap))
    conn.execute(
        """insert into raw.load_log (as_of, drop_name, drop_path, manifest_sha256, files, loaded_at)
           values (%s, %s, %s, %s, %s, now())
           on conflict (as_of) do update set drop_name = excluded.drop_name, drop_path = excluded.drop_path,
             manifest_sha256 = excluded.manifest_sha256, files = excluded.files, loaded_at = excluded.loaded_at""",
        (d.as_of, d.name, str(d.path), d.manifest_sha256, json.dumps(d.log_files())),
    )
    return rows


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
