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


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (VmHWM).

    Not ``ru_maxrss``: Linux carries that figure across ``exec`` from the parent, so a child
    spawned by a large benchmark driver would report the driver's peak as its own."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # not Linux: the best figure there is
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
