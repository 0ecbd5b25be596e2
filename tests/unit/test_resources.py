"""The step meter: wall time and the peak resident memory of the process while a step ran."""

from __future__ import annotations

import time

from streamflow.core.resources import measure


def test_a_step_that_allocates_shows_it_in_its_peak_and_its_duration():
    with measure() as usage:
        block = bytearray(200 * 1024 * 1024)  # 200 MB, touched so it is resident
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(0.2)
        del block
    assert usage.seconds >= 0.2
    assert usage.start_rss_mb > 0
    assert usage.peak_rss_mb - usage.start_rss_mb >= 150, usage


def test_a_later_small_step_in_the_same_process_does_not_inherit_the_earlier_peak():
    with measure():
        big = bytearray(150 * 1024 * 1024)
        big[::4096] = b"x" * len(big[::4096])
        del big
    with measure() as small:
        time.sleep(0.1)
    assert small.peak_rss_mb - small.start_rss_mb < 50, small
