"""dbt's node events as progress: how far a build or a quality gate has come, node by node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamflow.core.progress import Progress

if TYPE_CHECKING:
    from dbt.contracts.graph.manifest import Manifest


class DbtProgress:
    """dbt's node events as steps of a :class:`~streamflow.core.progress.Progress`: one unit per node
    finished, named after the node that runs now."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.stage = ""
        self.total: int | None = None

    def set_total(self, total: int) -> None:
        self.total = total
        self.progress.start(self.stage, total)

    def stage_to(self, text: str) -> None:
        self.stage = text
        self.progress.advance(0, text)

    def callback(self, event) -> None:
        name = event.info.name
        if name == "NodeStart":
            self.progress.advance(0, f"{self.stage}: {event.data.node_info.node_name}")
        elif name == "NodeFinished":
            self.progress.advance(1)


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
