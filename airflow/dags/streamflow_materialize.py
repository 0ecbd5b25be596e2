"""streamflow_materialize: keep the online store current between monthly runs.

Every 30 minutes, materialize the newest built month incrementally (a no-op when it is already
online) and record the outcome for the API's pipeline metrics.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task
from airflow.task.trigger_rule import TriggerRule

from streamflow import pipeline
from streamflow.dag_support import DATA_TASK_ARGS, SERVICE_TASK_ARGS, run_step
from streamflow.orchestration import MATERIALIZE_DAG

with DAG(
    dag_id=MATERIALIZE_DAG,
    description="Incremental materialization of the newest built month to the online store.",
    schedule="*/30 * * * *",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={**SERVICE_TASK_ARGS, "execution_timeout": pendulum.duration(minutes=20)},
    tags=["streamflow"],
    doc_md=__doc__,
) as dag:

    @task
    def materialize() -> dict:
        return run_step(pipeline.materialize_newest)

    @task(trigger_rule=TriggerRule.ALL_SUCCESS, **DATA_TASK_ARGS)
    def report_success(run_id=None) -> None:
        pipeline.record_run(MATERIALIZE_DAG, run_id, "success")

    @task(trigger_rule=TriggerRule.ONE_FAILED, **DATA_TASK_ARGS)
    def report_failure(run_id=None) -> None:
        pipeline.record_run(MATERIALIZE_DAG, run_id, "failed")

    done = materialize()
    done >> [report_success(), report_failure()]
