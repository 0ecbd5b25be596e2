"""Ingestion on a real PostgreSQL: counts, idempotency, ordering, rebuild, and one specific message per
structural defect, with raw.* unchanged after every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from streamflow.core.db import connect
from streamflow.drops import contract
from streamflow.drops.generator.run import generate
from streamflow.drops.ingest import IngestError, ingest
from tests.conftest import fresh_database, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("drops")
    generate(out, months=3, users=500, seed=7)
    return sorted(out.glob("month_*"))


@pytest.fixture()
def db(pg_settings, request):
    return fresh_database(pg_settings, f"ingest_{request.node.name[:40].lower()}")


def raw_fingerprint(settings) -> dict[str, str]:
    """md5 of every raw table's full content (and of the load log), in a stable order."""
    out = {}
    with connect(settings) as conn:
        tables = [*contract.FILES, "load_log"]
        for t in tables:
            exists = conn.execute("select to_regclass(%s)", (f"raw.{t}",)).fetchone()[0]
            if exists is None:
                out[t] = "absent"
                continue
            out[t] = conn.execute(
                f"select coalesce(md5(string_agg(x::text, E'\\n' order by x::text)), 'empty') from raw.{t} x"
            ).fetchone()[0]
        out["partitions"] = ",".join(
            r[0]
            for r in conn.execute(
                "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'raw' order by 1"
            )
        )
    return out


def counts(settings) -> dict[tuple[str, str], int]:
    with connect(settings) as conn:
        out = {}
        for t in contract.FILES:
            for as_of, n in conn.execute(f"select as_of::text, count(*) from raw.{t} group by 1"):
                out[(t, as_of)] = n
        return out


def manifest(drop: Path) -> dict:
    return json.loads((drop / "manifest.json").read_text())


def test_ingest_loads_exactly_the_rows_each_manifest_promises(db, drops):
    results = ingest(db, drops)
    assert [r.status for r in results] == ["loaded"] * 3
    got = counts(db)
    for drop in drops:
        m = manifest(drop)
        for table, entry in m["files"].items():
            assert got.get((table, m["as_of"]), 0) == entry["rows"], (drop.name, table)
    with connect(db) as conn:
        log = conn.execute("select as_of::text, drop_name, files from raw.load_log order by as_of").fetchall()
    assert [(a, n) for a, n, _ in log] == [(manifest(d)["as_of"], d.name) for d in drops]
    assert log[0][2]["users"]["sha256"] == manifest(drops[0])["files"]["users"]["sha256"]


def test_ingesting_the_same_drops_again_changes_nothing(db, drops):
    ingest(db, drops)
    before = raw_fingerprint(db)
    again = run_cli(db, "ingest", *map(str, drops))
    assert "unchanged" in again.stdout
    assert raw_fingerprint(db) == before


def test_an_older_month_is_refused_unless_rebuild(db, drops):
    ingest(db, drops[1:])
    before = raw_fingerprint(db)
    proc = run_cli(db, "ingest", str(drops[0]), check=False)
    assert proc.returncode != 0
    assert "older than history" in proc.stderr and "--rebuild" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert raw_fingerprint(db) == before


def test_rebuild_replaces_history_with_exactly_the_drops_given_in_as_of_order(db, drops):
    ingest(db, drops[1:])
    results = ingest(db, [drops[2], drops[0]], rebuild=True)
    assert [r.as_of.isoformat() for r in results] == [manifest(drops[0])["as_of"], manifest(drops[2])["as_of"]]
    loaded = {as_of for (_, as_of) in counts(db)}
    assert loaded == {manifest(drops[0])["as_of"], manifest(drops[2])["as_of"]}


def test_a_new_version_of_the_newest_month_replaces_its_rows_and_nothing_else(db, drops, tmp_path):
    ingest(db, drops[:2])
    before = counts(db)
    fixed = tmp_path / drops[1].name
    shutil.copytree(drops[1], fixed)
    rewrite(fixed, "sessions", lambda lines: lines[:-10])  # the producer resent the month with fewer sessions
    (result,) = ingest(db, [fixed])
    assert result.status == "replaced"
    after = counts(db)
    as_of = manifest(drops[1])["as_of"]
    assert after[("sessions", as_of)] == before[("sessions", as_of)] - 10
    assert {k: v for k, v in after.items() if k[0] != "sessions" or k[1] != as_of} == {
        k: v for k, v in before.items() if k[0] != "sessions" or k[1] != as_of
    }


