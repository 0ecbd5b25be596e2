"""The live progress of a DAG run: `airflow dags test` output becomes a bar with a total, the running task's
name and one step per finished task."""

from __future__ import annotations

from streamflow.orchestration import RunFollower

RUN = "manual__2026-12-04T21:53:49.163101+00:00"
# lines as `airflow dags test` (Airflow 3.3) writes them, trimmed of their ends
LINES = [
    "2026-12-04T21:53:49Z [info ] Filling up the DagBag from /app/airflow/dags",
    "2026-12-04T21:53:49Z [info ] [DAG TEST] starting task_id=resolve_month map_index=-1 [airflow.sdk]",
    f"2026-12-04T21:53:49Z [info ] [DAG TEST] running task <TaskInstance: streamflow_monthly.resolve_month {RUN} "
    "[TaskInstanceState.SCHEDULED] ti_id=01a2> [airflow.sdk]",
    "2026-12-04T21:53:53Z [info ] [DAG TEST] end task task_id=resolve_month map_index=-1 [airflow.sdk]",
    "2026-12-04T21:53:53Z [info ] [DAG TEST] starting task_id=ingest map_index=-1 [airflow.sdk]",
    f"2026-12-04T21:53:53Z [info ] [DAG TEST] running task <TaskInstance: streamflow_monthly.ingest {RUN} [x]> [y]",
    "2026-12-04T21:53:53Z [info ] [DAG TEST] end task task_id=ingest map_index=-1 [airflow.sdk]",
    "2026-12-04T21:53:53Z [info ] [DAG TEST] starting task_id=quality_gate.raw_labels map_index=-1 [airflow.sdk]",
]


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def start(self, what, total=None):
        self.calls.append(("start", what, total))

    def advance(self, n=1, detail=None):
        self.calls.append(("advance", n, detail))

    def finish(self):
        self.calls.append(("finish",))


def test_the_bar_gets_the_runs_task_count_then_names_each_running_task_and_counts_finished_ones():
    asked: list[str] = []
    progress = Recorder()
    follower = RunFollower("streamflow_monthly 2024-04-30", progress, lambda run_id: asked.append(run_id) or 41)
    for line in LINES:
        follower.line(line)
    assert follower.run_id == RUN and asked == [RUN]  # counted once, for this run
    assert progress.calls == [
        ("advance", 0, "0 done, running resolve_month"),
        ("start", "streamflow_monthly 2024-04-30", 41),
        ("advance", 0, "0 done, running resolve_month"),  # the running task again, under the new total
        ("advance", 1, "resolve_month done"),
        ("advance", 0, "1 done, running ingest"),
        ("advance", 1, "ingest done"),
        ("advance", 0, "2 done, running quality_gate.raw_labels"),
    ]


def test_a_run_that_never_started_has_no_run_id_and_no_total():
    progress = Recorder()
    follower = RunFollower("x", progress, lambda run_id: 1)
    follower.line("Traceback (most recent call last):")
    follower.line("airflow.exceptions.AirflowException: dag_id could not be found")
    assert follower.run_id is None and progress.calls == []
