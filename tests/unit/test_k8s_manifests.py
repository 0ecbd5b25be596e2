"""The Kubernetes manifests (ops/k8s) and the Airflow chart values (ops/helm), checked offline.

Every resource file each kustomization lists, and every overlay as `kubectl kustomize` renders it, is
validated against the Kubernetes JSON schemas that ship in the `kubernetes-validate` wheel (strict: an
unknown field fails). Every file in a kustomization's folder must be listed, every patch must target a
resource that exists, and the commands, ports, variables and secrets must be the ones the code has.
A broken copy of the tree must fail the same check.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from streamflow.cli.main import app as cli_app
from streamflow.core.settings import Settings
from tests.compose_model import ROOT, environment, services

K8S = ROOT / "ops" / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
HELM_VALUES = ROOT / "ops" / "helm" / "airflow-values.yaml"
# the oldest and the newest Kubernetes release the manifests are checked against
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
PROJECT_IMAGE = "streamflow"
APP_UID = int(re.search(r"ARG APP_UID=(\d+)", (ROOT / "Dockerfile").read_text()).group(1))
SECRETS = {"streamflow-api", "streamflow-pipeline", "streamflow-redis"}
# variables the manifests set that are not StreamFlow settings: read by the MLflow client, OpenMP, Redis
OTHER_VARIABLES = {
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION",
    "OMP_NUM_THREADS",
    "REDIS_PASSWORD",
    "REDISCLI_AUTH",
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|_AUTH|_URL)$")


# ---------------------------------------------------------------------------------------
# the check, as a function of a tree, so a broken copy can be run through it too
# ---------------------------------------------------------------------------------------
def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def resources_of(folder: Path) -> list[dict[str, Any]]:
    """Every resource a kustomization pulls in, its bases' too (before patches)."""
    found = []
    for entry in kustomization(folder).get("resources", []):
        path = (folder / entry).resolve()
        found += resources_of(path) if path.is_dir() else load_docs(path)
    return found


def kustomization_problems(folder: Path) -> list[str]:
    """Files not listed, listed files missing, patches whose target does not exist."""
    spec = kustomization(folder)
    problems = []
    listed = {entry for entry in spec.get("resources", []) if not (folder / entry).is_dir()}
    patches = {patch["path"] for patch in spec.get("patches", [])}
    present = {p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"}
    for name in sorted(present - listed - patches):
        problems.append(f"{folder.name}/{name}: not listed in kustomization.yaml")
    for name in sorted((listed | patches) - present):
        problems.append(f"{folder.name}/{name}: listed but missing")
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in resources_of(folder)}
    for patch in spec.get("patches", []):
        target = patch.get("target", {})
        if (target.get("kind"), target.get("name")) not in kinds:
            problems.append(f"{folder.name}: patch {patch['path']} targets {target}, which is not a resource")
        if patch["path"] in present:
            for doc in load_docs(folder / patch["path"]):
                if (doc.get("kind"), doc.get("metadata", {}).get("name")) != (target.get("kind"), target.get("name")):
                    problems.append(f"{folder.name}: patch {patch['path']} is not the {target} it says it patches")
    return problems


def schema_problems(doc: dict[str, Any], where: str) -> list[str]:
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{where}: {doc.get('kind')} {path}: {exc.message} (Kubernetes {version})")
    return problems


def render(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: it renders the kustomizations (`kubectl kustomize`); install it")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def tree_problems(root: Path) -> list[str]:
    """Everything wrong with a ops/k8s tree: listing, patches, schemas of the files and of the render."""
    folders = [root / "base", *sorted(p.parent for p in (root / "overlays").glob("*/kustomization.yaml"))]
    problems = []
    for folder in folders:
        problems += kustomization_problems(folder)
        for entry in kustomization(folder).get("resources", []):
            if (folder / entry).is_file():
                for doc in load_docs(folder / entry):
                    problems += schema_problems(doc, f"{folder.name}/{entry}")
    if problems:
        return problems
    for folder in folders:
        for doc in render(folder):
            problems += schema_problems(doc, f"rendered {folder.name}")
    return problems


# ---------------------------------------------------------------------------------------
# the manifests validate, and a broken one fails
# ---------------------------------------------------------------------------------------
def test_the_manifests_validate_against_the_kubernetes_schemas():
    assert OVERLAYS, "no overlay under ops/k8s/overlays"
    assert tree_problems(K8S) == []


def test_a_misspelled_field_fails_the_check(tmp_path):
    tree = shutil.copytree(K8S, tmp_path / "k8s")
    deployment = tree / "base" / "api-deployment.yaml"
    deployment.write_text(deployment.read_text().replace("  replicas: 2\n", "  replica: 2\n", 1))
    problems = tree_problems(tree)
    assert any("base/api-deployment.yaml" in p and "'replica' was unexpected" in p for p in problems), problems


def test_a_wrong_type_fails_the_check(tmp_path):
    tree = shutil.copytree(K8S, tmp_path / "k8s")
    hpa = tree / "base" / "api-hpa.yaml"
    hpa.write_text(hpa.read_text().replace("maxReplicas: 10", "maxReplicas: ten"))
    problems = tree_problems(tree)
    assert any("base/api-hpa.yaml" in p and "maxReplicas" in p for p in problems), problems


def test_an_unlisted_file_and_a_dangling_patch_fail_the_check(tmp_path):
    tree = shutil.copytree(K8S, tmp_path / "k8s")
    (tree / "base" / "forgotten.yaml").write_text((tree / "base" / "api-service.yaml").read_text())
    overlay = tree / "overlays" / "production" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("name: streamflow-materialize}", "name: streamflow-materialise}"))
    problems = tree_problems(tree)
    assert "base/forgotten.yaml: not listed in kustomization.yaml" in problems
    assert any("materialize-resources.yaml targets" in p and "streamflow-materialise" in p for p in problems)


