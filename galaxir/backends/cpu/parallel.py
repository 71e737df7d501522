"""Splitting kernels over the cores: a spinning worker thread that runs inside JIT code.

A parallel kernel is emitted as a task function ``task(ctx, t)`` plus a wrapper that calls
``gx_parallel_for(task, ctx, n)``.  Every compiled module carries its own copy of
``gx_parallel_for`` and a global ``gx_pool`` that the loader points at the process-wide pool
state.  The worker (a Python thread that enters ``gx_worker`` while an executable runs, so
ctypes has released the GIL) spins on the job generation and grabs tasks with a
compare-and-swap on a counter whose high 32 bits hold the generation, so a late worker can
never run a task of a job it did not see published.  With no pool (one thread) tasks run
inline.

Threads: the state block holds one job at a time, so one call at a time may use the pool.
A call takes the pool with a non-blocking ``Pool.try_acquire`` for its whole run; a call
that finds it taken (another thread's executable is running) runs its tasks inline on its
own thread instead of waiting, so one call alone is as fast as before and concurrent calls
proceed side by side on their own threads (docs/reliability.md).

State layout (i64 slots, 64 bytes apart): 0 generation, 1 fn, 2 ctx, 3 n, 4 next, 5 done,
6 active.
"""
from __future__ import annotations

import ctypes
import os
import threading

import llvmlite.ir as ir
import numpy as np

from .codegen import I8P, I64, VOID, FnBuilder, i64

SLOT = 8  # i64 slots per cache line
GEN, FN, CTX, N, NEXT, DONE, ACTIVE = (k * SLOT for k in range(7))
TASK_T = ir.FunctionType(VOID, [I8P.as_pointer(), I64])


def _slot(b, state, k):
    return b.gep(state, [i64(k)], inbounds=True)


def _pause(b):
    b.call(ir.InlineAsm(ir.FunctionType(VOID, []), "pause", "", side_effect=True), [])


def _grab_loop(fb: FnBuilder, state, gen, fn, ctx, n):
    """Run tasks of job ``gen`` until none is left; count each in ``done``."""
    b = fb.b
    head, body, run, out = fb.block("grab"), fb.block("cas"), fb.block("run"), fb.block("grabbed")
    b.branch(head)
    b.position_at_end(head)
    v = b.load_atomic(_slot(b, state, NEXT), "seq_cst", 8)
    same = b.icmp_unsigned("==", b.lshr(v, i64(32)), gen)
    idx = b.and_(v, i64(0xFFFFFFFF))
    ok = b.and_(same, b.icmp_signed("<", idx, n))
    b.cbranch(ok, body, out)
    b.position_at_end(body)
    res = b.cmpxchg(_slot(b, state, NEXT), v, b.add(v, i64(1)), "seq_cst", "seq_cst")
    b.cbranch(b.extract_value(res, 1), run, head)
    b.position_at_end(run)
    b.call(b.inttoptr(fn, TASK_T.as_pointer()), [b.inttoptr(ctx, I8P.as_pointer()), idx])
    b.atomic_rmw("add", _slot(b, state, DONE), i64(1), "seq_cst")
    b.branch(head)
    b.position_at_end(out)


def pool_global(module: ir.Module) -> ir.GlobalVariable:
    """The module's ``gx_pool`` global (the loader points it at the pool state)."""
    pool = module.globals.get("gx_pool")
    if pool is None:
        pool = ir.GlobalVariable(module, I64.as_pointer(), "gx_pool")
        pool.initializer = ir.Constant(I64.as_pointer(), None)
    return pool


def define_parallel_for_state(module: ir.Module) -> ir.Function:
    """``gx_parallel_for_s(state, task, ctx, n)``: run ``task(ctx, t)`` for t < n over the
    pool whose state block is ``state`` (inline when state is null or n <= 1)."""
    fn = module.globals.get("gx_parallel_for_s")
    if fn is not None:
        return fn
    fb = FnBuilder(module, "gx_parallel_for_s",
                   [I64.as_pointer(), TASK_T.as_pointer(), I8P.as_pointer(), I64], noalias=False)
    b = fb.b
    state, task, ctx, n = fb.args
    serial = b.or_(b.icmp_unsigned("==", b.ptrtoint(state, I64), i64(0)),
                   b.icmp_signed("<=", n, i64(1)))
    ser, par = fb.block("serial"), fb.block("parallel")
    b.cbranch(serial, ser, par)
    b.position_at_end(ser)
    with fb.loop(0, n) as t:
        b.call(task, [ctx, t])
    b.ret_void()
    b.position_at_end(par)
    gen = b.add(b.load_atomic(_slot(b, state, GEN), "seq_cst", 8), i64(1))
    gen = b.and_(gen, i64(0xFFFFFFFF))
    b.store_atomic(b.or_(b.shl(gen, i64(32)), i64(0xFFFFFFFF)), _slot(b, state, NEXT), "seq_cst", 8)
    b.store_atomic(b.ptrtoint(task, I64), _slot(b, state, FN), "seq_cst", 8)
    b.store_atomic(b.ptrtoint(ctx, I64), _slot(b, state, CTX), "seq_cst", 8)
    b.store_atomic(n, _slot(b, state, N), "seq_cst", 8)
    b.store_atomic(i64(0), _slot(b, state, DONE), "seq_cst", 8)
    b.store_atomic(b.shl(gen, i64(32)), _slot(b, state, NEXT), "seq_cst", 8)
    b.store_atomic(gen, _slot(b, state, GEN), "seq_cst", 8)
    _grab_loop(fb, state, gen, b.ptrtoint(task, I64), b.ptrtoint(ctx, I64), n)
    wait, spin, done = fb.block("wait"), fb.block("spin"), fb.block("alldone")
    b.branch(wait)
    b.position_at_end(wait)
    d = b.load_atomic(_slot(b, state, DONE), "seq_cst", 8)
    b.cbranch(b.icmp_signed("<", d, n), spin, done)
    b.position_at_end(spin)
    _pause(b)
    b.branch(wait)
    b.position_at_end(done)
    return fb.finish()


