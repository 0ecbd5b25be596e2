"""`streamflow run`'s table: every task with its outcome and seconds, and for each pipeline step the peak memory
its process reached (ops.step_runs, read by `runlog.step_usage`); tasks without a record (dbt's) show "-".
The monthly DAG end to end, with the step records read back from PostgreSQL, is tests/e2e/test_monthly_dag.py."""

from __future__ import annotations

from streamflow.cli.console import console
from streamflow.cli.orchestration import _print_dag_run
from streamflow.core.resources import Usage
from streamflow.orchestration import DagRunResult, TaskOutcome


def _cells(out: str, task: str) -> list[str]:
    row = next(line for line in out.splitlines() if f" {task} " in line)
    return [c.strip() for c in row.strip("│┃ ").split("│")]


def test_the_run_table_shows_each_steps_seconds_and_peak_memory(tmp_path):
    tasks = [
        TaskOutcome("train", "success", 12.46, 1),
        TaskOutcome("dbt.labels_model_build", "success", 3.0, 1),
        TaskOutcome("batch_score", "failed", 4.0, 2),
    ]
    result = DagRunResult("streamflow_monthly", "manual__2024-02-29", "failed", tasks, tmp_path / "run.log")
    usage = {"train": ("success", Usage(12.4, 431.6, 220.0)), "batch_score": ("failed", Usage(3.9, 812.2, 230.0))}
    with console.capture() as captured:
        _print_dag_run(result, usage)
    out = captured.get()
    assert "peak MB" in out and "streamflow_monthly: failed" in out, out
    assert _cells(out, "train") == ["train", "success", "12.5", "432"]
    assert _cells(out, "batch_score") == ["batch_score", "failed", "4.0", "812"]
    assert _cells(out, "dbt.labels_model_build") == ["dbt.labels_model_build", "success", "3.0", "-"]
