"""`streamflow features apply`: register ``feature_repo/`` in the SQL registry, idempotently."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from feast import Project
from feast.diff.registry_diff import TransitionType
from feast.repo_operations import apply_total_with_repo_instance, parse_repo

from streamflow.core.db import connect
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.features import contract as fc
from streamflow.features.store import FeaturesError, _errors, _kind, _registered_views, _silenced, feature_store

if TYPE_CHECKING:
    from feast.repo_contents import RepoContents

REPO_MODULES = ("entities", "data_sources", "feature_views", "on_demand", "feature_services")


# ---------------------------------------------------------------------------------------
# the feature repo
# ---------------------------------------------------------------------------------------
_repo_lock = threading.Lock()


def load_repo(settings: Settings) -> RepoContents:
    """The objects feature_repo/ defines, parsed exactly as `feast apply` parses them, with the feature
    schemas read from the dbt manifest of these settings."""

    root = settings.feature_repo_dir.resolve()
    if not (root / "feature_store.yaml").exists():
        raise FeaturesError(f"no Feast repo at {root} (feature_store.yaml missing)")
    with _repo_lock, fc.manifest_of(settings):
        for name in REPO_MODULES:  # re-import: another manifest may define other schemas
            module = sys.modules.get(name)
            if module is not None and str(getattr(module, "__file__", "")).startswith(str(root)):
                del sys.modules[name]
        cwd = os.getcwd()
        sys.path.insert(0, str(root))
        os.chdir(root)  # parse_repo names modules relative to the working directory
        try:
            return parse_repo(root)
        finally:
            os.chdir(cwd)
            with contextlib.suppress(ValueError):
                sys.path.remove(str(root))


def _manifest(settings: Settings) -> dict[str, Any]:
    return fc.load_manifest(fc.ensure_manifest(settings))


def _relation(settings: Settings, model: str) -> str:
    return fc.relation(_manifest(settings), model)


def _missing_relations(conn, relations: list[str]) -> list[str]:
    return [r for r in relations if conn.execute("select to_regclass(%s)", (r,)).fetchone()[0] is None]


@dataclass
class ApplyResult:
    project: str
    changes: list[str]  # "create feature view usage_agg_30d", ...; empty when nothing changed
    objects: dict[str, list[str]]  # kind -> names, as registered
    online_store: str
    seconds: float

    @property
    def unchanged(self) -> bool:
        return not self.changes


def apply(settings: Settings, progress: Progress = SILENT) -> ApplyResult:
    """Register feature_repo/ in the SQL registry and create the online tables; idempotent.

    Also creates the push source's offline table. Needs the marts (run `streamflow build` first).
    """

    started = time.perf_counter()
    progress.start("reading the dbt manifest")
    with _errors(settings, "reading the marts"):
        manifest = _manifest(settings)
        relations = [fc.mart_contract(manifest, m).relation for m in FEATURE_MARTS]
        with connect(settings) as conn:
            missing = _missing_relations(conn, relations)
            if missing:
                raise FeaturesError(
                    f"the marts {', '.join(missing)} do not exist yet: run `streamflow ingest` "
                    "and `streamflow build` first"
                )
            conn.execute(fc.usage_event_ddl())
            conn.commit()
    progress.start("importing Feast")
    store = feature_store(settings)
    progress.start("parsing feature_repo/")
    with _errors(settings, "parsing feature_repo/"):
        repo = load_repo(settings)
    problems = fc.disagreements(repo.feature_views, manifest)
    if problems:
        raise FeaturesError("the feature views disagree with the dbt contracts:\n  " + "\n  ".join(problems))
    progress.start("applying to the registry")

    if not repo.projects:  # as `feast apply` does: the project named in the configuration
        repo.projects.append(Project(name=store.project))
    # A registered view carries its materialization history; the same definition without it would
    # count as changed and be rewritten. Keep the history, so an unchanged repo is a true no-op.
    with _errors(settings, "reading the registry"):
        registered = {v.name: v for v in _registered_views(store)}
    for view in repo.feature_views:
        if view.name in registered:
            view.materialization_intervals = list(registered[view.name].materialization_intervals)
    with _errors(settings, "applying the feature repo"), _silenced():
        registry_diff, _infra_diff, _infra = store.plan(repo)  # infers like apply, then compares
        changes = [
            f"{d.transition_type.name.lower()} {_kind(d.feast_object_type)} {d.name}"
            for d in registry_diff.feast_object_diffs
            if d.transition_type != TransitionType.UNCHANGED
        ]
        apply_total_with_repo_instance(store, store.project, store.registry, repo, skip_source_validation=False)
        store.refresh_registry()
    objects = {
        "entities": sorted(e.name for e in store.list_entities()),
        "feature views": sorted(v.name for v in store.list_feature_views()),
        "on-demand feature views": sorted(v.name for v in store.list_on_demand_feature_views()),
        "feature services": sorted(s.name for s in store.list_feature_services()),
        "data sources": sorted(s.name for s in store.list_data_sources()),
    }
    return ApplyResult(
        project=store.project,
        changes=sorted(changes),
        objects=objects,
        online_store=settings.online_store,
        seconds=time.perf_counter() - started,
    )