# ---------------------------------------------------------------------------------------
# structural defects: each one refused with its own message, raw.* unchanged
# ---------------------------------------------------------------------------------------
def rewrite(drop: Path, table: str, change: Callable[[list[bytes]], list[bytes]], fix_manifest: bool = True) -> None:
    """Change a file's lines; by default keep the manifest consistent so only the intended defect shows."""
    m = manifest(drop)
    path = drop / m["files"][table]["path"]
    lines = path.read_bytes().splitlines(keepends=True)
    data = b"".join(change(lines))
    path.write_bytes(data)
    if fix_manifest:
        m["files"][table]["sha256"] = hashlib.sha256(data).hexdigest()
        m["files"][table]["rows"] = max(data.count(b"\n") - 1, 0)
        (drop / "manifest.json").write_text(json.dumps(m))


def set_field(table: str, column: str, value: bytes, line: int = 3):
    """Replace one field of one data line (1-based file line numbers)."""
    idx = contract.FILES[table].header.index(column)

    def change(lines):
        fields = lines[line - 1].rstrip(b"\n").split(b",")
        fields[idx] = value
        lines[line - 1] = b",".join(fields) + b"\n"
        return lines

    return change


def edit_manifest(fn):
    def apply(drop: Path):
        m = manifest(drop)
        fn(m)
        (drop / "manifest.json").write_text(json.dumps(m))

    return apply


def drop_column(table: str, column: str):
    idx = contract.FILES[table].header.index(column)
    return lambda lines: [
        b",".join(f for i, f in enumerate(ln.rstrip(b"\n").split(b",")) if i != idx) + b"\n" for ln in lines
    ]


def add_column(lines):
    return [lines[0].rstrip(b"\n") + b",note\n"] + [ln.rstrip(b"\n") + b",x\n" for ln in lines[1:]]


def link_instead_of(name: str, target: Path):
    """Replace a file of the drop with a symbolic link to ``target`` (its content moved there, so that
    following the link would read a perfectly valid file)."""

    def apply(drop: Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(drop / name, target)
        (drop / name).symlink_to(target)

    return apply


def directory_instead_of(name: str):
    def apply(drop: Path):
        (drop / name).unlink()
        (drop / name).mkdir()
        (drop / name / "part-0.csv").write_text("user_id\n")

    return apply


SPECIAL_FILES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "symlinked_file": (
        lambda d: link_instead_of("users.csv", d.parent / "elsewhere" / "users.csv")(d),
        ["users.csv", "is a symbolic link", "regular files only"],
    ),
    "symlinked_manifest": (
        lambda d: link_instead_of("manifest.json", d.parent / "elsewhere" / "manifest.json")(d),
        ["manifest.json", "is a symbolic link"],
    ),
    "unlisted_symlink": (lambda d: (d / "notes.txt").symlink_to("/etc/hostname"), ["notes.txt", "symbolic link"]),
    "symlinked_directory": (lambda d: (d / "extra").symlink_to(d.parent), ["extra", "symbolic link"]),
    "fifo": (lambda d: os.mkfifo(d / "incoming.csv"), ["incoming.csv", "named pipe (FIFO)", "not a regular file"]),
    "directory_named_like_a_file": (
        directory_instead_of("tickets.csv"),
        ["tickets.csv", "is a directory, not a regular file"],
    ),
    "directory_named_like_the_manifest": (
        directory_instead_of("manifest.json"),
        ["manifest.json", "is a directory, not a regular file"],
    ),
}

