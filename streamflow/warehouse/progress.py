"""The dbt warehouse from Python: dbt in-process with the platform's settings, the monthly build
behind its quality gate, and the gate's report.

`build(settings)` brings the warehouse up to the newest loaded drop: for every drop month not built
yet, in as_of order, it runs the source tests (the quality gate) and then the same dbt nodes an
analyst or Airflow runs for one month (`dbt build --vars '{"as_of": ...}'`). When an already built
month was re-ingested with other content or disappeared (`streamflow ingest --rebuild`), the
snapshots and marts are rebuilt from the raw history, month by month. Every month is gated before
anything is touched, so a bad drop leaves snapshots and marts exactly as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbt.contracts.graph.manifest import Manifest


class _Progress:
    """Optional rich progress: one bar over every dbt node of the build, named after the current one."""

    def __init__(self, enabled: bool, console=None):
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._console = console
        self.stage = ""

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self._console or Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("dbt", total=None)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def set_total(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def stage_to(self, text: str) -> None:
        self.stage = text
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def callback(self, event) -> None:
        if self._progress is None:
            return
        name = event.info.name
        if name == "NodeStart":
            node = event.data.node_info.node_name
            self._progress.update(self._task, description=f"{self.stage}: {node}")
        elif name == "NodeFinished":
            self._progress.advance(self._task)


def _count_nodes(manifest: Manifest) -> tuple[int, int]:
    """(gate tests, nodes of one month's build) for the progress bar; unit tests do not run there."""
    gate = build = 0
    for node in manifest.nodes.values():
        rtype = str(node.resource_type)
        if rtype.endswith("test"):
            parents = node.depends_on.nodes
            if parents and all(p.startswith("source.") for p in parents):
                gate += 1
            else:
                build += 1
        elif rtype.endswith(("model", "snapshot")) and getattr(node.config, "materialized", "") != "ephemeral":
            build += 1
    return gate, build
