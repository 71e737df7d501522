"""The cpu backend's profiler: per-step times of a specialization's runs.

A native segment runs many kernels in one call into JIT code, so Python cannot time them
one by one.  On the first ``exe.profile(...)`` the specialization's module is generated
again with *timed* entry points (``Specialization.emit_module(stamp=...)``): the same
kernels, and a ``clock_gettime(CLOCK_MONOTONIC)`` read before the first step and after each
step into a buffer of int64 nanoseconds.  That copy is compiled and loaded beside the
normal code, which stays as it was: the normal entry points hold no timing code, and a run
that is not profiled pays nothing.  Ops on the numpy reference are timed in Python with the
same clock, so native and fallback steps share one timeline.  ``kernel_plan`` hands the
segments and fallback ops to the shared profiler (galaxir/backends/profile.py) as units,
which is also how a partitioned executable times the cpu's kernels inside its segments.
"""
from __future__ import annotations

import ctypes
import time
from typing import Any

import llvmlite.ir as ir
import numpy as np

from ..profile import StepTiming, shapes_label, value_label
from . import jit
from .codegen import I32, I64
from .lower import AliasStep, FallbackStep, NativeStep
from .program import POOL_MIN_BYTES
from . import kernels as K

#: profile(clock=...): "wall" is the monotonic clock (what a user waits for), "cpu" the
#: calling thread's CPU time (unaffected by other processes on a busy machine; it does
#: not count a parallel kernel's work on the worker thread)
CLOCKS = {"wall": time.CLOCK_MONOTONIC, "cpu": time.CLOCK_THREAD_CPUTIME_ID}
_TIMESPEC = ir.LiteralStructType([I64, I64])
_bound = False


def _bind_clock() -> None:
    """Make ``gx_clock_gettime`` (libc's clock_gettime) callable from JIT code."""
    global _bound
    if _bound:
        return
    llvm = jit._llvm()
    fn = ctypes.CDLL(None).clock_gettime
    llvm.add_symbol("gx_clock_gettime", ctypes.cast(fn, ctypes.c_void_p).value)
    _bound = True


class _Stamper:
    """Emits ``times[j] = now_ns()`` into a timed segment function."""

    def __init__(self):
        self._slot: dict[int, ir.Value] = {}

    def __call__(self, b: ir.IRBuilder, times: ir.Value, j: int) -> None:
        fn = b.function
        mod = fn.module
        clock = mod.globals.get("gx_clock_gettime")
        if clock is None:
            clock = ir.Function(mod, ir.FunctionType(I32, [I32, _TIMESPEC.as_pointer()]),
                                "gx_clock_gettime")
        which = mod.globals.get("gx_prof_clock")
        if which is None:  # the clock id, set by the profiler before it runs
            which = ir.GlobalVariable(mod, I32, "gx_prof_clock")
            which.initializer = ir.Constant(I32, CLOCKS["wall"])
        ts = self._slot.get(id(fn))
        if ts is None:  # j == 0 is emitted in the entry block: one alloca per function
            ts = self._slot[id(fn)] = b.alloca(_TIMESPEC)
        b.call(clock, [b.load(which), ts])
        sec = b.load(b.gep(ts, [ir.Constant(I32, 0), ir.Constant(I32, 0)], inbounds=True))
        nsec = b.load(b.gep(ts, [ir.Constant(I32, 0), ir.Constant(I32, 1)], inbounds=True))
        ns = b.add(b.mul(sec, ir.Constant(I64, 1_000_000_000)), nsec)
        b.store(ns, b.gep(times, [ir.Constant(I64, j)], inbounds=True))


