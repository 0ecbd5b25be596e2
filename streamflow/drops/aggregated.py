"""The aggregated layout: months of an earlier stack, one folder of pre-aggregated CSV files per month.

A month folder (``month_000/``, ...) holds no manifest: the month's end is given by the user (``streamflow
ingest --layout aggregated --as-of 2024-01-31 DIR``). Its users and subscriptions load into the same
``raw.users`` / ``raw.subscriptions`` as an event drop's (columns renamed to the contract's names, absent
optional columns as NULL); its windowed aggregates and month-end labels load into tables of their own
(``raw.usage_agg_30d``, ``raw.payments_agg_90d``, ``raw.support_agg_90d``, ``raw.labels_at_month_end``).

Everything here is checked before anything is loaded, without the database: files present and regular,
UTF-8, the header (required columns, known optional ones), every value's type (booleans written
``True``/``False``), and the rules a month of aggregates must keep (non-negative hours and counts, known
plans, one row per user, labels and subscriptions only for users of the month's users.csv). Refusals name
the file, column, lines and rule.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from streamflow.core.months import is_month_end, month_end
from streamflow.core.names import MONTH_END_LABELS
from streamflow.drops import contract
from streamflow.drops.checks import MAX_SAMPLES, TYPE_RULES, IngestError, Problem, check_utf8, special_entries, value_ok

LAYOUT = "aggregated"
LAYOUTS = ("events", LAYOUT)


@dataclass(frozen=True)
class SourceColumn:
    """One column of an aggregated file: its name there, its name in raw.*, type and rules."""

    name: str  # as written in the file
    target: str | None  # column of the raw table (None: read and checked, not loaded)
    type: str  # a contract type, or "float"
    optional: bool = False  # may be absent from the file (loaded as NULL)
    nullable: bool = False  # an empty field is allowed
    non_negative: bool = False
    accepted: tuple[str, ...] = ()


@dataclass(frozen=True)
class AggregatedFile:
    table: str  # the raw table it loads into
    filename: str
    columns: tuple[SourceColumn, ...]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if not c.optional]


def _c(name: str, typ: str, target: str | None = "", **kw) -> SourceColumn:
    return SourceColumn(name, name if target == "" else target, typ, **kw)


_ID = _c("user_id", "id")
FILES: dict[str, AggregatedFile] = {
    "users": AggregatedFile(
        "users",
        "users.csv",
        (
            _ID,
            _c("signup_date", "date"),
            _c("user_gender", "text", "gender", accepted=contract.GENDERS),
            _c("user_is_senior", "bool", "senior_citizen"),
            _c("has_family", "bool", "partner"),
            _c("has_dependents", "bool", "dependents"),
        ),
    ),
    "subscriptions": AggregatedFile(
        "subscriptions",
        "subscriptions.csv",
        (
            _ID,
            _c("months_active", "int", non_negative=True),
            _c("plan_stream_tv", "bool"),
            _c("plan_stream_movies", "bool"),
            _c("contract_type", "text", accepted=contract.CONTRACT_TYPES),
            _c("paperless_billing", "bool"),
            _c("monthly_fee", "decimal", non_negative=True),
            _c("total_paid", "decimal", None, nullable=True),  # not in the contract: checked, not loaded
            _c("net_service", "text", accepted=contract.NET_SERVICES),
            _c("add_on_security", "bool", optional=True, nullable=True),
            _c("add_on_backup", "bool", optional=True, nullable=True),
            _c("add_on_device_protect", "bool", "add_on_device_protection", optional=True, nullable=True),
            _c("add_on_support", "bool", "add_on_tech_support", optional=True, nullable=True),
            _c("payment_method", "text", optional=True, nullable=True, accepted=contract.PAYMENT_METHODS),
        ),
    ),
    "usage_agg_30d": AggregatedFile(
        "usage_agg_30d",
        "usage_agg_30d.csv",
        (
            _ID,
            _c("watch_hours_30d", "float", non_negative=True),
            _c("avg_session_mins_7d", "float", non_negative=True),
            _c("unique_devices_30d", "int", non_negative=True),
            _c("skips_7d", "int", non_negative=True),
            _c("rebuffer_events_7d", "int", non_negative=True),
        ),
    ),
    "payments_agg_90d": AggregatedFile(
        "payments_agg_90d",
        "payments_agg_90d.csv",
        (_ID, _c("failed_payments_90d", "int", non_negative=True)),
    ),
    "support_agg_90d": AggregatedFile(
        "support_agg_90d",
        "support_agg_90d.csv",
        (
            _ID,
            _c("support_tickets_90d", "int", non_negative=True),
            _c("ticket_avg_resolution_hrs_90d", "float", nullable=True, non_negative=True),
        ),
    ),
    MONTH_END_LABELS: AggregatedFile(
        MONTH_END_LABELS,
        "labels.csv",
        (_ID, _c("churn_label", "bool")),
    ),
}

# raw tables of their own (users and subscriptions share the event drops' tables)
RAW_TABLES: dict[str, contract.FileSpec] = {
    name: contract.FileSpec(
        spec.table,
        spec.filename,
        tuple(contract.Column(c.target, c.type, c.nullable) for c in spec.columns if c.target),
        ("user_id",),
    )
    for name, spec in FILES.items()
    if name not in contract.FILES
}

_FLOAT = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_BOOLS = {"True": "true", "False": "false", "true": "true", "false": "false"}
_RULES = {
    "bool": "must be True or False",
    "float": "must be a decimal number like 12.5",
}


def _value_ok(typ: str, value: str) -> bool:
    if typ == "bool":
        return value in _BOOLS
    if typ == "float":
        return bool(_FLOAT.fullmatch(value))
    return value_ok(typ, value)


def _rule(typ: str) -> str:
    return "value " + _RULES.get(typ, TYPE_RULES.get(typ, "has the wrong type"))


# ---------------------------------------------------------------------------------------
# a checked month
# ---------------------------------------------------------------------------------------
@dataclass
class AggregatedPart:
    """One checked file: its columns in file order, rows, sha256."""

    spec: AggregatedFile
    path: Path
    header: list[str]
    rows: int
    sha256: str


@dataclass
class AggregatedMonth:
    path: Path
    name: str
    as_of: date
    digest: str  # identifies the month's content (stands in for a manifest's sha256)
    files: dict[str, AggregatedPart]

    def log_files(self) -> dict:
        return {t: {"path": f.path.name, "rows": f.rows, "sha256": f.sha256} for t, f in self.files.items()}


def read_month(path: Path, as_of: date) -> AggregatedMonth:
    """Parse and check one aggregated month without touching the database. Raises IngestError."""
    path = Path(path)
    name = path.name or str(path)
    if not path.is_dir():
        raise IngestError([Problem(name, "month folder does not exist", detail=str(path))])
    if not is_month_end(as_of):
        raise IngestError(
            [Problem(name, f"--as-of {as_of} is not a month end (the last day of that month is {month_end(as_of)})")]
        )
    special = special_entries(name, path)
    if special:
        raise IngestError(special)
    problems: list[Problem] = []
    parts: dict[str, AggregatedPart] = {}
    ids: dict[str, set[str]] = {}
    for table, spec in FILES.items():
        fpath = path / spec.filename
        if not fpath.is_file():
            problems.append(
                Problem(name, "file is missing: every month of the aggregated layout holds it", file=spec.filename)
            )
            continue
        part, found, users = _check_part(name, spec, fpath)
        problems += found
        if part is not None:
            parts[table] = part
            ids[table] = users
    problems += _relationship_problems(name, path, ids)
    if problems:
        raise IngestError(problems)
    digest = hashlib.sha256(
        json.dumps(
            {"layout": LAYOUT, "as_of": as_of.isoformat(), "files": {t: p.sha256 for t, p in parts.items()}}
        ).encode()
    ).hexdigest()
    return AggregatedMonth(path.resolve(), name, as_of, digest, parts)


def _check_part(drop: str, spec: AggregatedFile, fpath: Path) -> tuple[AggregatedPart | None, list[Problem], set]:
    """UTF-8, header and every value of one file; the user ids it holds."""
    problems = check_utf8(drop, fpath, spec.filename)
    if problems:
        return None, problems, set()
    with open(fpath, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            want = ",".join(c.name for c in spec.columns)
            return None, [Problem(drop, "file is empty: expected a header row", file=spec.filename, detail=want)], set()
        header_problem = _header_problem(drop, spec, header)
        if header_problem:
            return None, [header_problem], set()
        part, problems, users = _check_rows(drop, spec, fpath, header, reader)
    return part, problems, users


def _header_problem(drop: str, spec: AggregatedFile, header: list[str]) -> Problem | None:
    known = {c.name for c in spec.columns}
    missing = [c for c in spec.required if c not in header]
    extra = [c for c in header if c not in known]
    dupes = sorted({c for c in header if header.count(c) > 1})
    parts = []
    if missing:
        parts.append(f"missing column(s): {', '.join(missing)}")
    if extra:
        parts.append(f"unknown column(s): {', '.join(extra)}")
    if dupes:
        parts.append(f"repeated column(s): {', '.join(dupes)}")
    if not parts:
        return None
    optional = [c.name for c in spec.columns if c.optional]
    return Problem(
        drop,
        "header does not match the aggregated layout: " + "; ".join(parts),
        file=spec.filename,
        detail=f"required: {','.join(spec.required)}"
        + (f"\n    optional: {','.join(optional)}" if optional else "")
        + f"\n    found:    {','.join(header)}",
    )


# long: one pass over the rows, every rule of a value in one place
def _check_rows(drop: str, spec: AggregatedFile, fpath: Path, header: list[str], reader) -> tuple:
    cols = [next(c for c in spec.columns if c.name == h) for h in header]
    bad: dict[tuple[str, str], list[tuple[int, str]]] = {}
    counts: dict[tuple[str, str], int] = {}
    width: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    rows = 0

    def note(column: str, rule: str, line: int, value: str) -> None:
        key = (column, rule)
        counts[key] = counts.get(key, 0) + 1
        samples = bad.setdefault(key, [])
        if len(samples) < MAX_SAMPLES:
            samples.append((line, value))

    for row in reader:
        line = reader.line_num
        rows += 1
        if len(row) != len(header):
            if len(width) < MAX_SAMPLES:
                width.append((line, ",".join(row)))
            continue
        for col, value in zip(cols, row, strict=True):
            if value == "":
                if not col.nullable:
                    note(col.name, "value must not be empty", line, value)
                continue
            if not _value_ok(col.type, value):
                note(col.name, _rule(col.type), line, value)
            elif col.non_negative and value.lstrip().startswith("-") and float(value) < 0:
                note(col.name, "value must not be negative", line, value)
            elif col.accepted and value not in col.accepted:
                note(col.name, f"value must be one of: {', '.join(col.accepted)}", line, value)
        user = row[header.index("user_id")]
        if user in seen:
            note("user_id", f"one row per user: the user_id is repeated (first on line {seen[user]})", line, user)
        else:
            seen[user] = line
    problems = []
    if width:
        problems.append(Problem(drop, f"row does not have {len(header)} fields", file=spec.filename, lines=width))
    for (column, rule), samples in bad.items():
        n = counts[(column, rule)]
        problems.append(
            Problem(
                drop,
                rule,
                file=spec.filename,
                column=column,
                detail=f"{n} offending row{'s' if n != 1 else ''}; first:",
                lines=samples,
            )
        )
    digest = hashlib.sha256(fpath.read_bytes()).hexdigest()
    return AggregatedPart(spec, fpath, header, rows, digest), problems, set(seen)


def _relationship_problems(drop: str, path: Path, ids: dict[str, set[str]]) -> list[Problem]:
    """Every file other than users.csv speaks only of users in the month's users.csv."""
    if "users" not in ids:
        return []
    known = ids["users"]
    problems = []
    for table, users in ids.items():
        unknown = users - known
        if table == "users" or not unknown:
            continue
        spec = FILES[table]
        lines = _lines_of(path / spec.filename, unknown)
        what = "label" if table == MONTH_END_LABELS else "row"
        problems.append(
            Problem(
                drop,
                f"a {what} for a user that is not in users.csv",
                file=spec.filename,
                column="user_id",
                detail=f"{len(unknown)} unknown user{'s' if len(unknown) != 1 else ''}; first:",
                lines=lines,
            )
        )
    return problems


