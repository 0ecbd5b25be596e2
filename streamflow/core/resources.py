"""What a step costs: its wall time and the peak resident memory of its process while it ran.

:func:`measure` works when several steps run one after the other in one process (the CLI, a test): the process's
lifetime peak (``getrusage``'s ``ru_maxrss``) counts only when this step raised it, otherwise a sampler thread's
highest reading (every 50 ms) during the step is the step's peak. ``start_rss_mb`` is the memory the process held
when the step began, so ``peak_rss_mb - start_rss_mb`` is what the step itself added.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

SAMPLE_SECONDS = 0.05
_MB = 1024 * 1024


@dataclass
class Usage:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


def _lifetime_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / _MB if sys.platform == "darwin" else peak / 1024


@contextlib.contextmanager
def measure() -> Iterator[Usage]:
    """Measure the enclosed block; the yielded :class:`Usage` is filled in when the block ends (also on error)."""
    process = psutil.Process()
    usage = Usage(start_rss_mb=process.memory_info().rss / _MB)
    sampled = [usage.start_rss_mb]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            sampled[0] = max(sampled[0], process.memory_info().rss / _MB)

    lifetime_before = _lifetime_peak_mb()
    sampler = threading.Thread(target=sample, name="streamflow-rss-sampler", daemon=True)
    started = time.perf_counter()
    sampler.start()
    try:
        yield usage
    finally:
        usage.seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        now = process.memory_info().rss / _MB
        lifetime = _lifetime_peak_mb()
        usage.peak_rss_mb = lifetime if lifetime > lifetime_before else max(sampled[0], now)
