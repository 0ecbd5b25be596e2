"""The compose stack, checked without a Docker engine: the Compose Specification schema, the
commands and variables it uses against the real CLIs and settings, secrets, healthchecks,
volumes, ports, images, and the Dockerfile's install step against `make test`."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from streamflow.core.settings import Settings
from tests.compose_model import (
    ENV_EXAMPLE,
    ROOT,
    MissingVariable,
    all_strings,
    command_argv,
    environment,
    interpolate,
    option_value,
    project_services,
    raw_compose,
    read_env_file,
    services,
    variables_in,
)

BIN = Path(sys.executable).parent
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
CI_WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
DOCS = [ROOT / "README.md", ROOT / "ops" / "README.md"]
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY)$")
UIS_AND_API = {"gateway", "airflow-apiserver", "mlflow-ui", "grafana", "prometheus"}
OFFICIAL_IMAGES = {"postgres", "redis", "nginx", "prom/prometheus", "grafana/grafana"}


@pytest.fixture(scope="module")
def generated_env(tmp_path_factory) -> dict[str, str]:
    """The .env that ops/scripts/init-env.sh writes from .env.example."""
    target = tmp_path_factory.mktemp("env") / ".env"
    subprocess.run(["bash", str(ROOT / "ops/scripts/init-env.sh"), str(target)], check=True, capture_output=True)
    return read_env_file(target)


@pytest.fixture(scope="module")
def rendered(generated_env) -> dict:
    """docker-compose.yml as compose sees it with that .env."""
    return interpolate(raw_compose(), generated_env)


def _validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


# ---------------------------------------------------------------------------------------------
# the Compose Specification
# ---------------------------------------------------------------------------------------------
def test_compose_file_is_valid_against_the_compose_specification_schema(rendered):
    validator = _validator()
    for doc in (raw_compose(), rendered):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["services"]["api"].update(helthcheck=d["services"]["api"].pop("healthcheck")),
        lambda d: d["services"]["api"]["depends_on"]["redis"].update(condition="healthy"),
        lambda d: d["services"]["postgres"].update(ports="5432"),
        lambda d: d.update(volume={}),
    ],
    ids=["misspelt-key", "unknown-condition", "ports-not-a-list", "unknown-top-level-key"],
)
def test_the_schema_check_rejects_a_broken_compose_file(mutate):
    doc = copy.deepcopy(raw_compose())
    mutate(doc)
    assert list(_validator().iter_errors(doc)), "the schema accepted a broken compose file"


def test_compose_refuses_to_start_while_a_secret_is_missing(generated_env):
    env = dict(generated_env, WAREHOUSE_DB_PASSWORD="")
    with pytest.raises(MissingVariable, match="WAREHOUSE_DB_PASSWORD"):
        interpolate(raw_compose(), env)


# ---------------------------------------------------------------------------------------------
# docs, commands
# ---------------------------------------------------------------------------------------------
def _doc_service_mentions() -> set[str]:
    """Services named in the docs and the CI workflow: `docker compose run/exec/logs ... SERVICE` and
    the first column of the services table in ops/README.md."""
    names = set()
    option = r"\s+--?[\w-]+(?:[ =](?:\d+|[^\s`]+=[^\s`]+))?"
    verb = r"docker compose (?:run|exec|logs|restart|stop|start|up)"
    compose_cmd = re.compile(rf"{verb}((?:{option})*)\s+([a-z][a-z0-9-]+)")
    for path in [*DOCS, CI_WORKFLOW]:
        if not path.exists():
            continue
        text = path.read_text()
        for m in compose_cmd.finditer(text):
            if not m.group(2).startswith("-"):
                names.add(m.group(2))
        names |= set(re.findall(r"--scale ([a-z][a-z0-9-]+)=", text))
        for line in text.splitlines():
            m = re.match(r"\| `([a-z][a-z0-9-]+)` \|", line)
            if m:
                names.add(m.group(1))
    return names


def test_every_service_the_docs_mention_exists_in_the_compose_file():
    mentioned = _doc_service_mentions()
    assert {"api", "job", "postgres", "grafana"} <= mentioned  # the scan finds what the docs say
    assert mentioned - set(services()) == set()


def test_every_compose_service_is_described_in_the_ops_readme():
    table = {m for m in re.findall(r"^\| `([a-z][a-z0-9-]+)` \|", (ROOT / "ops/README.md").read_text(), re.M)}
    assert table == set(services())


def _streamflow_commands() -> list[list[str]]:
    """Every `streamflow ...` argv the stack runs: compose commands and healthchecks, the CI workflow
    (one per sub-command and set of options)."""
    argvs = []
    for svc in services().values():
        for cmd in (svc.get("command"), (svc.get("healthcheck") or {}).get("test")):
            if cmd and command_argv(cmd)[0] == "streamflow":
                argvs.append(command_argv(cmd))
    for line in CI_WORKFLOW.read_text().splitlines():
        m = re.search(r"\bjob (streamflow(?: [^|&;]+)?)", line)
        if m:
            argvs.append(command_argv(m.group(1)))
    unique = {}
    for argv in argvs:
        unique.setdefault((*_subcommand(argv), *sorted(a for a in argv if a.startswith("-"))), argv)
    return list(unique.values())


def _subcommand(argv: list[str]) -> list[str]:
    """The sub-command words of a `streamflow` argv (stops at the first option or argument)."""
    words = []
    for arg in argv[1:]:
        if not re.fullmatch(r"[a-z][a-z-]*", arg):
            break
        words.append(arg)
    return words


def test_the_stack_runs_the_project_commands_it_is_meant_to():
    used = {" ".join(_subcommand(a)) for a in _streamflow_commands()}
    assert {"serve", "run", "generate", "stack status"} <= used


@pytest.mark.parametrize("argv", _streamflow_commands(), ids=lambda a: " ".join(a))
def test_every_project_command_the_stack_runs_exists_in_the_cli(argv):
    sub = _subcommand(argv)
    proc = subprocess.run(
        [str(BIN / "streamflow"), *sub, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "TERM": "dumb"},
    )
    assert proc.returncode == 0, f"`streamflow {' '.join(sub)}` does not exist:\n{proc.stderr}"
    options = [a.split("=")[0] for a in argv if a.startswith("--")]
    missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", proc.stdout)]
    assert missing == [], f"`streamflow {' '.join(sub)}` has no option {missing}"


def test_every_airflow_command_the_stack_runs_parses_with_the_installed_airflow(tmp_path):
    """Commands and healthchecks. (`mlflow server` runs with the compose arguments in
    tests/integration/test_compose_services.py.)"""
    argvs = []
    for svc in services().values():
        for cmd in (svc.get("command"), (svc.get("healthcheck") or {}).get("test")):
            if not cmd:
                continue
            argv = command_argv(cmd)
            if argv[0] == "CMD-SHELL":
                argv = command_argv(argv[1].replace("$${HOSTNAME}", "host"))
            elif argv[0] == "CMD":
                argv = argv[1:]
            if argv[0] == "airflow":
                argvs.append(argv[1:])
    assert len(argvs) == 5  # db migrate, api-server, scheduler, dag-processor, the dag-processor's jobs check
    code = textwrap.dedent(
        """
        import json, sys
        from airflow.cli.cli_parser import get_parser
        parser = get_parser()
        for argv in json.loads(sys.argv[1]):
            parser.parse_args(argv)  # exits 2 on an unknown command or option
        """
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argvs)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"airflow rejects a command of the compose file:\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------------------------------------
# variables the code reads
# ---------------------------------------------------------------------------------------------
def test_every_streamflow_variable_set_in_compose_is_a_setting():
    fields = {f"STREAMFLOW_{name.upper()}" for name in Settings.model_fields}
    for name, svc in services().items():
        unknown = {k for k in environment(svc) if k.startswith("STREAMFLOW_")} - fields
        assert unknown == set(), f"{name} sets variables no setting reads: {unknown}"


def test_every_setting_is_set_or_has_a_default():
    required = [name for name, field in Settings.model_fields.items() if field.is_required()]
    assert required == []


@pytest.mark.parametrize("service", ["api", "airflow-scheduler", "airflow-dag-processor", "job"])
def test_project_containers_load_settings_that_point_at_the_compose_services(service, rendered, monkeypatch):
    settings = _settings_of(rendered["services"][service], monkeypatch)
    assert not settings.embedded
    owner = service != "api"  # the api logs in as its own role (ops/postgres/warehouse-grants.sql)
    warehouse = urlsplit(settings.database_url)
    assert (warehouse.scheme, warehouse.hostname, warehouse.port, warehouse.path, warehouse.username) == (
        "postgresql",
        "postgres",
        5432,
        "/warehouse",
        "streamflow" if owner else "streamflow_api",
    )
    registry = urlsplit(settings.feast_registry_url)
    assert (registry.scheme, registry.hostname, registry.path, registry.username) == (
        "postgresql+psycopg",
        "postgres",
        "/feast",
        "feast" if owner else "streamflow_api",
    )
    assert settings.online_store == "redis" and settings.redis_url == "redis:6379"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.project_dir == Path("/app") and settings.home == Path("/data/streamflow")
    if service == "api":
        assert settings.api_token is not None and len(settings.api_token.get_secret_value()) >= 32


def _settings_of(service: dict, monkeypatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("STREAMFLOW_"):
            monkeypatch.delenv(key)
    for key, value in environment(service).items():
        if key.startswith("STREAMFLOW_"):
            monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def test_tools_in_the_containers_get_every_variable_their_config_files_read(rendered, monkeypatch):
    """dbt's profile and Feast's feature_store.yaml read variables that the container's environment sets or
    the code derives from the settings (`streamflow stack env`)."""
    from streamflow.core.env import tool_environment

    service = rendered["services"]["airflow-scheduler"]
    env = {**environment(service), **tool_environment(_settings_of(service, monkeypatch))}
    files = [p for p in (ROOT / "dbt_project/profiles.yml", ROOT / "feature_repo/feature_store.yaml") if p.exists()]
    assert files
    for path in files:
        text = path.read_text()
        needed = set(re.findall(r"env_var\(\s*'(\w+)'\s*\)", text))  # dbt, no default
        needed |= {name for name, op, _ in variables_in(text) if op is None}  # Feast's ${VAR}
        assert needed - set(env) == set(), f"{path.name} reads variables nothing sets"
    assert (
        env["STREAMFLOW_PG_HOST"],
        env["STREAMFLOW_PG_PORT"],
        env["STREAMFLOW_PG_USER"],
        env["STREAMFLOW_PG_DATABASE"],
    ) == ("postgres", "5432", "streamflow", "warehouse")


def _listening_port(name: str, svc: dict) -> int:
    argv = command_argv(svc.get("command") or [])
    for option in ("--port",):
        if option in argv or any(a.startswith(option + "=") for a in argv):
            return int(option_value(argv, option))
    return {"postgres": 5432, "redis": 6379, "prometheus": 9090, "grafana": 3000, "gateway": 8080, "mlflow-ui": 5000}[
        name
    ]


def test_every_address_in_the_stack_points_at_a_service_on_the_port_it_listens_on(rendered):
    svcs = rendered["services"]
    seen = set()
    for name, svc in svcs.items():
        for key, value in environment(svc).items():
            if "://" in value:
                url = urlsplit(value)
                host, port = url.hostname, url.port
            elif key in ("STREAMFLOW_REDIS_URL", "STREAMFLOW_RAY_ADDRESS"):
                host, port = value.split(",")[0].split(":")
                port = int(port)
            else:
                continue
            assert host in svcs, f"{name}.{key} points at {host}, not a compose service"
            assert port == _listening_port(host, svcs[host]), f"{name}.{key}: {host} does not listen on {port}"
            seen.add(host)
    assert {"postgres", "redis", "mlflow", "airflow-apiserver"} <= seen


def _package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def _airflow_options() -> set[tuple[str, str]]:
    config_yml = _package_dir("airflow") / "config_templates" / "config.yml"
    config = yaml.load(config_yml.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    options = {(section, key) for section, body in config.items() for key in body["options"]}
    settings_py = (_package_dir("cosmos") / "settings.py").read_text()
    options |= {("cosmos", key) for key in re.findall(r'conf\.get\w*\(\s*"cosmos",\s*"(\w+)"', settings_py)}
    return options


def test_every_airflow_variable_is_a_real_airflow_or_cosmos_option():
    options = _airflow_options()
    assert ("cosmos", "enable_telemetry") in options
    for name, svc in services().items():
        for key in environment(svc):
            if key.startswith("AIRFLOW__"):
                section, option = key.removeprefix("AIRFLOW__").lower().split("__", 1)
                assert (section, option) in options, f"{name}: {key} is not an Airflow option"


def test_airflow_is_configured_as_the_platform_expects(rendered):
    env = environment(rendered["services"]["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/app/airflow/dags"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] == "False"
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"):
        url = urlsplit(env[key])
        assert (url.scheme, url.username, url.hostname, url.path) == (
            "postgresql+psycopg",
            "airflow",
            "postgres",
            "/airflow",
        )
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
    # components that sign or verify JWTs share one secret
    secrets_ = {
        environment(rendered["services"][s])["AIRFLOW__API_AUTH__JWT_SECRET"]
        for s in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor")
    }
    assert len(secrets_) == 1


def test_every_variable_compose_reads_is_in_env_example_or_has_a_default():
    example = read_env_file(ENV_EXAMPLE)
    used = set()
    for text in all_strings(raw_compose()):
        for name, op, _ in variables_in(text):
            used.add(name)
            assert name in example or op in (":-", "-"), f"${{{name}}} is neither in .env.example nor defaulted"
    stale = set(example) - used
    assert stale == set(), f".env.example sets variables compose never reads: {stale}"


def test_env_example_documents_every_setting_in_its_format():
    lines = ENV_EXAMPLE.read_text().splitlines()
    for name, field in Settings.model_fields.items():
        key = f"# STREAMFLOW_{name.upper()}="
        found = [i for i, line in enumerate(lines) if line.startswith(key)]
        assert found, f".env.example lacks {key}"
        description = " ".join((field.description or "").split())
        assert lines[found[0] - 1] == f"# {description}", f"{key} is not preceded by its description"


# ---------------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------------
def _secret_literals(doc: dict) -> list[str]:
    """Secret-looking values that are not a single required ${VAR} reference."""
    found = []
    for name, svc in services(doc).items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key) and not re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value):
                found.append(f"{name}.{key}")
            if "://" in value:
                password = urlsplit(value.replace("${", "<").replace("}", ">")).password
                if password is not None and not re.fullmatch(r"<[A-Z0-9_]+:\?[^>]*>", password):
                    found.append(f"{name}.{key} (password in URL)")
        for text in all_strings({k: v for k, v in svc.items() if k != "environment"}):
            if re.search(r"(?i)(password|secret|token)\s*[=:]\s*[^$\s]", text):
                found.append(f"{name}: {text[:40]}")
    return found


def test_no_secret_literal_appears_in_the_compose_file():
    assert _secret_literals(raw_compose()) == []


@pytest.mark.parametrize(
    "leak",
    [
        ("api", "STREAMFLOW_API_TOKEN", "s3cr3t-t0ken"),
        ("api", "STREAMFLOW_API_TOKEN", "${API_TOKEN:-fallback}"),
        ("mlflow", "MLFLOW_BACKEND_STORE_URI", "postgresql+psycopg2://mlflow:hunter2@postgres:5432/mlflow"),
    ],
    ids=["literal", "defaulted", "in-url"],
)
def test_the_secret_check_catches_a_leaked_secret(leak):
    doc = copy.deepcopy(raw_compose())
    service, key, value = leak
    doc["services"][service]["environment"][key] = value
    assert _secret_literals(doc)


def test_env_example_holds_no_secret_values_only_empty_placeholders():
    example = read_env_file(ENV_EXAMPLE)
    secrets_ = {k for k in example if SECRET_NAME.search(k)}
    assert len(secrets_) >= 10
    assert {k: v for k, v in example.items() if k in secrets_ and v} == {}
    looks_random = {k: v for k, v in example.items() if re.fullmatch(r"[A-Za-z0-9+/=_-]{16,}", v)}
    assert looks_random == {}


def test_init_env_generates_every_secret_and_never_overwrites(tmp_path, generated_env):
    empty = {k for k, v in read_env_file(ENV_EXAMPLE).items() if v == ""}
    assert empty and all(len(generated_env[k]) >= 32 for k in empty)
    assert len({generated_env[k] for k in empty}) == len(empty)
    assert len(base64.urlsafe_b64decode(generated_env["AIRFLOW_FERNET_KEY"])) == 32
    target = tmp_path / ".env"
    script = str(ROOT / "ops/scripts/init-env.sh")
    subprocess.run(["bash", script, str(target)], check=True, capture_output=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = target.read_text()
    subprocess.run(["bash", script, str(target)], check=True, capture_output=True)
    assert target.read_text() == first


def test_nothing_secret_enters_the_image():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git", ".streamflow"} <= ignored
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith(("ENV", "ARG")):
            assert not SECRET_NAME.search(line.split("=")[0]), line


# ---------------------------------------------------------------------------------------------
# healthchecks, dependencies, volumes, ports, images
# ---------------------------------------------------------------------------------------------
def _one_shot(svc: dict) -> bool:
    return svc.get("restart") == "no"


def test_every_long_running_service_has_a_healthcheck():
    for name, svc in services().items():
        if _one_shot(svc) or svc.get("profiles"):
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health_and_one_shot_jobs_are_awaited():
    svcs = services()
    awaited = set()
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, spec in deps.items():
            condition = spec.get("condition")
            if _one_shot(svcs[dep]):
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
                if not svc.get("profiles"):
                    awaited.add(dep)
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert svcs[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"
    # `docker compose up --wait` accepts a finished one-shot container only when a running service awaits it
    assert awaited == {name for name, svc in svcs.items() if _one_shot(svc)}


def test_volumes_are_named_and_only_configuration_is_bind_mounted():
    doc = raw_compose()
    declared = set(doc["volumes"])
    used = set()
    for name, svc in services().items():
        for mount in svc.get("volumes", []):
            source, target, *mode = mount.split(":")
            if source.startswith("."):
                assert mode == ["ro"], f"{name}: bind mount {source} must be read-only"
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: {source} is not a declared named volume"
                used.add(source)
    assert used == declared


def test_only_the_uis_and_the_api_gateway_publish_ports_and_the_ports_are_configurable(generated_env):
    published = {name for name, svc in services().items() if svc.get("ports")}
    assert published == UIS_AND_API
    assert "ports" not in services()["api"]  # replicas share no host port
    for name in published:
        (mapping,) = services()[name]["ports"]
        m = re.fullmatch(r"\$\{PUBLISH_ADDRESS:-127\.0\.0\.1\}:\$\{([A-Z_]+_HOST_PORT):-(\d+)\}:(\d+)", mapping)
        assert m, f"{name}: {mapping}"
        assert int(m.group(3)) == _listening_port(name, services()[name])
        moved = interpolate(services()[name], dict(generated_env, **{m.group(1): "18000"}))
        assert moved["ports"] == [f"127.0.0.1:18000:{m.group(3)}"]


def test_official_images_are_pinned_and_every_project_service_runs_the_one_project_image():
    projects = project_services()
    assert set(projects) == {
        "mlflow",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "api",
        "job",
        "ray-head",
        "ray-worker",
    }
    assert len({json.dumps([s["image"], s["build"]], sort_keys=True) for s in projects.values()}) == 1
    for name, svc in services().items():
        if name in projects:
            continue
        repo, _, tag = svc["image"].partition(":")
        assert repo in OFFICIAL_IMAGES, f"{name}: {svc['image']} is not an official image"
        assert re.match(r"v?\d+(\.\d+)*", tag) and tag != "latest", f"{name}: {svc['image']} is not pinned"


def test_the_ray_cluster_runs_under_the_profile_ray_unpublished_with_token_authentication(rendered):
    svcs = rendered["services"]
    head, worker = svcs["ray-head"], svcs["ray-worker"]
    for svc in (head, worker):
        assert svc["profiles"] == ["ray"] and "ports" not in svc
        env = environment(svc)
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] and env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert "--disable-usage-stats" in command_argv(svc["command"])
    assert "--include-dashboard=false" in command_argv(head["command"])
    joins = option_value(command_argv(worker["command"]), "--address")
    assert joins == f"ray-head:{_listening_port('ray-head', head)}"
    for name in ("airflow-scheduler", "job"):  # where materialization runs: the cluster's address and token
        env = environment(svcs[name])
        assert env["STREAMFLOW_RAY_ADDRESS"] == joins and env["STREAMFLOW_FEAST_ENGINE"] == "local"
        assert env["RAY_AUTH_TOKEN"] == environment(head)["RAY_AUTH_TOKEN"]


def test_postgres_gets_exactly_the_passwords_its_init_script_requires():
    script = (ROOT / "ops/postgres/init-databases.sh").read_text()
    required = set(re.findall(r'"\$\{([A-Z_]+):\?', script))
    env = environment(services()["postgres"])
    assert required == {k for k in env if k.endswith("_DB_PASSWORD")}
    assert (
        "./ops/postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-streamflow.sh:ro"
        in (services()["postgres"]["volumes"])
    )


def test_mlflow_runs_behind_its_login_configured_by_the_mounted_file_and_env(rendered, generated_env, monkeypatch):
    """The basic-auth app, its config file mounted from ops/mlflow, the admin and the secret key from .env, the
    login store in the `mlflow` database, no default access for other users. (The server itself runs with
    this file in tests/integration/test_compose_services.py.)"""
    from mlflow.server.auth.config import read_auth_config

    svc = rendered["services"]["mlflow"]
    argv = command_argv(svc["command"])
    assert option_value(argv, "--app-name") == "basic-auth"
    env = environment(svc)
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services()["mlflow"]["volumes"]}
    ini = ROOT / mounts[env["MLFLOW_AUTH_CONFIG_PATH"]]
    assert ini == ROOT / "ops/mlflow/basic_auth.ini" and ini.is_file()
    assert (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == (
        generated_env["MLFLOW_ADMIN_USER"],
        generated_env["MLFLOW_ADMIN_PASSWORD"],
    )
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == generated_env["MLFLOW_SECRET_KEY"]
    # the login store: libpq's variables, pointing at the `mlflow` database as its owner role
    store = urlsplit(env["MLFLOW_BACKEND_STORE_URI"])
    assert (env["PGHOST"], int(env["PGPORT"]), env["PGUSER"], env["PGDATABASE"], env["PGPASSWORD"]) == (
        store.hostname,
        store.port,
        store.username,
        store.path.lstrip("/"),
        store.password,
    )
    # MLflow reads the file and the environment as the service sets them
    for key in [k for k in os.environ if k.startswith("MLFLOW_AUTH_")]:
        monkeypatch.delenv(key)
    for key in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.setenv(key, str(ini) if key == "MLFLOW_AUTH_CONFIG_PATH" else env[key])
    config = read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.database_uri == "postgresql+psycopg2://"  # everything else from PG* variables
    assert (config.admin_username, config.admin_password) == (
        generated_env["MLFLOW_ADMIN_USER"],
        generated_env["MLFLOW_ADMIN_PASSWORD"],
    )
    assert not re.search(r"(?m)^\s*admin_password\s*=", ini.read_text())  # no password in the file


def test_every_mlflow_client_in_the_stack_sends_the_login_from_env(rendered, generated_env):
    login = (generated_env["MLFLOW_ADMIN_USER"], generated_env["MLFLOW_ADMIN_PASSWORD"])
    clients = {
        name
        for name, svc in rendered["services"].items()
        if environment(svc).get("STREAMFLOW_MLFLOW_TRACKING_URI", "").startswith("http://mlflow:")
    }
    assert {"api", "airflow-scheduler", "airflow-dag-processor", "job"} <= clients
    for name in clients:
        env = environment(rendered["services"][name])
        assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == login, name


def test_the_mlflow_ui_is_published_only_under_the_profile_ui():
    assert "ports" not in services()["mlflow"]
    ui = services()["mlflow-ui"]
    assert ui["profiles"] == ["ui"]
    assert ui["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    conf = (ROOT / "ops/nginx/mlflow-ui.conf").read_text()
    assert f"proxy_pass http://mlflow:{_listening_port('mlflow', services()['mlflow'])};" in conf
    assert "proxy_set_header Host $http_host;" in conf  # MLflow checks the browser's host against its allowed list
    assert re.search(rf"listen {_listening_port('mlflow-ui', ui)};", conf)
    assert "./ops/nginx/mlflow-ui.conf:/etc/nginx/conf.d/default.conf:ro" in ui["volumes"]


def test_gateway_forwards_to_every_api_replica_and_keeps_metrics_internal():
    conf = (ROOT / "ops/nginx/api.conf").read_text()
    api_port = _listening_port("api", services()["api"])
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", conf, re.M)  # Docker's DNS, re-resolved
    assert f"set $api_upstream http://api:{api_port};" in conf and "proxy_pass $api_upstream;" in conf
    assert re.search(r"location = /metrics \{\s*return 404;", conf)
    assert re.search(rf"listen {_listening_port('gateway', {})};", conf)
    assert "./ops/nginx/api.conf:/etc/nginx/conf.d/default.conf:ro" in services()["gateway"]["volumes"]


# ---------------------------------------------------------------------------------------------
# the image and the install: one source of truth with `make test`
# ---------------------------------------------------------------------------------------------
def _dockerfile_stages() -> list[dict]:
    stages = []
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            stages.append({"from": rest, "run": [], "lines": []})
        elif stages and word:
            stages[-1]["lines"].append((word, rest.strip()))
            if word == "RUN":
                stages[-1]["run"].append(re.sub(r"--mount=\S+\s*", "", rest).strip())
    return stages


def _make_recipe_prerequisites(target: str) -> list[str]:
    m = re.search(rf"^{target}:([^\n]*)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"no make target {target}"
    return m.group(1).split()


def test_the_dockerfile_installs_with_the_command_make_test_runs():
    build, runtime = _dockerfile_stages()
    installs = [cmd for cmd in build["run"] if "venv" in cmd or "uv " in cmd or "pip " in cmd]
    install = [cmd for cmd in installs if not cmd.endswith(".venv/bin/streamflow dbt parse")]  # runs, installs nothing
    assert install == ["make venv"]
    assert "venv" in _make_recipe_prerequisites("test")
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)
    ci = yaml.safe_load(CI_WORKFLOW.read_text())
    assert "bash .ci/run" in [step.get("run") for step in ci["jobs"]["test"]["steps"]]
    # `make venv` installs from the lock file, nothing else
    dry = subprocess.run(["make", "-n", "-B", "venv"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert re.search(r"uv sync --frozen", dry)


def test_the_image_is_multi_stage_runs_as_an_unprivileged_user_with_the_venv_on_path():
    build, runtime = _dockerfile_stages()
    assert build["from"].endswith(" AS build") and runtime["from"].endswith(" AS runtime")
    words = dict(runtime["lines"])
    assert any(w == "COPY" and r.startswith("--from=build /app/.venv /app/.venv") for w, r in runtime["lines"])
    assert "PATH=/app/.venv/bin:$PATH" in words["ENV"]
    assert words["WORKDIR"] == "/app"
    assert words["USER"] not in ("root", "0")
    assert [w for w, _ in runtime["lines"]][-3:] == ["USER", "ENTRYPOINT", "CMD"]


def test_entrypoint_writes_the_airflow_login_from_the_environment_then_runs_the_command(tmp_path):
    entrypoint = str(ROOT / "ops/docker/entrypoint.sh")
    passwords = tmp_path / "auth" / "passwords.json"
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AIRFLOW_ADMIN_USER": "ops",
        "AIRFLOW_ADMIN_PASSWORD": "pw-from-env",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    proc = subprocess.run([entrypoint, "sh", "-c", "echo ran $0", "x"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ran x"
    assert json.loads(passwords.read_text()) == {"ops": "pw-from-env"}
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    # containers without the password (every one but the Airflow API server) write nothing
    other = tmp_path / "other.json"
    env.pop("AIRFLOW_ADMIN_PASSWORD")
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(other)
    proc = subprocess.run([entrypoint, "false"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and not other.exists()


def test_only_the_airflow_api_server_receives_the_airflow_login(rendered):
    holders = {name for name, svc in rendered["services"].items() if "AIRFLOW_ADMIN_PASSWORD" in environment(svc)}
    assert holders == {"airflow-apiserver"}


# ---------------------------------------------------------------------------------------------
# the CI workflow
# ---------------------------------------------------------------------------------------------
def test_ci_workflow_runs_make_test_and_a_month_on_the_compose_stack():
    ci = yaml.safe_load(CI_WORKFLOW.read_text())
    steps = "\n".join(step.get("run", "") for step in ci["jobs"]["compose"]["steps"])
    order = [
        "ops/scripts/init-env.sh",
        "docker compose up -d --wait",
        "job streamflow generate",
        "docker compose run --rm job streamflow run --drop",
        "/predict",
        "docker compose down -v",
    ]
    positions = [steps.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions, strict=True))
    assert ci["jobs"]["compose"]["needs"] == "test"
