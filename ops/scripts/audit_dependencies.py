"""The dependency audit: every package of uv.lock against the known advisories, with pip-audit.

    .venv/bin/python ops/scripts/audit_dependencies.py      (or: make audit; CI runs it after the tests)

Exports the locked set (`uv export --frozen --no-hashes`, the project itself left out), runs `pip-audit` on it
(`--no-deps --disable-pip`: exactly the locked versions, nothing resolved or installed; default service: PyPI's
JSON API, https://pypi.org/pypi/<name>/<version>/json), then decides:

- an advisory not in the allowlist (ops/pip-audit-allowlist.toml) fails the audit, with the package, its version,
  the advisory, its aliases and the fixed versions;
- a package pip-audit could not audit (the service did not answer for it) fails it too: unaudited is not clean;
- an allowlist entry past its ``review_by`` date fails it: somebody looks again;
- an allowlist entry that matches nothing is reported, to be removed.

Exit status 0 when clean, 1 when not, 2 when the allowlist itself is malformed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = ROOT / "ops" / "pip-audit-allowlist.toml"
BIN = Path(sys.executable).parent
ENTRY_KEYS = {"id", "package", "reason", "review_by"}
MIN_REASON = 20  # characters: a reason says why the advisory does not apply, or what is waited for


@dataclass(frozen=True)
class Accepted:
    """One allowlisted advisory."""

    id: str
    package: str
    reason: str
    review_by: dt.date


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    audited: int = 0
    unaudited: int = 0
    accepted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class AllowlistError(ValueError):
    """The allowlist is malformed: every problem, one per line."""


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def load_allowlist(path: Path = ALLOWLIST) -> list[Accepted]:
    """The ``[[ignore]]`` entries of the allowlist, checked: id, package, a reason of substance, a review date;
    no other key, no id twice."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    problems = [f"unknown top-level key {key!r} (only [[ignore]] entries)" for key in data if key != "ignore"]
    entries, seen = [], set()
    for i, raw in enumerate(data.get("ignore", []), start=1):
        where = f"[[ignore]] #{i} ({raw.get('id', 'no id')})"
        before = len(problems)
        missing = sorted(ENTRY_KEYS - raw.keys())
        unknown = sorted(raw.keys() - ENTRY_KEYS)
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
        if missing or unknown:
            continue
        reason = raw["reason"].strip() if isinstance(raw["reason"], str) else ""
        if len(reason) < MIN_REASON:
            problems.append(f"{where}: the reason must say why the advisory is accepted (>= {MIN_REASON} characters)")
        if not isinstance(raw["review_by"], dt.date) or isinstance(raw["review_by"], dt.datetime):
            problems.append(f"{where}: review_by must be a date (review_by = 2027-03-31)")
        if not all(isinstance(raw[k], str) and raw[k].strip() for k in ("id", "package")):
            problems.append(f"{where}: id and package must be non-empty strings")
        elif raw["id"] in seen:
            problems.append(f"{where}: the id appears twice")
        seen.add(raw["id"])
        if len(problems) == before:
            entries.append(Accepted(raw["id"], _normalized(raw["package"]), reason, raw["review_by"]))
    if problems:
        raise AllowlistError("\n".join(problems))
    return entries


def evaluate(report: dict, allowlist: list[Accepted], today: dt.date) -> Verdict:
    """The audit's verdict on pip-audit's JSON report (``--format json``)."""
    verdict = Verdict()
    used: set[str] = set()
    skipped: list[str] = []
    why = ""
    for dep in report.get("dependencies", []):
        name, version = _normalized(dep["name"]), dep.get("version", "?")
        if "skip_reason" in dep:
            skipped.append(name)
            why = why or dep["skip_reason"]
            continue
        verdict.audited += 1
        for vuln in dep.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            match = next((a for a in allowlist if a.id in ids and a.package == name), None)
            if match is not None:
                used.add(match.id)
                verdict.accepted.append(f"{name} {version} {match.id}")
                continue
            aliases = ", ".join(sorted(set(vuln.get("aliases", [])) - {vuln["id"]})) or "none"
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed version yet"
            verdict.failures.append(f"{name} {version}: {vuln['id']} (aliases: {aliases}; fixed in: {fixed})")
    if skipped:
        verdict.failures.append(
            f"{len(skipped)} of {len(skipped) + verdict.audited} locked packages could not be audited: "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''} (pip-audit: {why})"
        )
        verdict.unaudited = len(skipped)
    for entry in allowlist:
        if entry.review_by < today:
            verdict.failures.append(
                f"allowlisted {entry.id} ({entry.package}) was due for review on {entry.review_by}: check it again, "
                "then remove the entry or move review_by"
            )
        if entry.id not in used and not skipped:
            verdict.notes.append(f"allowlisted {entry.id} ({entry.package}) no longer matches anything: remove it")
    return verdict


def render(verdict: Verdict) -> str:
    """What the audit prints."""
    if verdict.ok:
        accepted = f"; allowlisted: {', '.join(verdict.accepted)}" if verdict.accepted else ""
        lines = [f"dependency audit: {verdict.audited} locked packages, no known vulnerabilities{accepted}"]
    else:
        lines = ["dependency audit FAILED:", *(f"  - {f}" for f in verdict.failures)]
        if verdict.unaudited:
            lines.append(
                "next: the audit asks PyPI's JSON API for each locked version (https://pypi.org/pypi/NAME/VERSION/json);"
                " run it where that answers (CI), or through a proxy that serves it"
            )
        if len(verdict.failures) > (1 if verdict.unaudited else 0):
            lines.append(
                "next: upgrade the package (`.venv/bin/uv lock --upgrade-package NAME`, then `make venv`), or, when "
                "the advisory does not apply, add it to ops/pip-audit-allowlist.toml with a reason and a review date"
            )
    return "\n".join([*lines, *(f"note: {n}" for n in verdict.notes)])


def locked_requirements(target: Path) -> None:
    """The locked set (runtime and dev groups) as a requirements file, without the project itself."""
    subprocess.run(
        [str(BIN / "uv"), "export", "--frozen", "--no-hashes", "--no-emit-project", "--quiet", "-o", str(target)],
        cwd=ROOT,
        check=True,
    )


def run_pip_audit(requirements: Path, out: Path) -> dict:
    """pip-audit's JSON report on ``requirements`` (exit status 1 only means "found something")."""
    proc = subprocess.run(
        [
            str(BIN / "pip-audit"),
            "--requirement",
            str(requirements),
            "--no-deps",
            "--disable-pip",
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not out.exists() or proc.returncode not in (0, 1):
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise SystemExit(f"dependency audit FAILED: pip-audit exited {proc.returncode} without a report\n{tail}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allowlist", type=Path, default=ALLOWLIST)
    parser.add_argument("--report", type=Path, help="judge this pip-audit JSON report instead of running pip-audit")
    args = parser.parse_args(argv)
    try:
        allowlist = load_allowlist(args.allowlist)
    except (AllowlistError, tomllib.TOMLDecodeError) as exc:
        print(f"dependency audit: {args.allowlist} is malformed:\n{exc}", file=sys.stderr)
        return 2
    if args.report:
        report = json.loads(args.report.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="streamflow-audit-") as tmp:
            requirements = Path(tmp) / "requirements.txt"
            locked_requirements(requirements)
            report = run_pip_audit(requirements, Path(tmp) / "audit.json")
    verdict = evaluate(report, allowlist, dt.date.today())
    print(render(verdict), file=sys.stdout if verdict.ok else sys.stderr)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
