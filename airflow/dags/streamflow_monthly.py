"""streamflow_monthly: one monthly drop, from raw files to a served champion.

ingest -> dbt (quality gate first, then snapshots, marts and their tests, one task per node)
-> feast apply -> materialize -> train -> promote -> batch score -> drift against the previous month.
A failed gate fails its task and everything downstream is upstream_failed: snapshots, marts, the
online store and the champion stay as they were. conf: {"drop": "/path/month_003"}; a month of the
aggregated layout: {"drop": "/path/legacy/month_000", "as_of": "2024-01-31", "layout": "aggregated"}; in
retrain mode, {"as_of": "2024-04-30", "mode": "retrain"} (train, promote and score only).
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task
from airflow.task.trigger_rule import TriggerRule

from streamflow import pipeline
from streamflow.dag_support import (
    DATA_TASK_ARGS,
    SERVICE_TASK_ARGS,
    dbt_vars_template,
    quality_gate,
    run_step,
    warehouse_build,
)
from streamflow.orchestration import MONTHLY_DAG

MONTH = "{{ ti.xcom_pull(task_ids='resolve_month')['as_of'] }}"

with DAG(
    dag_id=MONTHLY_DAG,
    description="Ingest a monthly drop, build the warehouse, refresh features, retrain and serve.",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=SERVICE_TASK_ARGS,
    params={
        "drop": Param(
            None,
            type=["null", "string"],
            description="Drop folder holding manifest.json (with layout aggregated: the month's folder).",
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            description="Month end (YYYY-MM-DD): for retrain mode, or the month of an aggregated folder.",
        ),
        "layout": Param(
            "events",
            enum=["events", "aggregated"],
            description="events: a drop with a manifest; aggregated: a month of pre-aggregated files (needs as_of).",
        ),
        "mode": Param(
            "monthly",
            enum=["monthly", "retrain"],
            description="monthly: the whole cycle; retrain: train, promote and score the given month only.",
        ),
    },
    tags=["streamflow"],
    doc_md=__doc__,
) as dag:

    @task(**DATA_TASK_ARGS)
    def resolve_month(params=None) -> dict:
        return run_step(pipeline.resolve_month, params.get("drop"), params.get("as_of"), params.get("layout"))

    @task.branch
    def choose_path(params=None) -> str:
        return "retrain_only" if params.get("mode") == "retrain" else "ingest"

    retrain_only = EmptyOperator(task_id="retrain_only")

    @task(**DATA_TASK_ARGS)
    def ingest(month: dict) -> dict:
        return run_step(pipeline.ingest_drop, month["drop"], layout=month.get("layout"), as_of=month["as_of"])

    @task
    def prepare_warehouse(month: dict) -> dict:
        return run_step(pipeline.prepare_warehouse, month["as_of"])

    gate = quality_gate("quality_gate", dbt_vars_template(MONTH))
    warehouse = warehouse_build("dbt", dbt_vars_template(MONTH))

    @task
    def record_warehouse_month(month: dict) -> dict:
        return run_step(pipeline.record_warehouse_month, month["as_of"])

    @task
    def feast_apply() -> dict:
        return run_step(pipeline.apply_features)

    @task
    def materialize(month: dict) -> dict:
        return run_step(pipeline.materialize, month["as_of"])

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def train(month: dict) -> dict:
        return run_step(pipeline.train, month["as_of"])

    @task
    def promote(month: dict, trained: dict) -> dict:
        return run_step(pipeline.promote, trained, month["as_of"])

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def batch_score(month: dict) -> dict:
        return run_step(pipeline.score, month["as_of"])

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def drift(month: dict, params=None) -> dict:
        return run_step(pipeline.monthly_drift, month["as_of"], params.get("mode"))

    @task(trigger_rule=TriggerRule.NONE_FAILED, **DATA_TASK_ARGS)
    def report_success(month: dict, run_id=None) -> None:
        pipeline.record_run(MONTHLY_DAG, run_id, "success", month["as_of"])

    @task(trigger_rule=TriggerRule.ONE_FAILED, **DATA_TASK_ARGS)
    def report_failure(run_id=None, params=None) -> None:
        pipeline.record_run(MONTHLY_DAG, run_id, "failed", params.get("as_of"), {"drop": params.get("drop")})

    month = resolve_month()
    path = choose_path()
    month >> path
    loaded = ingest(month)
    path >> [loaded, retrain_only]
    prepared = prepare_warehouse(month)
    recorded = record_warehouse_month(month)
    loaded >> prepared >> gate >> warehouse >> recorded
    applied = feast_apply()
    online = materialize(month)
    recorded >> applied >> online
    trained = train(month)
    [online, retrain_only] >> trained
    promoted = promote(month, trained)
    scored = batch_score(month)
    drifted = drift(month)
    trained >> promoted >> scored >> drifted
    done = report_success(month)
    drifted >> done
    failed = report_failure()
    [loaded, prepared, gate, warehouse, recorded, applied, online, trained, promoted, scored, drifted] >> failed