def test_a_broken_kustomization_fails_to_render(tmp_path):
    tree = shutil.copytree(K8S, tmp_path / "k8s")
    (tree / "overlays" / "production" / "namespace.yaml").write_text("kind: Namespace\nmetadata: [not, a, map]\n")
    with pytest.raises(AssertionError, match="kubectl kustomize .* failed"):
        render(tree / "overlays" / "production")


# ---------------------------------------------------------------------------------------
# the manifests match the code
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {folder.name: render(folder) for folder in [K8S / "base", *OVERLAYS]}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            specs[doc["metadata"]["name"]] = spec["jobTemplate"]["spec"]["template"]["spec"]
        elif "template" in spec:
            specs[doc["metadata"]["name"]] = spec["template"]["spec"]
    return specs


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def container_env(container: dict[str, Any], config: dict[str, str]) -> dict[str, Any]:
    """Name -> literal value or {'secret': name} of one container, ConfigMap variables included."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(config)
        assert source["configMapRef"]["name"] == "streamflow-config"
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = {"secret": ref["name"], "key": ref["key"]} if ref else var["value"]
    return env


def parse_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The sub-command and its parameters, parsed by the real `streamflow`: an unknown command or option raises."""
    assert argv[0] == "streamflow", argv
    command = typer.main.get_command(cli_app)
    words, rest = [], argv[1:]
    while hasattr(command, "commands"):  # a group
        assert rest[0] in command.commands, f"no command `{' '.join([*words, rest[0]])}`"
        words.append(rest[0])
        command, rest = command.commands[rest[0]], rest[1:]
    return " ".join(words), command.make_context(argv[0], list(rest)).params


def test_every_variable_is_a_setting_and_every_secret_comes_from_a_secret(rendered):
    fields = {f"STREAMFLOW_{name.upper()}" for name in Settings.model_fields}
    for overlay, docs in rendered.items():
        config = by_kind(docs, "ConfigMap", "streamflow-config")["data"]
        for workload, spec in pod_specs(docs).items():
            for container in spec["containers"]:
                for name, value in container_env(container, config).items():
                    assert name in fields or name in OTHER_VARIABLES, f"{overlay} {workload}: {name} is read by nothing"
                    if SECRET_NAME.search(name) and name != "STREAMFLOW_MLFLOW_TRACKING_URI":
                        assert isinstance(value, dict), f"{overlay} {workload}: {name} must come from a Secret"
                    if isinstance(value, dict):
                        assert value["secret"] in SECRETS, value
                        assert value["key"] in (name, "REDIS_PASSWORD"), f"{name}: key {value['key']}"
        assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created by the operator, not kept here"


def test_the_api_has_the_environment_of_compose_api_service(rendered):
    compose_api = environment(services()["api"])
    embedded_only = {
        f"STREAMFLOW_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if (field.description or "").startswith("Embedded server:")
    }
    config = by_kind(rendered["production"], "ConfigMap", "streamflow-config")["data"]
    api = pod_specs(rendered["production"])["streamflow-api"]["containers"][0]
    env = container_env(api, config)
    assert set(compose_api) - embedded_only <= set(env)
    assert env["STREAMFLOW_ONLINE_STORE"] == "redis"
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert env["STREAMFLOW_DATABASE_URL"] == {"secret": "streamflow-api", "key": "STREAMFLOW_DATABASE_URL"}
    assert env["STREAMFLOW_API_TOKEN"]["secret"] == "streamflow-api"


