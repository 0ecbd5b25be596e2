"""Feature schemas from the dbt contracts: type mapping and contract reading, on small synthetic manifests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamflow.core.env import tool_environment
from streamflow.core.settings import Settings
from streamflow.features import contract as fc

ROOT = Path(__file__).resolve().parents[2]


def manifest(columns: dict[str, str], *, enforced: bool = True, name: str = "usage_agg_30d") -> dict:
    return {
        "nodes": {
            f"model.streamflow.{name}": {
                "name": name,
                "schema": "marts",
                "alias": name,
                "config": {"contract": {"enforced": enforced}},
                "columns": {col: {"name": col, "data_type": dt} for col, dt in columns.items()},
            }
        }
    }


BASE = {"user_id": "text", "as_of": "timestamptz", "watch_hours_30d": "double precision", "skips_7d": "bigint"}


@pytest.mark.parametrize(
    ("data_type", "feast"),
    [
        ("text", "String"),
        ("boolean", "Bool"),
        ("integer", "Int32"),
        ("bigint", "Int64"),
        ("double precision", "Float64"),
        ("DOUBLE  PRECISION", "Float64"),
        ("numeric(10,2)", "Float64"),
        ("varchar(20)", "String"),
        ("timestamptz", "UnixTimestamp"),
    ],
)
def test_contract_types_map_to_feast_types(data_type, feast):
    assert fc.feast_type_name(data_type) == feast


def test_a_type_without_a_feast_type_is_a_clear_error():
    with pytest.raises(fc.ContractError, match="'jsonb' has no Feast type"):
        fc.feast_type_name("jsonb")


def test_a_contract_yields_the_relation_and_the_features_in_declaration_order():
    contract = fc.mart_contract(manifest(BASE), "usage_agg_30d")
    assert contract.relation == "marts.usage_agg_30d"
    assert contract.features == (("watch_hours_30d", "double precision"), ("skips_7d", "bigint"))


def test_only_an_enforced_contract_can_back_a_feature_view():
    with pytest.raises(fc.ContractError, match="no enforced contract"):
        fc.mart_contract(manifest(BASE, enforced=False), "usage_agg_30d")


@pytest.mark.parametrize("column", ["user_id", "as_of"])
def test_a_mart_without_the_join_columns_is_refused(column):
    columns = {k: v for k, v in BASE.items() if k != column}
    with pytest.raises(fc.ContractError, match=f"lacks the column '{column}'"):
        fc.mart_contract(manifest(columns), "usage_agg_30d")


def test_a_missing_model_is_named():
    with pytest.raises(fc.ContractError, match="no model 'payments_agg_90d'"):
        fc.mart_contract(manifest(BASE), "payments_agg_90d")


def test_the_push_table_ddl_declares_every_usage_event_column():
    ddl = fc.usage_event_ddl()
    for name, data_type in fc.USAGE_EVENT_COLUMNS:
        assert re.search(rf"\b{name} {data_type}\b", ddl), name
    assert "create table if not exists feast_push.usage_events" in ddl


def test_feature_store_yaml_reads_only_variables_that_stack_env_exports(tmp_path):
    """`eval "$(streamflow stack env --show-secrets)"` must be enough for the `feast` CLI in feature_repo/."""
    settings = Settings(_env_file=None, home=tmp_path, project_dir=ROOT, database_url=None)
    exported = tool_environment(settings)
    text = (ROOT / "feature_repo" / "feature_store.yaml").read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert placeholders, "feature_store.yaml reads its connection settings from the environment"
    assert placeholders <= exported.keys(), placeholders - exported.keys()
    assert all(f'"${{{name}}}"' in text for name in placeholders), "placeholders are quoted"
    assert exported["STREAMFLOW_DBT_TARGET_PATH"] == str(settings.dbt_target_dir)
