"""dbt in-process with the platform's settings: one dbt command, its packages, the parsed manifest.

This module is imported when Airflow parses the DAG files (through ``streamflow.orchestration``), so
it imports dbt only inside the functions that run it (dbt takes over a second to import).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from streamflow.core.env import tool_environment
from streamflow.core.errors import StreamflowError
from streamflow.core.settings import Settings

if TYPE_CHECKING:
    from dbt.cli.main import dbtRunnerResult
    from dbt.contracts.graph.manifest import Manifest

# dbt commands that need neither the installed packages nor a database
_NO_PACKAGES = {"deps", "clean", "init", "--version", "-v", "--help", "-h"}


class DbtError(StreamflowError):
    """dbt could not do its job (compile or database error, a failing model test): a clear message."""


class DbtParseError(DbtError):
    """The dbt project does not parse (a Jinja, YAML or reference error in a model, test or macro)."""


def _parse_error(what: str, settings: Settings, text: str) -> DbtParseError:
    """One line naming what failed and where, and the command that checks the fix."""
    return DbtParseError(
        f"{what}: {one_line(text)}",
        hint=f"fix the file it names under {settings.dbt_project_dir}, then check with `streamflow dbt parse`",
    )


def one_line(text: str, parts: int = 3) -> str:
    """dbt's multi-line error as one line: its first lines up to the quoted source or a rule."""
    out: list[str] = []
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("---") or line.startswith("Raw Error") or "|" in line[:6]:
            break
        out.append(line.rstrip(":"))
        if len(out) == parts:
            break
    return ": ".join(out) or "see the dbt log"


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
    from dbt.cli.main import dbtRunner  # lazy: DAG parse time (orchestration imports this module; dbt takes ~1 s)

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
        res = invoke(settings, ["deps", "--quiet", "--log-level", "none"])
        if not res.success:
            raise _parse_error("dbt deps failed", settings, _exception_text(res))


def _package_names(project: Path) -> list[str]:
    """Names the packages of packages.yml install under (local packages: their dbt_project.yml name)."""
    try:
        spec = yaml.safe_load((project / "packages.yml").read_text()) or {}
        names = []
        for pkg in spec.get("packages") or []:
            if "local" in pkg:
                meta = yaml.safe_load((project / pkg["local"] / "dbt_project.yml").read_text())
                names.append(meta["name"])
            elif "package" in pkg:
                names.append(pkg["package"].split("/")[-1])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DbtParseError(
            f"the dbt packages of {project} cannot be read: {one_line(str(exc))}",
            hint=f"fix {project / 'packages.yml'} (and the local packages it names), then run `streamflow dbt parse`",
        ) from None
    return names


def parse(settings: Settings) -> Manifest:
    """`dbt parse`: the manifest (written to target/manifest.json). Needs no database."""
    ensure_packages(settings)
    # dbt's own error output is left out: the error below says it in one line (the dbt log has it all)
    res = invoke(settings, ["parse", "--quiet", "--log-level", "none", "--vars", json.dumps(dbt_vars(settings))])
    if not res.success or res.result is None:
        raise _parse_error("the dbt project does not parse", settings, _exception_text(res))
    return res.result


def manifest_path(settings: Settings) -> Path:
    """target/manifest.json, refreshed by `streamflow build` and `streamflow dbt parse`."""
    return settings.dbt_target_dir / "manifest.json"


def _exception_text(res: dbtRunnerResult) -> str:
    if res.exception is not None:
        return str(res.exception).strip()
    return "see the dbt log"


def _run_results(res: dbtRunnerResult) -> list:
    result = res.result
    return list(getattr(result, "results", None) or [])


def _status(result) -> str:
    status = result.status
    return str(status.value if hasattr(status, "value") else status)
