"""Named pause points for the fault tests: stop a writing step at a known place so a test can kill it there.

Off unless ``STREAMFLOW_FAULT_PAUSE`` names a point. A process that reaches the point it names writes
``paused at <point>`` on its standard error and waits for a line on its standard input (Enter resumes it;
the end of its input resumes it too, so a paused process never outlives the test that started it). The
test kills it with SIGKILL there, or resumes it. The variable is read where each point is reached, not at
start-up, and is a test hook, not a setting: it never appears in ``.env`` or the compose files.

Every point is listed in :data:`POINTS` with where it is; :func:`pause` refuses a name that is not.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "STREAMFLOW_FAULT_PAUSE"
POINTS = {
    "ingest.copy": "inside the first COPY of a drop, after its first chunk is sent (the transaction is open)",
    "build.snapshot": "in a month's dbt build, when a snapshot node has finished and before the month is recorded",
    "build.month": "after a month of a multi-month build is built and recorded, before the next month starts",
    "materialize.view": "after the first feature view is written to the online store, before the others",
    "materialize.departed": "after every feature view holds the month, before the users who left are removed",
    "train.registered": "after the model version is registered, before the `challenger` alias moves to it",
    "promote.alias": "after the promotion decision is recorded on the versions, before `champion` moves",
}


def pause(point: str) -> None:
    """Wait here when ``STREAMFLOW_FAULT_PAUSE`` names ``point`` (see the module's docstring)."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
    if os.environ.get(ENV_VAR) != point:
        return
    sys.stderr.write(f"paused at {point}\n")  # a test hook, not progress: the test waits for this line
    sys.stderr.flush()
    sys.stdin.readline()