def test_the_commands_ports_and_probes_are_the_code_s(rendered):
    docs = rendered["production"]
    api = pod_specs(docs)["streamflow-api"]["containers"][0]
    assert "command" not in api, "the image's entry point must run (ops/docker/entrypoint.sh)"
    command, serve = parse_cli(api["args"])
    assert (command, serve["host"], serve["workers"]) == ("serve", "0.0.0.0", 1)
    assert api["ports"][0]["containerPort"] == serve["port"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    routes = ast.parse((ROOT / "serving" / "routes" / "operations.py").read_text())
    paths = {
        deco.args[0].value
        for node in ast.walk(routes)
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
        for deco in node.decorator_list
        if isinstance(deco, ast.Call) and deco.args and isinstance(deco.args[0], ast.Constant)
    }
    assert {"/health", "/ready"} <= paths
    service = by_kind(docs, "Service", "streamflow-api")
    assert service["spec"]["ports"][0]["targetPort"] == api["ports"][0]["name"]

    cron = by_kind(docs, "CronJob", "streamflow-materialize")
    assert cron["spec"]["schedule"] == "*/30 * * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = pod_specs(docs)["streamflow-materialize"]["containers"][0]
    assert parse_cli(job["args"])[0] == "features materialize"
    with pytest.raises(Exception, match="No such option"):
        parse_cli(["streamflow", "features", "materialize", "--no-such-option"])

    redis_url = environment(services()["api"]).get("STREAMFLOW_REDIS_URL", "")
    redis = by_kind(docs, "Service", "streamflow-redis")
    assert redis["spec"]["ports"][0]["port"] == int(redis_url.rsplit(":", 1)[1])


def test_every_pod_runs_unprivileged_with_resources(rendered):
    for overlay, docs in rendered.items():
        for workload, spec in pod_specs(docs).items():
            where = f"{overlay} {workload}"
            assert spec["automountServiceAccountToken"] is False, where
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            for container in spec["containers"]:
                if container["image"].rsplit("/", 1)[-1].split(":")[0] == PROJECT_IMAGE:
                    assert spec["securityContext"]["runAsUser"] == APP_UID, where
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["capabilities"]["drop"] == ["ALL"], where
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][part]), f"{where}: {part}"


def test_the_autoscaler_and_the_disruption_budget_select_the_api(rendered):
    docs = rendered["production"]
    deployment = by_kind(docs, "Deployment", "streamflow-api")
    hpa = by_kind(docs, "HorizontalPodAutoscaler", "streamflow-api")
    pdb = by_kind(docs, "PodDisruptionBudget", "streamflow-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "streamflow-api"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert all(d["metadata"].get("namespace") == "streamflow" for d in docs if d["kind"] != "Namespace")


# ---------------------------------------------------------------------------------------
# the Airflow chart's values
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text())


def test_airflow_runs_the_project_image_on_the_kubernetes_executor(helm_values):
    assert "{{" not in HELM_VALUES.read_text(), "plain values: the chart templates, not this file"
    overlay_image = kustomization(K8S / "overlays" / "production")["images"][0]
    assert helm_values["executor"] == "KubernetesExecutor"
    assert helm_values["images"]["airflow"]["repository"] == overlay_image["newName"]
    assert helm_values["images"]["airflow"]["tag"] == overlay_image["newTag"]
    assert helm_values["uid"] == APP_UID
    compose_airflow = environment(services()["airflow-scheduler"])
    assert helm_values["config"]["core"]["dags_folder"] == compose_airflow["AIRFLOW__CORE__DAGS_FOLDER"]
    assert helm_values["dags"]["gitSync"]["enabled"] is False
    assert helm_values["dags"]["persistence"]["enabled"] is False
    assert helm_values["postgresql"]["enabled"] is False, "the metadata database is the operator's"


def test_airflow_takes_every_secret_from_a_secret(helm_values):
    fields = {f"STREAMFLOW_{name.upper()}" for name in Settings.model_fields}
    airflow_only = {"AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD"}
    for var in helm_values["env"]:
        assert var["name"] in fields | OTHER_VARIABLES | airflow_only or var["name"].startswith("AIRFLOW__"), var
        assert not SECRET_NAME.search(var["name"]) or var["name"] == "STREAMFLOW_MLFLOW_TRACKING_URI", var
    for var in helm_values["secret"]:
        assert var["envName"] in fields | OTHER_VARIABLES | airflow_only, var
        assert var["secretName"] in SECRETS | {"streamflow-airflow"}, var
    for key in ("fernetKey", "webserverSecretKey", "apiSecretKey", "jwtSecret"):
        assert not helm_values.get(key), f"{key}: a literal secret; name a Secret instead"
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert helm_values[key], key
    assert helm_values["data"]["metadataSecretName"]
    names = {var["envName"] for var in helm_values["secret"]}
    pipeline = pod_specs(resources_of(K8S / "base"))["streamflow-materialize"]["containers"][0]
    assert {var["name"] for var in pipeline["env"]} <= names, "the pipeline's tasks need the CronJob's secrets"