DEFECTS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    **SPECIAL_FILES,
    "missing_manifest": (lambda d: (d / "manifest.json").unlink(), ["manifest.json is missing"]),
    "broken_json": (
        lambda d: (d / "manifest.json").write_text('{"format_version": 1, "as_of": '),
        ["manifest is not valid JSON", "line 1"],
    ),
    "unknown_format_version": (edit_manifest(lambda m: m.update(format_version=99)), ["unknown format_version 99"]),
    "as_of_not_month_end": (
        edit_manifest(lambda m: m.update(as_of="2024-03-15")),
        ["as_of 2024-03-15 is not a month end", "2024-03-31"],
    ),
    "checksum_mismatch": (
        lambda d: rewrite(d, "payments", set_field("payments", "amount", b"1.00"), fix_manifest=False),
        ["payments.csv", "sha256 does not match the manifest"],
    ),
    "truncated_file": (
        lambda d: rewrite(d, "sessions", lambda ls: [*ls[:-1], ls[-1][:5]], fix_manifest=False),
        ["sessions.csv", "file is truncated"],
    ),
    "row_count_mismatch": (
        edit_manifest(lambda m: m["files"]["tickets"].update(rows=m["files"]["tickets"]["rows"] + 3)),
        ["tickets.csv", "row count does not match the manifest", "manifest says"],
    ),
    "missing_column": (
        lambda d: rewrite(d, "subscriptions", drop_column("subscriptions", "monthly_fee")),
        ["subscriptions.csv", "missing column(s): monthly_fee"],
    ),
    "extra_column": (lambda d: rewrite(d, "users", add_column), ["users.csv", "unexpected column(s): note"]),
    "non_utf8": (
        lambda d: rewrite(d, "tickets", set_field("tickets", "category", b"bill\xe9ng")),
        ["tickets.csv", "not valid UTF-8", "line 3"],
    ),
    "bad_integer": (
        lambda d: rewrite(d, "sessions", set_field("sessions", "skips", b"two")),
        ["sessions.csv", "column skips", "must be an integer", "line 3: 'two'"],
    ),
    "bad_decimal": (
        lambda d: rewrite(d, "subscriptions", set_field("subscriptions", "monthly_fee", b"12.5x")),
        ["subscriptions.csv", "column monthly_fee", "decimal", "line 3"],
    ),
    "bad_date": (
        lambda d: rewrite(d, "users", set_field("users", "signup_date", b"2024-02-30")),
        ["users.csv", "column signup_date", "must be a date", "line 3: '2024-02-30'"],
    ),
    "bad_timestamp": (
        lambda d: rewrite(d, "payments", set_field("payments", "attempted_at", b"yesterday noon")),
        ["payments.csv", "column attempted_at", "ISO 8601", "line 3: 'yesterday noon'"],
    ),
    "bad_boolean": (
        lambda d: rewrite(d, "users", set_field("users", "partner", b"maybe")),
        ["users.csv", "column partner", "must be true or false", "line 3: 'maybe'"],
    ),
    "malformed_id": (
        lambda d: rewrite(d, "sessions", set_field("sessions", "user_id", b"7590-vhveg")),
        ["sessions.csv", "column user_id", "must be an id like 7590-VHVEG", "line 3: '7590-vhveg'"],
    ),
}


@pytest.fixture(scope="module")
def loaded_two_months(pg_settings, drops):
    settings = fresh_database(pg_settings, "ingest_defects")
    ingest(settings, drops[:2])
    return settings


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_structural_defect_is_refused_with_its_own_message_and_raw_unchanged(
    defect, loaded_two_months, drops, tmp_path
):
    settings = loaded_two_months
    before = raw_fingerprint(settings)
    bad = tmp_path / drops[2].name
    shutil.copytree(drops[2], bad)
    corrupt, expected = DEFECTS[defect]
    corrupt(bad)

    proc = run_cli(settings, "ingest", str(bad), check=False)

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())  # rich may wrap long lines
    assert bad.name in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{proc.stderr}"
    assert raw_fingerprint(settings) == before


def test_a_symlink_is_refused_before_its_target_is_read(loaded_two_months, drops, tmp_path):
    """The target's first line would be echoed by the header check: the link is refused before any read."""
    bad = tmp_path / drops[2].name
    shutil.copytree(drops[2], bad)
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("SECRET-FIRST-LINE-4711,not,a,header\n")
    (bad / "payments.csv").unlink()
    (bad / "payments.csv").symlink_to(secret)
    before = raw_fingerprint(loaded_two_months)

    proc = run_cli(loaded_two_months, "ingest", str(bad), check=False)

    assert proc.returncode != 0
    message = " ".join(proc.stderr.split())
    assert "payments.csv" in message and "is a symbolic link" in message
    assert "SECRET-FIRST-LINE-4711" not in proc.stdout + proc.stderr
    assert raw_fingerprint(loaded_two_months) == before


def test_several_problems_are_reported_together_in_one_block(loaded_two_months, drops, tmp_path):
    bad = tmp_path / drops[2].name
    shutil.copytree(drops[2], bad)
    rewrite(bad, "users", set_field("users", "partner", b"maybe", line=2))
    rewrite(bad, "users", set_field("users", "partner", b"perhaps", line=4))
    rewrite(bad, "sessions", set_field("sessions", "minutes", b"lots"))
    with pytest.raises(IngestError) as info:
        ingest(loaded_two_months, [bad])
    text = info.value.render()
    assert "line 2: 'maybe'" in text and "line 4: 'perhaps'" in text
    assert "column minutes" in text
