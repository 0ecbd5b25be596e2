"""streamflow_monitor: data drift between the last two months; over the threshold, retrain.

Compares the model's features at the two newest built months with Evidently (a month stopped at
the quality gate is not compared). When the share of
drifted features reaches the threshold (STREAMFLOW_DRIFT_SHARE_THRESHOLD), it triggers
streamflow_monthly in retrain mode for the newest month.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task

from streamflow import pipeline
from streamflow.dag_support import SERVICE_TASK_ARGS, run_step
from streamflow.orchestration import MONITOR_DAG, MONTHLY_DAG

with DAG(
    dag_id=MONITOR_DAG,
    description="Drift between the last two months; triggers a retrain when it is over the threshold.",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=SERVICE_TASK_ARGS,
    tags=["streamflow"],
    doc_md=__doc__,
) as dag:

    @task
    def check_drift() -> dict:
        return run_step(pipeline.drift_of_latest_months)

    @task.short_circuit
    def needs_retraining(result: dict) -> bool:
        return bool(result.get("retrain"))

    result = check_drift()
    retrain = TriggerDagRunOperator(
        task_id="trigger_retraining",
        trigger_dag_id=MONTHLY_DAG,
        conf={"as_of": "{{ ti.xcom_pull(task_ids='check_drift')['current'] }}", "mode": "retrain"},
        wait_for_completion=False,
    )
    needs_retraining(result) >> retrain
