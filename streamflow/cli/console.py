"""What the command line draws: its consoles, the one renderer of errors, the rich progress bar.

Library code never prints: it raises a :class:`~streamflow.core.errors.StreamflowError` and reports
to a :class:`~streamflow.core.progress.Progress`; this module turns both into terminal output.
"""

from __future__ import annotations

import os
from datetime import datetime, time
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from typer.core import TyperGroup

from streamflow.core.errors import StreamflowError
from streamflow.core.redact import scrub

WIDE = 10_000  # columns when output goes to a file or a pipe (a log): tables, paths and URLs are never cut


def make_console(stderr: bool = False) -> Console:
    """A console at the terminal's width. Written to a file or a pipe (the demo's log, CI), it is wide enough
    that no table cell, path or URL is wrapped or cropped, unless ``COLUMNS`` sets a width (rich reads it)."""
    out = Console(stderr=stderr)
    if not out.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        out.width = WIDE
    return out


console = make_console()
err_console = make_console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a clear error (no traceback) and exit non-zero."""
    err_console.print(Text("error: ", style="bold red") + Text(scrub(message)))
    raise typer.Exit(code)


def render_error(exc: StreamflowError) -> None:
    """The one place an error a user can act on is printed: message, details, next command. A password in
    a URL or a ``password=`` pair is masked, whichever library wrote the message."""
    err_console.print(Text("error: ", style="bold red") + Text(scrub(exc.render())), soft_wrap=True)
    if exc.hint:
        err_console.print(Text("next: ", style="bold") + Text(scrub(exc.hint)))


class StreamflowGroup(TyperGroup):
    """The root command group: any StreamflowError raised by a command is rendered, exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StreamflowError as exc:
            render_error(exc)
            raise typer.Exit(1) from None


def cell_text(value) -> str:
    """A feature value as a table cell: month-end timestamps as dates, floats rounded."""
    if value is None:
        return "-"
    if isinstance(value, datetime):  # month-end values sit at 00:00 UTC: show the date
        return value.date().isoformat() if value.time() == time(0) else value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return str(round(value, 6))
    return str(value)


class RichProgress:
    """A :class:`~streamflow.core.progress.Progress` drawn as one transient bar on stderr: the phase's
    name (and what runs now), units done of the total when known, elapsed time."""

    def __init__(self, console: Console | None = None):
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or err_console,
            transient=True,
        )
        self._task = None
        self._what = ""

    def __enter__(self) -> RichProgress:
        self._bar.__enter__()
        self._task = self._bar.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    def start(self, what: str, total: int | None = None) -> None:
        self._what = what
        self._bar.update(self._task, description=what, total=total, completed=0)

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        description = f"{self._what}: {detail}" if detail else self._what
        self._bar.update(self._task, advance=n, description=description)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.__exit__(None, None, None)
            self._task = None
