"""How many threads the numeric libraries may use while fitting or predicting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits

from streamflow.core.settings import Settings


@contextlib.contextmanager
def limited_threads(settings: Settings) -> Iterator[None]:
    """Cap OpenMP/BLAS threads at ``settings.ml_threads`` (0: no cap) while fitting or predicting.

    Results do not depend on the thread count; speed does: on a busy two-core machine, OpenMP
    threads spinning against other processes made gradient boosting several times slower.
    """
    if settings.ml_threads <= 0:
        yield
        return
    with threadpool_limits(limits=settings.ml_threads):
        yield