def define_parallel_for(module: ir.Module) -> ir.Function:
    """``gx_parallel_for(task, ctx, n)`` over the pool the module's ``gx_pool`` points at."""
    fn = module.globals.get("gx_parallel_for")
    if fn is not None:
        return fn
    pool = pool_global(module)
    inner = define_parallel_for_state(module)
    fb = FnBuilder(module, "gx_parallel_for", [TASK_T.as_pointer(), I8P.as_pointer(), I64],
                   noalias=False)
    b = fb.b
    task, ctx, n = fb.args
    b.call(inner, [b.load(pool), task, ctx, n])
    return fb.finish()


def parallel_kernel(module: ir.Module, fname: str, n_args: int, n_tasks: int, emit_task):
    """Kernel ``fname(p0..pn)`` running ``emit_task(fb, args, t)`` for t in range(n_tasks)."""
    from .codegen import F32
    pfor = define_parallel_for(module)
    tb = FnBuilder(module, fname + "_task", [I8P.as_pointer(), I64], noalias=False)
    b = tb.b
    ctx, t = tb.args
    args = [b.load(b.gep(ctx, [i64(k)], inbounds=True)) for k in range(n_args)]
    emit_task(tb, args, t)
    task = tb.finish()
    # never inlined: once the segment function inlines the wrappers, the task pointer of
    # each parallel-for becomes a constant, and inlining every task into one function makes
    # LLVM's loop passes superlinear (inception_v2: 19 s instead of 2 s)
    task.attributes.add("noinline")
    fb = FnBuilder(module, fname, [F32.as_pointer()] * n_args)
    b = fb.b
    with b.goto_block(fb.entry):
        arr = b.alloca(I8P, size=i64(max(n_args, 1)))
    for k, a in enumerate(fb.args):
        b.store(b.bitcast(a, I8P), b.gep(arr, [i64(k)], inbounds=True))
    b.call(pfor, [task, arr, i64(n_tasks)])
    return fb.finish()


# -- the process-wide pool ------------------------------------------------------------------
class Pool:
    """One worker thread (plus the caller) over a shared state block."""

    def __init__(self):
        from . import jit
        self.state = np.zeros(8 * SLOT, np.int64)
        self.address = self.state.ctypes.data
        mod = ir.Module(name="gx_pool_runtime")
        mod.triple = jit.target_triple()
        fb = FnBuilder(mod, "gx_worker", [I64.as_pointer()], noalias=False, linkage="external")
        b = fb.b
        state = fb.args[0]
        last = fb.alloca(I64)
        b.store(b.load_atomic(_slot(b, state, GEN), "seq_cst", 8), last)
        head, check, job, spin, leave = (fb.block(h) for h in ("w", "chk", "job", "spin", "leave"))
        b.branch(head)
        b.position_at_end(head)
        active = b.load_atomic(_slot(b, state, ACTIVE), "seq_cst", 8)
        b.cbranch(b.icmp_signed("==", active, i64(0)), leave, check)
        b.position_at_end(check)
        g = b.load_atomic(_slot(b, state, GEN), "seq_cst", 8)
        b.cbranch(b.icmp_unsigned("==", g, b.load(last)), spin, job)
        b.position_at_end(spin)
        _pause(b)
        b.branch(head)
        b.position_at_end(job)
        b.store(g, last)
        fn = b.load_atomic(_slot(b, state, FN), "seq_cst", 8)
        ctx = b.load_atomic(_slot(b, state, CTX), "seq_cst", 8)
        n = b.load_atomic(_slot(b, state, N), "seq_cst", 8)
        _grab_loop(fb, state, g, fn, ctx, n)
        b.branch(head)
        b.position_at_end(leave)
        fb.finish()
        obj, _ = jit.compile_ir(str(mod))
        self._loaded = jit.LoadedObject(obj)
        self._worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._loaded.address("gx_worker"))
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="galaxir-cpu-worker", daemon=True)
        self._thread.start()
        self._owner = threading.Lock()  # held by the one call whose jobs the pool runs

    def try_acquire(self) -> bool:
        """Take the pool for one call (False at once when another call holds it); the
        holder must call ``release``."""
        if not self._owner.acquire(blocking=False):
            return False
        self.state[ACTIVE] = 1
        self._wake.set()
        return True

    def release(self) -> None:
        self.state[ACTIVE] = 0
        self._owner.release()

    def _loop(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            self._worker(self.address)


_pool: Pool | None = None
_pool_lock = threading.Lock()


def get_pool(num_threads: int | None) -> Pool | None:
    """The shared pool, or None when running on one thread."""
    global _pool
    n = num_threads if num_threads is not None else int(os.environ.get("GALAXIR_NUM_THREADS", "0") or 0)
    if n <= 0:
        n = min(2, os.cpu_count() or 1)
    if n <= 1:
        return None
    with _pool_lock:
        if _pool is None:
            _pool = Pool()
        return _pool
