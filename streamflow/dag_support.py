"""Glue between the pipeline steps and Airflow: how a step's outcome becomes a task state.

Imported by the DAG files at parse time, so it imports nothing heavy (no dbt, Feast or MLflow).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from streamflow.core.settings import get_settings

# Tasks that talk to services retry with backoff; every task has a timeout.
SERVICE_TASK_ARGS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=15),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(minutes=30),
}
# Data checks (the quality gate, dbt tests) give the same answer on a retry: fail at once.
DATA_TASK_ARGS: dict[str, Any] = {"retries": 0, "execution_timeout": timedelta(minutes=30)}

log = logging.getLogger(__name__)


def run_step(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a pipeline step: nothing to do -> skipped task, refused input -> failed task (no retry). Its wall
    time and its process's peak memory go to the run log (``ops.step_runs``, under the task's id)."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from streamflow.core.resources import measure
    from streamflow.pipeline import NothingToDo, StepRefused

    status = "failed"
    try:
        with measure() as usage:
            try:
                result = step(*args, **kwargs)
            except NothingToDo as exc:
                status = "skipped"
                raise AirflowSkipException(str(exc)) from None
            except StepRefused as exc:
                raise AirflowFailException(str(exc)) from None
            status = "success"
            return result
    finally:
        _record_usage(status, usage)


def _record_usage(status: str, usage) -> None:
    """Write the step just measured to the run log; a run log that cannot be written only logs a warning."""
    try:
        from airflow.sdk import get_current_context

        from streamflow.core.runlog import record_step

        context = get_current_context()
        ti = context["ti"]
        record_step(get_settings(), ti.dag_id, context["run_id"], ti.task_id, status, usage)
    except Exception as exc:  # noqa: BLE001 - the step's own outcome matters, not its bookkeeping
        log.warning("could not record the step's duration and memory: %s", exc)


def _dbt_project_profile():
    from cosmos import ProfileConfig, ProjectConfig

    settings = get_settings()
    project = ProjectConfig(
        dbt_project_path=settings.dbt_project_dir,
        manifest_path=settings.dbt_target_dir / "manifest.json",
        project_name="streamflow",
        install_dbt_deps=False,
        partial_parse=True,
    )
    profile = ProfileConfig(
        profile_name="streamflow",
        target_name="default",
        profiles_yml_filepath=settings.dbt_project_dir / "profiles.yml",
    )
    return project, profile


def gate_warnings(context: dict[str, Any]) -> list[str]:
    """cosmos' `on_warning_callback` for the gate tasks: log each source test of severity warn that
    found rows. dbt reports such a test with status `warn` and the run as a success, so the task
    passes and the month goes on; the warning stays visible in the task log."""
    lines = [
        f"quality gate warning: {name}: {message}"
        for name, message in zip(context.get("test_names") or [], context.get("test_results") or [], strict=False)
    ]
    for line in lines:
        log.warning(line)
    return lines


def quality_gate(group_id: str, dbt_vars: dict[str, Any]):
    """The quality gate: one cosmos `dbt test` task per raw table of the event drops (its source tests), so
    ops see which table failed, and one for the four tables of the aggregated layout (`raw_aggregated`; the
    failing test's name in its log names the table). Retrying cannot change a data check, so these tasks do
    not retry. A test of severity warn does not fail its task (dbt: status `warn`, success); it is logged
    by :func:`gate_warnings`."""
    from airflow.sdk import TaskGroup
    from cosmos.constants import InvocationMode
    from cosmos.operators.local import DbtTestLocalOperator

    from streamflow.drops.aggregated import RAW_TABLES
    from streamflow.drops.contract import FILES

    settings = get_settings()
    _, profile = _dbt_project_profile()
    with TaskGroup(group_id=group_id, tooltip="dbt source tests on raw.* for the drop month") as group:
        # one task per table of the event drops; one for the aggregated layout's four (empty in event months)
        selections = {f"raw_{t}": [f"source:raw.{t}"] for t in [*FILES, "load_log"]}
        selections["raw_aggregated"] = [f"source:raw.{t}" for t in RAW_TABLES]
        for task_id, select in selections.items():
            DbtTestLocalOperator(
                task_id=task_id,
                project_dir=str(settings.dbt_project_dir),
                profile_config=profile,
                select=select,
                vars=dbt_vars,
                install_deps=False,
                invocation_mode=InvocationMode.DBT_RUNNER,
                on_warning_callback=gate_warnings,
                **DATA_TASK_ARGS,
            )
    return group


def warehouse_build(group_id: str, dbt_vars: dict[str, Any]):
    """Staging, snapshots and marts, one cosmos task per dbt node, each built with its tests, from the
    pre-built manifest (no dbt at parse time), dbt run in-process by each task."""
    from cosmos import DbtTaskGroup, ExecutionConfig, RenderConfig
    from cosmos.constants import (
        ExecutionMode,
        InvocationMode,
        LoadMode,
        SourceRenderingBehavior,
        TestBehavior,
        TestIndirectSelection,
    )

    project, profile = _dbt_project_profile()
    return DbtTaskGroup(
        group_id=group_id,
        project_config=project,
        profile_config=profile,
        # a test with several parents (e.g. a mart checked against staging) runs as its own task once
        # all its parents are built, never with the first of them
        execution_config=ExecutionConfig(
            execution_mode=ExecutionMode.LOCAL,
            invocation_mode=InvocationMode.DBT_RUNNER,
            test_indirect_selection=TestIndirectSelection.CAUTIOUS,
        ),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            # the source tests are the quality gate, which ran before this group
            exclude=["resource_type:unit_test", "path:models/staging/__sources.yml"],
            test_behavior=TestBehavior.BUILD,
            source_rendering_behavior=SourceRenderingBehavior.NONE,
            should_detach_multiple_parents_tests=True,
        ),
        operator_args={"vars": dbt_vars, **DATA_TASK_ARGS},
    )


def dbt_vars_template(month_template: str) -> dict[str, Any]:
    """dbt vars for one month, the month given as a Jinja template rendered at run time."""
    from streamflow.warehouse.runner import dbt_vars

    return {**dbt_vars(get_settings()), "as_of": month_template}
