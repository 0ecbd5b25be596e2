"""The materialization engine setting: parsing, refusals, and the Feast configuration it generates."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from streamflow.core.settings import Settings, SettingsError
from streamflow.features import bulk_store, store
from streamflow.features.ray_engine import RayEngineError, _reachable
from tests.conftest import ROOT, STREAMFLOW, free_port

URL = "postgresql://streamflow:pw@db.example:5432/warehouse"
REGISTRY = "postgresql+psycopg://feast:pw@db.example:5432/feast"


def settings(**values) -> Settings:
    return Settings(_env_file=None, database_url=URL, feast_registry_url=REGISTRY, **values)


def test_the_default_engine_is_local_and_the_configuration_is_unchanged():
    s = settings()
    assert (s.feast_engine, s.ray_address) == ("local", "")
    for materializing in (False, True):
        config = store.repo_config(s, materializing=materializing)
        assert config.batch_engine_config == "local"
        assert config.online_config["type"] == "postgres"


def test_ray_with_an_address_runs_feasts_ray_engine_on_that_cluster():
    s = settings(feast_engine="ray", ray_address="ray-head:6379")
    config = store.repo_config(s, materializing=True)
    assert config.batch_engine_config == {"type": "ray.engine", "ray_address": "ray-head:6379"}
    assert config.batch_engine.ray_address == "ray-head:6379"  # Feast's own engine configuration validates it
    assert config.online_config["type"] == bulk_store.BULK_TYPE  # the workers write with COPY, same tables
    assert config.online_store.db_schema == "feast_online" and config.online_store.host == "db.example"
    # one row per user (Feast's latest in the window, as the local path reads), written in bounded batches
    assert config.materialization_config.pull_latest_features is True
    assert config.materialization_config.online_write_batch_size == s.materialize_chunk_rows


def test_ray_without_an_address_starts_a_local_cluster_never_one_left_running():
    config = store.repo_config(settings(feast_engine="ray"), materializing=True)
    assert config.batch_engine_config == {"type": "ray.engine", "ray_address": None, "ray_conf": {"address": "local"}}


def test_ray_on_redis_keeps_feasts_redis_writer():
    s = settings(feast_engine="ray", ray_address="10.0.0.5:6379", online_store="redis", redis_url="redis:6379")
    config = store.repo_config(s, materializing=True)
    assert config.online_config["type"] == "redis"
    assert config.batch_engine_config["type"] == "ray.engine"


def test_only_materialization_builds_the_ray_engine():
    """Feast builds the batch engine whenever it updates infrastructure: apply and the API stay local."""
    s = settings(feast_engine="ray", ray_address="ray-head:6379")
    assert store.repo_config(s).batch_engine_config == "local"
    assert store.repo_config(s).online_config["type"] == "postgres"
    assert store._store_key(s, True) != store._store_key(s, False)


@pytest.mark.parametrize("value", ["Ray", " local "])
def test_engine_names_are_read_case_and_space_insensitively(value):
    assert settings(feast_engine=value).feast_engine == value.strip().lower()


@pytest.mark.parametrize("value", ["spark", "", "ray.engine"])
def test_an_unknown_engine_is_refused_naming_the_setting_and_the_choices(value):
    with pytest.raises(SettingsError) as err:
        settings(feast_engine=value)
    assert "STREAMFLOW_FEAST_ENGINE" in str(err.value) and "allowed: local, ray" in str(err.value)
    assert err.value.hint


@pytest.mark.parametrize("value", ["127.0.0.1:6379", "ray-head:6379", "ray://head.example:10001", "auto", ""])
def test_ray_addresses_that_are_accepted(value):
    assert settings(ray_address=value).ray_address == value


@pytest.mark.parametrize("value", ["ray-head", "http://ray-head:6379", "127.0.0.1:port", "a b:1"])
def test_ray_addresses_that_are_refused(value):
    with pytest.raises(SettingsError, match="STREAMFLOW_RAY_ADDRESS"):
        settings(ray_address=value)


def test_the_command_line_refuses_an_unknown_engine_without_a_traceback():
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    env["STREAMFLOW_FEAST_ENGINE"] = "spark"
    proc = subprocess.run(
        [STREAMFLOW, "stack", "status"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "STREAMFLOW_FEAST_ENGINE='spark' is not an engine; allowed: local, ray" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_head_node_that_does_not_answer_fails_fast_with_the_address():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RayEngineError, match=address):
        _reachable(address)
    assert time.monotonic() - started < 10
