"""The one progress interface: library code reports to it, the CLI draws it.

A long step calls ``progress.start(what, total)``, then ``progress.advance(n, detail)`` as work
finishes, then ``progress.finish()``. Library code never prints; it receives a ``Progress`` (the
CLI passes a rich bar, everything else the silent :data:`SILENT`).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What a long-running step reports to."""

    def start(self, what: str, total: int | None = None) -> None:
        """A new phase begins: its name and how many units it has (None when unknown)."""

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        """``n`` units of the current phase are done; ``detail`` names what runs now."""

    def finish(self) -> None:
        """The step is over (success or not): remove any live display."""


class _Silent:
    """Progress that shows nothing: the default for library calls."""

    def start(self, what: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


SILENT: Progress = _Silent()