def _lines_of(fpath: Path, users: set[str]) -> list[tuple[int, str]]:
    out = []
    with open(fpath, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        at = header.index("user_id")
        for row in reader:
            if len(row) > at and row[at] in users:
                out.append((reader.line_num, row[at]))
                if len(out) >= MAX_SAMPLES:
                    break
    return out


# ---------------------------------------------------------------------------------------
# SQL for loading (the database side is streamflow.drops.ingest)
# ---------------------------------------------------------------------------------------
def staging_ddl(part: AggregatedPart, temp: str) -> str:
    """A temporary table with the file's own columns, in its order: booleans as text (True/False are
    mapped when inserted), other values typed so COPY parses them."""
    cols = []
    for name in part.header:
        col = next(c for c in part.spec.columns if c.name == name)
        cols.append(f'"{name}" {"text" if col.type == "bool" else contract.PG_TYPES[col.type]}')
    return f'create temporary table "{temp}" ({", ".join(cols)}) on commit drop'


def insert_sql(part: AggregatedPart, temp: str, target: str, spec: contract.FileSpec) -> str:
    """Rows of the temporary table into the month's fresh raw table, renamed to the contract; absent
    optional columns are NULL, total_paid is not kept."""
    by_target = {c.target: c for c in part.spec.columns if c.target}
    exprs = []
    for column in spec.columns:
        src = by_target.get(column.name)
        if src is None or src.name not in part.header:
            exprs.append(f"null::{contract.PG_TYPES[column.type]}")
        elif src.type == "bool":
            exprs.append(f"lower(nullif(\"{src.name}\", ''))::boolean")
        else:
            exprs.append(f'"{src.name}"')
    names = ", ".join(c.name for c in spec.columns)
    return f'insert into raw."{target}" ({names}) select {", ".join(exprs)} from "{temp}"'
