"""The one base of every error a user can act on.

Library code raises a subclass with a message that says what is wrong (which file, column, rows,
rule) and, where one exists, the command that fixes it; the CLI renders every one of them in one
place, without a traceback (``streamflow.cli.console.render_error``).
"""

from __future__ import annotations


class StreamflowError(Exception):
    """A problem the user can act on.

    ``hint`` is the next command to run, when there is one; ``details`` are extra lines (failed
    tests, refused rows) shown under the message.
    """

    hint: str | None = None

    def __init__(self, message: str = "", *, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        self.details = list(details or [])

    def render(self) -> str:
        """The whole text the CLI prints: the message, then the details, one per line."""
        return "\n".join([str(self), *self.details])
