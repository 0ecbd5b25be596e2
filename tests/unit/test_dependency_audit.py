"""The dependency audit (ops/scripts/audit_dependencies.py): the committed allowlist is well formed, and the verdict
on pip-audit's JSON report fails on an unlisted advisory, an unaudited package or an overdue review."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "ops" / "scripts" / "audit_dependencies.py"
_spec = importlib.util.spec_from_file_location("audit_dependencies", SCRIPT)
audit = importlib.util.module_from_spec(_spec)
sys.modules["audit_dependencies"] = audit  # dataclasses resolve their annotations through sys.modules
_spec.loader.exec_module(audit)

TODAY = dt.date(2026, 12, 4)


def report(*deps: dict) -> dict:
    """A pip-audit ``--format json`` report."""
    return {"dependencies": list(deps), "fixes": []}


def vulnerable(name="jinja2", version="3.1.6", vid="GHSA-aaaa-bbbb-cccc", aliases=("CVE-2026-0001",), fixed=("3.1.7",)):
    vuln = {"id": vid, "fix_versions": list(fixed), "aliases": list(aliases), "description": "..."}
    return {"name": name, "version": version, "vulns": [vuln]}


def clean(name="fastapi", version="0.136.3"):
    return {"name": name, "version": version, "vulns": []}


def accepted(vid="GHSA-aaaa-bbbb-cccc", package="jinja2", review_by=dt.date(2027, 3, 31)):
    return audit.Accepted(vid, package, "templates only render our own files, never user input", review_by)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "allowlist.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------
# the committed allowlist
# ---------------------------------------------------------------------------------------
def test_the_committed_allowlist_is_well_formed_and_every_entry_has_a_reason_and_a_review_date():
    entries = audit.load_allowlist(audit.ALLOWLIST)
    raw = tomllib.loads(audit.ALLOWLIST.read_text()).get("ignore", [])
    assert len(entries) == len(raw)
    for entry in entries:
        assert len(entry.reason) >= audit.MIN_REASON and isinstance(entry.review_by, dt.date)
    assert "[[ignore]]" in audit.ALLOWLIST.read_text()  # the format is documented in the file itself


def test_the_audit_covers_the_lock_file_and_pins_pip_audit():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("pip-audit==") for d in pyproject["dependency-groups"]["dev"])
    assert "make audit" in (ROOT / ".ci" / "run").read_text()
    assert "audit_dependencies.py" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[ignore]]\nid = "X-1"\npackage = "a"\nreview_by = 2027-01-01\n', "missing reason"),
        ('[[ignore]]\nid = "X-1"\npackage = "a"\nreason = "later"\nreview_by = 2027-01-01\n', "the reason must say"),
        ('[[ignore]]\nid = "X-1"\npackage = "a"\nreason = "' + "r" * 30 + '"\nreview_by = "soon"\n', "must be a date"),
        ('[[ignore]]\nid = "X-1"\npackage = "a"\nreason = "' + "r" * 30 + '"\nreview_by = 2027-01-01\nok = 1\n', "ok"),
        (
            "[[ignore]]\n"
            + 'id = "X-1"\npackage = "a"\nreason = "'
            + "r" * 30
            + '"\nreview_by = 2027-01-01\n' * 1
            + "[[ignore]]\n"
            + 'id = "X-1"\npackage = "b"\nreason = "'
            + "r" * 30
            + '"\nreview_by = 2027-01-01\n',
            "appears twice",
        ),
        ("ignores = []\n", "unknown top-level key"),
    ],
    ids=["no-reason", "short-reason", "not-a-date", "unknown-key", "duplicate", "misspelt-table"],
)
def test_a_malformed_allowlist_is_refused_naming_the_problem(tmp_path, text, problem):
    with pytest.raises(audit.AllowlistError, match=problem):
        audit.load_allowlist(write(tmp_path, text))


def test_a_well_formed_entry_is_loaded_with_its_package_name_normalized(tmp_path):
    text = '[[ignore]]\nid = "GHSA-1"\npackage = "Foo_Bar"\nreason = "' + "r" * 25 + '"\nreview_by = 2027-01-01\n'
    (entry,) = audit.load_allowlist(write(tmp_path, text))
    assert entry == audit.Accepted("GHSA-1", "foo-bar", "r" * 25, dt.date(2027, 1, 1))


# ---------------------------------------------------------------------------------------
# the verdict
# ---------------------------------------------------------------------------------------
def test_a_clean_report_passes():
    verdict = audit.evaluate(report(clean(), clean("httpx", "0.28.1")), [], TODAY)
    assert verdict.ok and verdict.audited == 2
    assert audit.render(verdict) == "dependency audit: 2 locked packages, no known vulnerabilities"


def test_an_advisory_not_in_the_allowlist_fails_naming_package_version_id_aliases_and_fix():
    verdict = audit.evaluate(report(clean(), vulnerable()), [], TODAY)
    assert not verdict.ok
    assert verdict.failures == ["jinja2 3.1.6: GHSA-aaaa-bbbb-cccc (aliases: CVE-2026-0001; fixed in: 3.1.7)"]
    text = audit.render(verdict)
    assert text.startswith("dependency audit FAILED:") and "uv lock --upgrade-package" in text


@pytest.mark.parametrize("vid", ["GHSA-aaaa-bbbb-cccc", "CVE-2026-0001"])
def test_an_allowlisted_advisory_passes_by_id_or_alias(vid):
    verdict = audit.evaluate(report(vulnerable()), [accepted(vid)], TODAY)
    assert verdict.ok and verdict.accepted == [f"jinja2 3.1.6 {vid}"]
    assert "allowlisted: jinja2 3.1.6" in audit.render(verdict)


def test_an_allowlist_entry_for_another_package_does_not_cover_the_advisory():
    assert not audit.evaluate(report(vulnerable()), [accepted(package="markupsafe")], TODAY).ok


def test_an_overdue_review_fails_even_when_the_advisory_is_allowlisted():
    verdict = audit.evaluate(report(vulnerable()), [accepted(review_by=dt.date(2026, 12, 3))], TODAY)
    assert not verdict.ok and "was due for review on 2026-12-03" in verdict.failures[0]


def test_a_package_that_could_not_be_audited_fails_the_audit():
    reason = "Dependency not found on PyPI and could not be audited: aiohttp (3.14.5)"  # pip-audit's own words
    skipped = {"name": "aiohttp", "skip_reason": reason}
    verdict = audit.evaluate(report(clean(), skipped), [], TODAY)
    assert not verdict.ok and verdict.failures[0].startswith("1 of 2 locked packages could not be audited: aiohttp")
    assert "pypi.org/pypi/NAME/VERSION/json" in audit.render(verdict)


def test_an_entry_that_matches_nothing_is_reported_for_removal():
    verdict = audit.evaluate(report(clean()), [accepted()], TODAY)
    assert verdict.ok and verdict.notes == [
        "allowlisted GHSA-aaaa-bbbb-cccc (jinja2) no longer matches anything: remove it"
    ]


def test_the_script_judges_a_report_and_exits_1_with_the_failure_on_stderr(tmp_path):
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(report(vulnerable())))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--report", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "jinja2 3.1.6: GHSA-aaaa-bbbb-cccc" in proc.stderr
    bad = write(tmp_path, "[[ignore]]\nid = 1\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--report", str(path), "--allowlist", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is malformed" in proc.stderr
    assert "missing package, reason, review_by" in proc.stderr
