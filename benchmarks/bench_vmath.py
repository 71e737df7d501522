"""vmath's functions alone: nanoseconds per element on data that stays in L1 (4096 floats,
a native loop repeated 2000 times, the fastest of 7 calls, the calling thread's CPU time),
on 32, 16 and 8 lanes (32 = the elementwise loops' two-vector step).  Separates the cost of
the polynomial code from memory traffic and per-call overhead, which bench_elementwise_ops
measures with them.

    PYTHONPATH=. python benchmarks/bench_vmath.py [exp sigmoid tanh erf copy]
"""
from __future__ import annotations

import argparse
import ctypes
import time

import llvmlite.ir as ir
import numpy as np

from galaxir.backends.cpu import jit, vmath
from galaxir.backends.cpu.codegen import F32, I64, FnBuilder

_KEEP = []


def compile_map(fn, lanes: int, reps: int):
    """``out[i] = fn(x[i])`` over n floats, ``reps`` times, on ``lanes``-wide values."""
    mod = ir.Module("bench_vmath")
    mod.triple = jit.target_triple()
    mod.data_layout = jit.target_data_layout()
    fb = FnBuilder(mod, "f", [F32.as_pointer(), F32.as_pointer(), I64], linkage="external")
    out, x, n = fb.args
    b = fb.b
    V = ir.VectorType(F32, lanes) if lanes > 1 else F32
    with fb.loop(0, reps):
        with fb.loop(0, n, lanes) as i:
            src = b.bitcast(fb.ptr(x, i), V.as_pointer())
            dst = b.bitcast(fb.ptr(out, i), V.as_pointer())
            b.store(fn(fb, b.load(src, align=4)), dst, align=4)
    fb.finish()
    obj, _ = jit.compile_ir(str(mod))
    lo = jit.LoadedObject(obj)
    _KEEP.append(lo)
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(lo.address("f"))


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
    print(f"vscalefps: {getattr(vmath, 'scalef_available', lambda: False)()}")
    print("| function | 32 lanes | 16 lanes | 8 lanes |  (ns per element)")
    print("|---|---|---|---|")
    for name in a.names:
        fn = (lambda fb, v: v) if name == "copy" else getattr(vmath, name)
        cells = [f"{ns_per_element(fn, lanes):.3f}" for lanes in (32, 16, 8)]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
