"""The shared names declared once in streamflow.core.names agree with the dbt project and the Feast repo."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from streamflow.core import names
from streamflow.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DBT = ROOT / "dbt_project"


def test_every_mart_and_snapshot_named_is_a_dbt_model_or_snapshot():
    for mart in names.MARTS:
        assert (DBT / "models" / "marts" / f"{mart}.sql").is_file(), mart
    declared = {
        s["name"] for path in (DBT / "snapshots").glob("*.yml") for s in yaml.safe_load(path.read_text())["snapshots"]
    }
    assert set(names.SNAPSHOTS) == declared
    assert set(names.FEATURE_MARTS) < set(names.MARTS) and names.LABELS_MART not in names.FEATURE_MARTS


def test_the_schemas_named_are_where_dbt_builds():
    project = yaml.safe_load((DBT / "dbt_project.yml").read_text())
    assert project["models"]["streamflow"]["marts"]["+schema"] == names.MART_SCHEMA
    assert project["snapshots"]["streamflow"]["+schema"] == names.SNAPSHOT_SCHEMA
    sources = yaml.safe_load((DBT / "models" / "staging" / "__sources.yml").read_text())["sources"]
    assert names.RAW_SCHEMA in {s.get("schema") for s in sources}
    macro = (DBT / "macros" / "ml_churn_scores.sql").read_text()
    statement = "create table if not exists " + names.CHURN_SCORES  # not spelled whole: see test_ml_score
    assert statement in macro


def test_the_feast_repo_and_the_settings_use_the_names_rather_than_spelling_them_again():
    repo = " ".join((ROOT / "feature_repo" / f).read_text() for f in ("feature_services.py", "feature_views.py"))
    for literal in (names.MODEL_SERVICE, names.ALL_SERVICE, names.PUSH_VIEW, names.MODEL_NAME):
        assert f'"{literal}"' not in repo, literal
    defaults = Settings.model_fields
    assert defaults["model_name"].default == names.MODEL_NAME
    assert defaults["feature_service"].default == names.MODEL_SERVICE


def test_no_python_module_declares_a_shared_name_again():
    shared = {n for n in vars(names) if n.isupper()}
    again = []
    for pkg in ("streamflow", "ml", "serving"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "streamflow" / "core" / "names.py":
                continue
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Assign):
                    again += [
                        f"{path.relative_to(ROOT)}: {t.id}"
                        for t in node.targets
                        if isinstance(t, ast.Name) and t.id in shared
                    ]
    assert again == []
