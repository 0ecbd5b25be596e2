"""Prometheus configuration, alert rules and Grafana dashboards: valid for the real tools
(promtool), each alert shown to fire and to stay silent, and every metric name one the API exports."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.app import create_app
from serving.metrics import METRIC_NAMES
from serving.model import ModelHolder
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from tests.compose_model import ROOT, command_argv, option_value, services
from tests.serving_support import LocalModels, MemoryFeatures, serve_in_thread, serving_model, user_values

PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
GRAFANA_DIR = ROOT / "ops" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
WAREHOUSE_TYPE = "grafana-postgresql-datasource"
RULE_TESTS = sorted(PROMETHEUS_DIR.glob("alerts*_test.yml"))
# Series Prometheus records itself for every scrape target, not exported by any application.
PROMETHEUS_SYNTHETIC = {"up"}
PIPELINES = ("streamflow_monthly", "streamflow_materialize")
ALERTS = {
    "StreamflowApiLatencyHigh",
    "StreamflowApi5xxRateHigh",
    "StreamflowApiNotReady",
    "StreamflowApiDown",
    "StreamflowChampionLoadFailed",
    "StreamflowOnlineFeaturesStale",
    "StreamflowMonthlyRunFailed",
    "StreamflowMaterializationFailed",
    "StreamflowDriftDetected",
    "StreamflowChampionTooOld",
}
# Grafana's query variables, replaced by a duration before a query is checked as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "15s"}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: `make sysdeps` installs it (Debian package prometheus)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every Prometheus query in every dashboard."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == "prometheus":
                    out.append((dash["title"], panel["title"], target["expr"]))
    return out


def dashboard_sql() -> list[tuple[str, str]]:
    """(panel title, SQL) of every query on the warehouse data source (the marts, through the analyst role)."""
    return [
        (panel["title"], target["rawSql"])
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == WAREHOUSE_TYPE
    ]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and strings excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    names = set()
    for m in re.finditer(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


@functools.cache
def live_scrape() -> str:
    """What the real app serves at GET /metrics over HTTP, after requests that touch every metric: a prediction,
    a model swap, an online store failure, and the pipeline and drift state read at scrape time. (Local
    collaborators: online rows in memory and models fitted here; the metric names do not depend on the stores.)"""
    features = MemoryFeatures()
    features.add("1111-AAAAA", user_values(0))
    registry = LocalModels({"1": serving_model("1"), "2": serving_model("2", "logistic_regression")}, alias="1")
    ops = OpsState(
        {
            "streamflow_monthly": ("success", datetime(2024, 4, 1, tzinfo=UTC)),
            "streamflow_materialize": ("failed", datetime(2024, 4, 2, tzinfo=UTC)),
        },
        0.25,
        False,
    )
    app = create_app(
        Settings(_env_file=None, api_token="t"), features, ModelHolder(registry, 3600), ops_state=lambda: ops
    )
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        assert api.post("/predict", json={"user_id": "1111-AAAAA"}).status_code == 200
        registry.version = "2"
        assert api.post("/admin/model/reload", headers={"Authorization": "Bearer t"}).json()["changed"] is True
        features.down = True
        assert api.post("/predict", json={"user_id": "1111-AAAAA"}).status_code == 503
        features.down = False
        scrape = api.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    return scrape.text


def exported_series_names() -> set[str]:
    """Sample names of the live scrape (what Prometheus stores)."""
    families = list(text_string_to_metric_families(live_scrape()))
    assert set(METRIC_NAMES) <= {f.name for f in families}  # every contract metric is served
    return {sample.name for family in families for sample in family.samples}


# ---------------------------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------------------------
def test_prometheus_config_passes_promtool_check_config():
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_pass_promtool_check_rules():
    proc = promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_every_alert_fires_and_stays_silent_in_the_promtool_rule_tests():
    proc = promtool("test", "rules", *[p.name for p in RULE_TESTS])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fired, silent = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert fired == names and silent == names


def test_a_broken_alert_rule_fails_its_promtool_test(tmp_path):
    for path in [PROMETHEUS_DIR / "alerts.yml", *RULE_TESTS]:
        shutil.copy(path, tmp_path / path.name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("> 35 * 86400", "> 45 * 86400"))
    proc = promtool("test", "rules", *[p.name for p in RULE_TESTS], cwd=tmp_path)
    assert proc.returncode != 0 and "StreamflowOnlineFeaturesStale" in proc.stdout + proc.stderr


def test_the_alerts_cover_latency_errors_readiness_staleness_pipelines_drift_and_model_age():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == ALERTS
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    for pipeline in PIPELINES:
        assert any(pipeline in rule["expr"] for rule in rules.values()), pipeline


def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = []
    for i, (_, _, expr) in enumerate(dashboard_queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# metric names: one contract between the API, the rules and the dashboards
# ---------------------------------------------------------------------------------------------
def test_metric_name_extraction_ignores_functions_keywords_labels_and_durations():
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!="/metrics", x=~"b|c"}[5m])))'
        ' / on () group_left max without (instance) (b_total offset 1h) > 2 and c or absent(up{job="x"})'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "up"}


def test_the_api_exports_every_contract_metric_with_prometheus_suffixes():
    names = exported_series_names()
    assert {
        "streamflow_http_requests_total",
        "streamflow_http_request_duration_seconds_bucket",
        "streamflow_prediction_probability_count",
        "streamflow_model_reloads_total",
        "streamflow_online_feature_age_seconds",
        "streamflow_ready",
    } <= names


def test_the_live_scrape_labels_requests_by_route_template_and_numeric_status_and_counts_store_errors():
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(live_scrape())
        for s in f.samples
    }

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("streamflow_http_requests_total", route="/predict", method="POST", status="200") == 1
    assert value("streamflow_http_requests_total", route="/predict", method="POST", status="503") == 1
    assert value("streamflow_store_errors_total", store="online") == 1
    assert value("streamflow_model_reloads_total") == 1 and value("streamflow_model_version") == 2
    assert value("streamflow_model_info", version="2", alias="champion", trained_as_of="2024-03-31") == 1
    assert value("streamflow_model_info", version="1", alias="champion", trained_as_of="2024-03-31") is None
    assert value("streamflow_pipeline_last_status", pipeline="streamflow_materialize") == 0
    assert value("streamflow_drift_share") == 0.25
    assert value("streamflow_online_feature_age_seconds", feature_view="profile") == 0


@pytest.mark.parametrize("source", ["alert rules", "dashboards"])
def test_every_metric_in_rules_and_dashboards_is_one_the_api_exports(source):
    exprs = (
        [rule["expr"] for rule in alert_rules()]
        if source == "alert rules"
        else [expr for _, _, expr in dashboard_queries()]
    )
    used = set().union(*(metric_names(e) for e in exprs))
    assert len(used) >= 5
    assert used - exported_series_names() - PROMETHEUS_SYNTHETIC == set()


def test_every_contract_metric_appears_in_a_dashboard():
    used = set().union(*(metric_names(expr) for _, _, expr in dashboard_queries()))
    base = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert set(METRIC_NAMES) <= base


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana wiring in the compose stack
# ---------------------------------------------------------------------------------------------
def test_prometheus_scrapes_every_api_replica_on_the_port_the_api_listens_on():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamflow-api"]
    (sd,) = job["dns_sd_configs"]
    api_port = int(option_value(command_argv(services()["api"]["command"]), "--port"))
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == api_port
    assert job["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]
    # the alerts name the job this config scrapes
    assert all('job="streamflow-api"' in r["expr"] for r in alert_rules() if "up{" in r["expr"])
    prom = services()["prometheus"]
    assert "./ops/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard_folder():
    (datasource,) = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (warehouse,) = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/warehouse.yml").read_text())["datasources"]
    sources = {"prometheus": datasource["uid"], WAREHOUSE_TYPE: warehouse["uid"]}
    (provider,) = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/streamflow.yml").read_text())["providers"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services()["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./ops/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
            assert len({json.dumps(ref, sort_keys=True) for ref in refs}) == 1, panel["title"]
            assert sources.get(refs[0]["type"]) == refs[0]["uid"], panel["title"]


def test_the_warehouse_datasource_reads_the_marts_as_analyst_with_the_password_from_the_environment():
    """Read-only role, password never in the repository: Grafana expands ${ANALYST_DB_PASSWORD} from the
    container's environment, which compose fills from .env (and refuses to start without)."""
    text = (GRAFANA_DIR / "provisioning/datasources/warehouse.yml").read_text()
    (source,) = yaml.safe_load(text)["datasources"]
    assert source["type"] == WAREHOUSE_TYPE and source["url"] == "postgres:5432" and source["editable"] is False
    assert source["user"] == "analyst" and source["jsonData"]["database"] == "warehouse"
    assert source["secureJsonData"] == {"password": "${ANALYST_DB_PASSWORD}"} and "password" not in source
    grafana = services()["grafana"]
    assert grafana["environment"]["ANALYST_DB_PASSWORD"] == "${ANALYST_DB_PASSWORD:?set ANALYST_DB_PASSWORD in .env}"
    assert grafana["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_dashboard_sql_reads_only_the_performance_marts_and_their_contract_columns():
    """Every SQL panel selects from marts.model_performance or marts.model_calibration, and every column it names
    is in that mart's contract (the queries themselves run against a real warehouse as analyst in
    tests/integration/test_model_performance.py)."""
    marts = {}
    for name in ("model_performance", "model_calibration"):
        (model,) = yaml.safe_load((ROOT / f"dbt_project/models/marts/{name}.yml").read_text())["models"]
        marts[f"marts.{name}"] = {c["name"] for c in model["columns"]}
    queries = dashboard_sql()
    assert {"realized roc-auc", "calibration"} <= {
        w for title, _ in queries for w in re.findall(r"realized roc-auc|calibration", title.lower())
    }
    for title, sql in queries:
        tables = set(re.findall(r"\bfrom\s+([\w.]+)", sql))
        assert tables and tables <= set(marts), title
        allowed = set().union(*(marts[t] for t in tables))
        words = set(re.findall(r"\b[a-z_]+\b", re.sub(r"'[^']*'", "", sql)))
        aliases = set(re.findall(r"\bas\s+(\w+)", sql))
        sql_words = {
            "select",
            "from",
            "where",
            "and",
            "as",
            "at",
            "time",
            "zone",
            "max",
            "filter",
            "group",
            "by",
            "order",
            "desc",
            "date",
            "to_char",
            "text",
            "marts",
            "model_performance",
            "model_calibration",
        }
        assert words - allowed - aliases - sql_words == set(), (title, words - allowed - aliases - sql_words)


def test_dashboards_are_well_formed_grafana_json():
    uids = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        uids.append(dash["uid"])
        assert dash["title"] and dash["schemaVersion"] >= 36
        ids = [panel["id"] for panel in dash["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in dash["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
            queries = [t.get("expr") or t.get("rawSql") for t in panel["targets"]]
            assert panel["targets"] and all(queries) and all(t["refId"] for t in panel["targets"]), panel["title"]
    assert len(uids) == len(set(uids)) >= 2


def test_dashboards_show_traffic_latency_errors_predictions_feature_age_and_model_version():
    titles = " | ".join(title.lower() for _, title, _ in dashboard_queries())
    for topic in (
        "api traffic",
        "latency percentiles",
        "errors",
        "prediction distribution",
        "online feature age",
        "model version over time",
    ):
        assert topic in titles, topic