class TimedCode:
    """The timed copy of a specialization's segments, compiled and loaded."""

    def __init__(self, spec):
        _bind_clock()
        mod, _ = spec.emit_module(stamp=_Stamper())
        self.llvm_ir = str(mod)
        obj, _ = jit.compile_ir(self.llvm_ir, None)
        self.loaded = jit.LoadedObject(obj)
        from .program import bind_dynamic
        self._dyn_data = bind_dynamic(self.loaded, mod)  # a dynamic module's shape values
        proto = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
        self.entries = [proto(self.loaded.address(f"gx_seg{k}_timed"))
                        for k in range(len(spec.segments))]
        self.pool_slot = self.loaded.global_address("gx_pool")
        self.clock_slot = self.loaded.global_address("gx_prof_clock")
        self.bufs = [np.zeros(len(seg) + 1, np.int64) for seg in spec.segments]
        self.buf_addr = [b.ctypes.data for b in self.bufs]


def timed_code(spec) -> TimedCode:
    code = getattr(spec, "_timed", None)
    if code is None:
        code = spec._timed = TimedCode(spec)
    return code


def _describe_step(i: int, s) -> StepTiming:
    if isinstance(s, NativeStep):
        ops = [op.name for op in s.ops]
        kind = "elementwise" if isinstance(s.kernel, K.Elementwise) and len(ops) > 1 else ops[0]
        return StepTiming(i, value_label(s.outputs), kind, ops, "native", s.kernel.name,
                          shapes_label(s.inputs, s.outputs))
    if isinstance(s, AliasStep):
        return StepTiming(i, value_label([s.result]), s.op.name, [s.op.name], "view", "view",
                          shapes_label([s.source], [s.result]))
    assert isinstance(s, FallbackStep)
    return StepTiming(i, value_label(s.op.results), s.op.name, [s.op.name], "numpy", "numpy",
                      shapes_label(s.op.read_values(), s.op.results))


def kernel_plan(spec, inputs: list[Any], interp, pool):
    """``Executable.kernel_steps`` for ``spec`` on ``inputs``: every step described, and
    ``start_run()`` giving one unit per native segment (its timed entry point stamps each
    kernel, ``fn(now)`` returns their spans) and per fallback op (timed in Python), with
    an untimed unit binding the inputs first (``start_run(inputs)``: another run's inputs
    of the same shapes) and one collecting the outputs last (``outputs()`` returns them)."""
    code = timed_code(spec)
    if not hasattr(spec, "_step_index"):
        spec._step_index = {id(s): i for i, s in enumerate(spec.steps)}
    spec._ensure_arena()
    call = spec.new_call()  # the profiler's own arena, kept for its runs
    steps = [_describe_step(i, s) for i, s in enumerate(spec.steps)]
    state: dict[str, Any] = {}

    def bind(run_inputs):
        def run(now):
            spec.use_pool(pool, code.pool_slot)
            if code.clock_slot:
                ctypes.c_int32.from_address(code.clock_slot).value = getattr(
                    now, "clock_id", CLOCKS["wall"])
            state["ext"] = spec._bind_inputs(call, run_inputs)
            return []
        return (), run

    def native(item):
        def run(now):
            failed = code.entries[item](call.table_addr, code.buf_addr[item])
            if failed:
                spec._failed(failed)
            buf = code.bufs[item]
            return [(int(buf[j]), int(buf[j + 1])) for j in range(len(spec.segments[item]))]
        return [i for i, _ in spec.segments[item]], run

    def fallback(item):
        def run(now):
            a = now()
            spec._run_fallback(call, item, state["ext"], interp)
            return [(a, now())]
        return [spec._step_index[id(item)]], run

    def collect(now):
        state["outs"] = spec._outputs(call, state["ext"])
        return []

    def start_run(run_inputs=None):
        return [bind(inputs if run_inputs is None else run_inputs), *[native(item) if kind == "native" else fallback(item)
                              for kind, item in spec.seq], ((), collect)]
    return steps, start_run, lambda: state["outs"]


def notes_for(spec, pool, clock: str) -> list[str]:
    """What a reader of the cpu profile should know about how it was measured."""
    notes = []
    if pool is not None and spec.work_bytes >= POOL_MIN_BYTES and timed_code(spec).pool_slot:
        notes.append("parallel kernels ran over the thread pool: a step's time is the "
                     "caller's wall time for all its tasks")
    if clock == "cpu":
        notes.append("times are the calling thread's CPU time (clock='cpu')")
    return notes
