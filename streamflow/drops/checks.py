"""Reading and checking a monthly drop, without the database.

Checks before anything is loaded: manifest present and valid, known ``format_version``, ``as_of`` a
month end, every listed file present with matching sha256 and row count, UTF-8, exact header. The
value checks here explain a failed COPY with line numbers (:func:`scan_values`); ids are checked
against the contract's pattern. Loading is :mod:`streamflow.drops.ingest`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from streamflow.core.errors import StreamflowError
from streamflow.core.months import is_month_end, month_end
from streamflow.drops import contract

CHUNK = 1 << 20
MAX_SAMPLES = 5


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


def read_drop(path: Path) -> Drop:
    """Parse and check a drop folder without touching the database. Raises IngestError."""
    path = Path(path)
    name = path.name or str(path)
    if not path.is_dir():
        raise _refuse(name, "drop folder does not exist", detail=str(path))
    special = special_entries(name, path)  # before anything is read: a link could point anywhere
    if special:
        raise IngestError(special)
    raw, manifest = _read_manifest(name, path / contract.MANIFEST)
    as_of = _manifest_as_of(name, manifest)
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise _refuse(name, 'manifest has no "files" object', file=contract.MANIFEST)
    problems = _unknown_files(name, listed)
    files: dict[str, DropFile] = {}
    for table, spec in contract.FILES.items():
        entry = listed.get(table)
        rule = _entry_problem(table, entry)
        if rule is not None:
            problems.append(Problem(name, rule, file=contract.MANIFEST))
            continue
        rel, rows, sha = entry["path"], entry["rows"], entry["sha256"].lower()
        fpath = path / rel
        if fpath.is_dir():
            problems.append(
                Problem(name, "is a directory, not a regular file: the manifest lists it as a file", file=rel)
            )
            continue
        if not fpath.is_file():
            problems.append(Problem(name, "file listed in the manifest is missing", file=rel))
            continue
        problems.extend(_check_file(name, spec, fpath, rel, rows, sha))
        files[table] = DropFile(spec, fpath, rows, sha)
    if problems:
        raise IngestError(problems)
    return Drop(
        path=path.resolve(), name=name, as_of=as_of, manifest_sha256=hashlib.sha256(raw).hexdigest(), files=files
    )


def special_entries(drop: str, path: Path) -> list[Problem]:
    """Every symlink and every entry that is neither a regular file nor a directory (FIFO, device, socket)
    anywhere inside the drop, without following links. A drop holds plain files only: a link would make
    ingestion read (and a refusal echo) whatever it points to, a FIFO would block the read."""
    problems = []
    pending = [path]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = Path(entry.path).relative_to(path).as_posix()
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.path)
                    problems.append(
                        Problem(
                            drop,
                            "is a symbolic link: a drop must hold regular files only",
                            file=rel,
                            detail=f"it points to {target}; copy the file into the drop instead",
                        )
                    )
                elif stat.S_ISDIR(st.st_mode):
                    pending.append(Path(entry.path))
                elif not stat.S_ISREG(st.st_mode):
                    problems.append(
                        Problem(
                            drop,
                            f"is a {_kind(st.st_mode)}, not a regular file: a drop must hold regular files only",
                            file=rel,
                        )
                    )
    return problems


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "special file"


def _refuse(drop: str, rule: str, **kw) -> IngestError:
    return IngestError([Problem(drop=drop, rule=rule, **kw)])


def _read_manifest(drop: str, manifest_path: Path) -> tuple[bytes, dict]:
    """The manifest's bytes and its JSON object; refused when missing or not a UTF-8 JSON object."""
    if manifest_path.is_dir():
        raise _refuse(
            drop, "is a directory, not a regular file: every drop must carry a manifest", file=contract.MANIFEST
        )
    if not manifest_path.is_file():
        raise _refuse(drop, f"{contract.MANIFEST} is missing: every drop must carry a manifest", file=contract.MANIFEST)
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _refuse(drop, "manifest is not valid UTF-8", file=contract.MANIFEST, detail=str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _refuse(
            drop,
            "manifest is not valid JSON",
            file=contract.MANIFEST,
            detail=f"{exc.msg} at line {exc.lineno}, column {exc.colno}",
        ) from None
    if not isinstance(manifest, dict):
        raise _refuse(drop, "manifest must be a JSON object", file=contract.MANIFEST)
    return raw, manifest


def _manifest_as_of(drop: str, manifest: dict) -> date:
    """The manifest's as_of, after its format_version; refused unless a known version and a month end."""
    version = manifest.get("format_version")
    if version != contract.FORMAT_VERSION:
        raise _refuse(
            drop,
            f"unknown format_version {version!r}: this version of StreamFlow reads format_version "
            f"{contract.FORMAT_VERSION}",
            file=contract.MANIFEST,
        )
    as_of_text = manifest.get("as_of")
    as_of = _parse_day(as_of_text)
    if as_of is None:
        raise _refuse(drop, f"as_of {as_of_text!r} is not a date in YYYY-MM-DD form", file=contract.MANIFEST)
    if not is_month_end(as_of):
        raise _refuse(
            drop,
            f"as_of {as_of_text} is not a month end (the last day of that month is {month_end(as_of).isoformat()})",
            file=contract.MANIFEST,
        )
    return as_of


def _parse_day(text: Any) -> date | None:
    """A date written exactly YYYY-MM-DD, else None."""
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _unknown_files(drop: str, listed: dict) -> list[Problem]:
    return [
        Problem(
            drop,
            f"manifest lists an unknown file {key!r}",
            file=contract.MANIFEST,
            detail=f"known files: {', '.join(contract.FILES)}",
        )
        for key in sorted(set(listed) - set(contract.FILES))
    ]


def _entry_problem(table: str, entry: Any) -> str | None:
    """What is wrong with the manifest's entry of one file (path, rows, sha256), or None."""
    if not isinstance(entry, dict):
        return f"manifest does not list the {table!r} file"
    rel, rows, sha = entry.get("path"), entry.get("rows"), entry.get("sha256")
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return f"files.{table}.path must be a file name inside the drop, got {rel!r}"
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        return f"files.{table}.rows must be a non-negative integer, got {rows!r}"
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        return f"files.{table}.sha256 must be 64 hex digits"
    return None


def check_utf8(drop: str, fpath: Path, rel: str) -> list[Problem]:
    """The file's first invalid UTF-8 byte, or a last character cut short; [] when it is valid."""
    scan = _scan_file(drop, fpath, rel)
    if scan.utf8_problem:
        return [scan.utf8_problem]
    if scan.incomplete:
        return [Problem(drop, "file is not valid UTF-8 (it ends inside a multi-byte character)", file=rel)]
    return []


@dataclass
class _FileScan:
    """What one streaming pass over a file found."""

    sha256: str
    newlines: int
    last_byte: bytes
    header: bytes  # the first line, without its line ending
    utf8_problem: Problem | None  # the first invalid byte
    incomplete: bool  # the file ends inside a multi-byte character


def _check_file(drop: str, spec: contract.FileSpec, fpath: Path, rel: str, rows: int, sha: str) -> list[Problem]:
    """One streaming pass: sha256, line count, UTF-8, header, truncation."""
    scan = _scan_file(drop, fpath, rel)
    problems: list[Problem] = []
    if scan.utf8_problem:
        problems.append(scan.utf8_problem)
    elif scan.incomplete:
        problems.append(Problem(drop, "file is not valid UTF-8 (it ends inside a multi-byte character)", file=rel))
    if not scan.header and scan.newlines == 0:
        want = ",".join(spec.header)
        problems.append(
            Problem(drop, "file is empty: expected a header row", file=rel, detail=f"expected header: {want}")
        )
        return problems
    problems += _header_problems(drop, rel, spec.header, scan.header)
    problems += _length_problems(drop, rel, rows, scan)
    if scan.sha256 != sha:
        problems.append(
            Problem(
                drop,
                "sha256 does not match the manifest",
                file=rel,
                detail=f"manifest: {sha}\n    file:     {scan.sha256}",
            )
        )
    return problems


def _scan_file(drop: str, fpath: Path, rel: str) -> _FileScan:
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
                    utf8_problem = _utf8_problem(drop, rel, chunk, exc, newlines)
            if not header_done:
                cut = chunk.find(b"\n")
                header += chunk if cut < 0 else chunk[:cut]
                header_done = cut >= 0
            newlines += chunk.count(b"\n")
            last_byte = chunk[-1:]
    try:
        decoder.decode(b"", final=True)
        incomplete = False
    except UnicodeDecodeError:
        incomplete = True
    return _FileScan(digest.hexdigest(), newlines, last_byte, bytes(header), utf8_problem, incomplete)


def _utf8_problem(drop: str, rel: str, chunk: bytes, exc: UnicodeDecodeError, newlines_before: int) -> Problem:
    bad_line = newlines_before + chunk[: exc.start].count(b"\n") + 1
    snippet = chunk[max(0, exc.start - 20) : exc.start + 10]
    return Problem(
        drop,
        "file is not valid UTF-8",
        file=rel,
        detail=f"invalid byte 0x{chunk[exc.start]:02x} at line {bad_line}",
        lines=[(bad_line, snippet.decode("utf-8", "replace"))],
    )


def _header_problems(drop: str, rel: str, want: list[str], header: bytes) -> list[Problem]:
    got = header.decode("utf-8", "replace").rstrip("\r").split(",")
    if got == want:
        return []
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    parts = []
    if missing:
        parts.append(f"missing column(s): {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected column(s): {', '.join(extra)}")
    if not parts:
        parts.append("columns are in the wrong order")
    return [
        Problem(
            drop,
            "header does not match the contract: " + "; ".join(parts),
            file=rel,
            detail=f"expected: {','.join(want)}\n    found:    {','.join(got)}",
        )
    ]


def _length_problems(drop: str, rel: str, rows: int, scan: _FileScan) -> list[Problem]:
    """A truncated last line, or a row count other than the manifest's."""
    data_rows = max(scan.newlines - 1, 0)
    if scan.last_byte and scan.last_byte != b"\n":
        return [
            Problem(
                drop,
                "file is truncated: the last line has no line ending",
                file=rel,
                detail=f"the file ends in the middle of line {scan.newlines + 1}",
            )
        ]
    if data_rows != rows:
        return [
            Problem(
                drop,
                "row count does not match the manifest",
                file=rel,
                detail=f"manifest says {rows} rows, the file has {data_rows}",
            )
        ]
    return []


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
