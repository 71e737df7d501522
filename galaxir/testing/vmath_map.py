"""One vmath function as a native loop of its own, for the accuracy tests and the
nanoseconds-per-element benchmark (no graph, no executable: the polynomial code alone)."""
from __future__ import annotations

import ctypes

import llvmlite.ir as ir

from ..backends.cpu import jit
from ..backends.cpu.codegen import F32, I64, FnBuilder

_KEEP = []  # the loaded objects: their code lives as long as the process


def compile_map(fn, lanes: int, reps: int = 1):
    """Native ``f(out, x, n)``: ``out[i] = fn(fb, x[i])`` over n float32 values taken
    ``lanes`` at a time (n a multiple of lanes), the whole pass repeated ``reps`` times."""
    mod = ir.Module("vmath_map")
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
