"""vmath's functions alone: nanoseconds per element on data that stays in L1 (4096 floats,
a native loop repeated 2000 times, the fastest of 7 calls, the calling thread's CPU time),
on 32, 16 and 8 lanes (32 = the elementwise loops' two-vector step).  Separates the cost of
the polynomial code from memory traffic and per-call overhead, which bench_elementwise_ops
measures with them.

    PYTHONPATH=. python benchmarks/bench_vmath.py [exp sigmoid tanh erf copy]
    GALAXIR_CPU_FEATURES=-avx512f PYTHONPATH=. python benchmarks/bench_vmath.py   # AVX2 code
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from galaxir.backends.cpu import jit, vmath
from galaxir.testing.vmath_map import compile_map

def ns_per_element(fn, lanes: int, n: int = 4096, reps: int = 2000) -> float:
    f = compile_map(fn, lanes, reps)
    x = (3 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    o = np.empty_like(x)
    best = float("inf")
    for _ in range(7):
        t = time.thread_time()
        f(o.ctypes.data, x.ctypes.data, n)
        best = min(best, time.thread_time() - t)
    return best / (n * reps) * 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="*", default=["exp", "sigmoid", "tanh", "erf", "log", "copy"])
    a = p.parse_args(argv)
    print(f"avx512f: {jit.has_feature('avx512f')}, vscalefps: {vmath.scalef_available()}, "
          f"true divisions: {vmath.divide_exactly()}")
    print("| function | 32 lanes | 16 lanes | 8 lanes |  (ns per element)")
    print("|---|---|---|---|")
    for name in a.names:
        fn = (lambda fb, v: v) if name == "copy" else getattr(vmath, name)
        cells = [f"{ns_per_element(fn, lanes):.3f}" for lanes in (32, 16, 8)]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
