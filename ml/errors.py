"""The one exception type of the ML package: a problem the user can act on, printed without a traceback."""

from __future__ import annotations

from streamflow.core.errors import StreamflowError


class MLError(StreamflowError, RuntimeError):
    """A precondition is not met (no labels yet, no champion, a missing oracle file...).

    The message says what is missing and which command fixes it. It stays a ``RuntimeError`` too, so
    callers that caught it as one before the common base still do.
    """
