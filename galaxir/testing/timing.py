"""Timing for benchmarks and ``galaxir bench``: the median of repeated runs after a warm-up
(the machines are shared and noisy: one run means little)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable


def median_ms(fn: Callable[[], object], runs: int, wrap: Callable[[Iterable], Iterable] | None = None) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls, after one warm-up;
    ``wrap`` may decorate the loop (a progress bar)."""
    fn()
    loop: Iterable = range(max(1, runs))
    if wrap is not None:
        loop = wrap(loop)
    times = []
    for _ in loop:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)
