"""Splitting kernels over the cores: a pool of worker threads that live inside JIT code.

A parallel kernel is emitted as a task function ``task(ctx, t)`` plus a wrapper that calls
``gx_parallel_for(task, ctx, n)``.  Every compiled module carries its own copy of
``gx_parallel_for`` and a global ``gx_pool`` that the runtime points at a pool's state block
(or at nothing: tasks then run inline on the calling thread).

The pool (docs/performance.md, "Threads"): ``N - 1`` worker threads plus the caller.  Each
worker is a Python thread that calls the native ``gx_worker`` loop once and stays in native
code (ctypes released the GIL) until the process exits.  A job is published by bumping the
generation; everyone grabs tasks with a compare-and-swap on a counter whose high 32 bits
hold the generation, so a late worker can never run a task of a job it did not see.

Sharing without a lock: the state block holds one job at a time, and ``gx_parallel_for_s``
takes it with a compare-and-swap on ``busy``; a caller that finds it taken (another
thread's call is using the pool) runs its tasks inline instead of waiting.  So any number
of executables, or threads on one executable, may call at once: nothing is serialized and
the pool is never corrupted; nested parallel loops run inline.

Backing off (the cores are shared): an idle worker spins with ``pause`` for a short while
(the next kernel of the same call usually follows within microseconds), then yields its
core a few times, then sleeps on a futex on the generation word (``sleepers`` tells the
publisher whether a wake-up syscall is needed).  A caller waiting for a task that a
descheduled worker holds yields its core after a short spin.

State layout (i64 slots, 64 bytes apart): 0 generation, 1 fn, 2 ctx, 3 n, 4 next, 5 done,
6 busy, 7 sleepers, 8 stop.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import platform
import threading

import llvmlite.ir as ir
import numpy as np

from .codegen import I8P, I32, I64, VOID, FnBuilder, i64

SLOT = 8  # i64 slots per cache line
GEN, FN, CTX, N, NEXT, DONE, BUSY, SLEEPERS, STOP = (k * SLOT for k in range(9))
NSLOTS = 9
TASK_T = ir.FunctionType(VOID, [I8P.as_pointer(), I64])

#: pause iterations before an idle worker starts yielding, then yields before it sleeps
SPIN_PAUSES = 2048
SPIN_YIELDS = 32
#: pause iterations before a caller waiting for its job's last tasks starts yielding
WAIT_PAUSES = 1024
#: a sleeping worker wakes at least this often (ns) even without a futex wake-up
SLEEP_NS = 50_000_000

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129
_TIMESPEC = ir.LiteralStructType([I64, I64])
_bound = False


def bind_symbols() -> None:
    """Make libc's ``syscall`` and ``sched_yield`` callable from JIT code (as
    ``gx_syscall``/``gx_sched_yield``: object code holds names, never addresses)."""
    global _bound
    if _bound:
        return
    from . import jit
    llvm = jit._llvm()
    libc = ctypes.CDLL(None)
    llvm.add_symbol("gx_syscall", ctypes.cast(libc.syscall, ctypes.c_void_p).value)
    llvm.add_symbol("gx_sched_yield", ctypes.cast(libc.sched_yield, ctypes.c_void_p).value)
    _bound = True


def _slot(b, state, k):
    return b.gep(state, [i64(k)], inbounds=True)


def _pause(b):
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        b.call(ir.InlineAsm(ir.FunctionType(VOID, []), "pause", "", side_effect=True), [])
    else:
        b.call(ir.InlineAsm(ir.FunctionType(VOID, []), "yield", "", side_effect=True), [])


def _extern(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name)
    return fn


def _sched_yield(b):
    b.call(_extern(b.module, "gx_sched_yield", ir.FunctionType(I32, [])), [])


def _syscall(b, args):
    fn = _extern(b.module, "gx_syscall", ir.FunctionType(I64, [I64], var_arg=True))
    return b.call(fn, args)


def _futex_wake(b, state):
    if _SYS_FUTEX is None:
        return
    addr = b.ptrtoint(_slot(b, state, GEN), I64)
    _syscall(b, [i64(_SYS_FUTEX), addr, ir.Constant(I32, FUTEX_WAKE_PRIVATE),
                 ir.Constant(I32, 0x7FFFFFFF)])


def _futex_wait(fb: FnBuilder, state, expected):
    """Sleep while the generation's low 32 bits equal ``expected`` (at most SLEEP_NS)."""
    b = fb.b
    if _SYS_FUTEX is None:
        _sched_yield(b)
        return
    ts = fb.alloca(_TIMESPEC)
    b.store(ir.Constant(_TIMESPEC, [0, SLEEP_NS]), ts)
    addr = b.ptrtoint(_slot(b, state, GEN), I64)
    _syscall(b, [i64(_SYS_FUTEX), addr, ir.Constant(I32, FUTEX_WAIT_PRIVATE),
                 b.trunc(expected, I32), ts, i64(0), ir.Constant(I32, 0)])


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
    pool whose state block is ``state``; inline when state is null, n <= 1, or another call
    holds the pool right now."""
    fn = module.globals.get("gx_parallel_for_s")
    if fn is not None:
        return fn
    bind_symbols()
    fb = FnBuilder(module, "gx_parallel_for_s",
                   [I64.as_pointer(), TASK_T.as_pointer(), I8P.as_pointer(), I64], noalias=False)
    b = fb.b
    state, task, ctx, n = fb.args
    serial = b.or_(b.icmp_unsigned("==", b.ptrtoint(state, I64), i64(0)),
                   b.icmp_signed("<=", n, i64(1)))
    ser, take, par = fb.block("serial"), fb.block("take"), fb.block("parallel")
    b.cbranch(serial, ser, take)
    b.position_at_end(ser)
    with fb.loop(0, n) as t:
        b.call(task, [ctx, t])
    b.ret_void()
    b.position_at_end(take)
    got = b.cmpxchg(_slot(b, state, BUSY), i64(0), i64(1), "seq_cst", "seq_cst")
    b.cbranch(b.extract_value(got, 1), par, ser)
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
    wake, grab = fb.block("wake"), fb.block("grabstart")
    sleepers = b.load_atomic(_slot(b, state, SLEEPERS), "seq_cst", 8)
    b.cbranch(b.icmp_signed(">", sleepers, i64(0)), wake, grab)
    b.position_at_end(wake)
    _futex_wake(b, state)
    b.branch(grab)
    b.position_at_end(grab)
    _grab_loop(fb, state, gen, b.ptrtoint(task, I64), b.ptrtoint(ctx, I64), n)
    spins = fb.alloca(I64, i64(0))
    wait, spin, pause, yld, done = (fb.block(h) for h in ("wait", "spin", "pause", "yield", "alldone"))
    b.branch(wait)
    b.position_at_end(wait)
    d = b.load_atomic(_slot(b, state, DONE), "seq_cst", 8)
    b.cbranch(b.icmp_signed("<", d, n), spin, done)
    b.position_at_end(spin)  # pause a while, then give the core to whoever holds a task
    k = b.load(spins)
    b.store(b.add(k, i64(1)), spins)
    b.cbranch(b.icmp_signed("<", k, i64(WAIT_PAUSES)), pause, yld)
    b.position_at_end(pause)
    _pause(b)
    b.branch(wait)
    b.position_at_end(yld)
    _sched_yield(b)
    b.branch(wait)
    b.position_at_end(done)
    b.store_atomic(i64(0), _slot(b, state, BUSY), "seq_cst", 8)
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


def emit_parallel(fb: FnBuilder, name: str, values, n_tasks: int, emit_task) -> None:
    """Inside the function ``fb`` builds: run ``emit_task(tb, args, t)`` for t < n_tasks
    over the pool, as the task function ``name``; ``values`` (pointers) reach the task as
    ``args`` (i8 pointers) through an array on the caller's stack."""
    pfor = define_parallel_for(fb.module)
    tb = FnBuilder(fb.module, name, [I8P.as_pointer(), I64], noalias=False)
    b = tb.b
    ctx, t = tb.args
    args = [b.load(b.gep(ctx, [i64(k)], inbounds=True)) for k in range(len(values))]
    emit_task(tb, args, t)
    task = tb.finish()
    # never inlined: once the segment function inlines the wrappers, the task pointer of
    # each parallel-for becomes a constant, and inlining every task into one function makes
    # LLVM's loop passes superlinear (inception_v2: 19 s instead of 2 s)
    task.attributes.add("noinline")
    b = fb.b
    with b.goto_block(fb.entry):
        arr = b.alloca(I8P, size=i64(max(len(values), 1)))
    for k, a in enumerate(values):
        b.store(b.bitcast(a, I8P), b.gep(arr, [i64(k)], inbounds=True))
    b.call(pfor, [task, arr, fb.dim(n_tasks)])


def parallel_kernel(module: ir.Module, fname: str, n_args: int, n_tasks: int, emit_task):
    """Kernel ``fname(p0..pn)`` running ``emit_task(fb, args, t)`` for t in range(n_tasks)."""
    from .codegen import F32
    fb = FnBuilder(module, fname, [F32.as_pointer()] * n_args)
    emit_parallel(fb, fname + "_task", list(fb.args), n_tasks, emit_task)
    return fb.finish()


def _worker_module() -> ir.Module:
    """``gx_worker(state)``: run published jobs until ``stop``; spin, yield, then sleep."""
    from . import jit
    mod = ir.Module(name="gx_pool_runtime")
    mod.triple = jit.target_triple()
    fb = FnBuilder(mod, "gx_worker", [I64.as_pointer()], noalias=False, linkage="external")
    b = fb.b
    state = fb.args[0]
    last = fb.alloca(I64)
    spins = fb.alloca(I64, i64(0))
    b.store(b.load_atomic(_slot(b, state, GEN), "seq_cst", 8), last)
    head, check, job, idle, pause, yld, sleep, leave = (
        fb.block(h) for h in ("w", "chk", "job", "idle", "pause", "yield", "sleep", "leave"))
    b.branch(head)
    b.position_at_end(head)
    stop = b.load_atomic(_slot(b, state, STOP), "seq_cst", 8)
    b.cbranch(b.icmp_signed("!=", stop, i64(0)), leave, check)
    b.position_at_end(check)
    g = b.load_atomic(_slot(b, state, GEN), "seq_cst", 8)
    b.cbranch(b.icmp_unsigned("==", g, b.load(last)), idle, job)
    b.position_at_end(job)
    b.store(g, last)
    b.store(i64(0), spins)
    fn = b.load_atomic(_slot(b, state, FN), "seq_cst", 8)
    ctx = b.load_atomic(_slot(b, state, CTX), "seq_cst", 8)
    n = b.load_atomic(_slot(b, state, N), "seq_cst", 8)
    _grab_loop(fb, state, g, fn, ctx, n)
    b.branch(head)
    b.position_at_end(idle)
    k = b.load(spins)
    b.store(b.add(k, i64(1)), spins)
    b.cbranch(b.icmp_signed("<", k, i64(SPIN_PAUSES)), pause, yld)
    b.position_at_end(pause)
    _pause(b)
    b.branch(head)
    b.position_at_end(yld)
    doyield = fb.block("doyield")
    b.cbranch(b.icmp_signed("<", k, i64(SPIN_PAUSES + SPIN_YIELDS)), doyield, sleep)
    b.position_at_end(doyield)
    _sched_yield(b)
    b.branch(head)
    b.position_at_end(sleep)
    # announce the sleep, then sleep only if no job came meanwhile (the futex compares)
    b.atomic_rmw("add", _slot(b, state, SLEEPERS), i64(1), "seq_cst")
    _futex_wait(fb, state, b.load(last))
    b.atomic_rmw("sub", _slot(b, state, SLEEPERS), i64(1), "seq_cst")
    b.store(i64(SPIN_PAUSES), spins)  # woken: yield-spin briefly before sleeping again
    b.branch(head)
    b.position_at_end(leave)
    fb.finish()
    return mod


# -- the pools ------------------------------------------------------------------------------
class Pool:
    """``size - 1`` native worker threads plus the calling thread, over one state block."""

    def __init__(self, size: int):
        from . import jit
        if size < 2:
            raise ValueError("a pool needs at least 2 threads (1 thread runs inline)")
        bind_symbols()
        self.size = size
        self.state = np.zeros(NSLOTS * SLOT, np.int64)
        self.address = self.state.ctypes.data
        obj, _ = jit.compile_ir(str(_worker_module()), jit.default_cache_dir())  # disk too
        self._loaded = jit.LoadedObject(obj)
        self._worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._loaded.address("gx_worker"))
        self._threads = [threading.Thread(target=self._worker, args=(self.address,),
                                          name=f"galaxir-cpu-worker-{k}", daemon=True)
                         for k in range(size - 1)]
        for t in self._threads:
            t.start()

    @property
    def busy(self) -> bool:
        """Whether a call is running a job on the pool right now."""
        return bool(self.state[BUSY])

    def close(self, timeout: float = 1.0) -> None:
        """Stop the workers (at exit: the native loop must not outlive its code)."""
        self.state[STOP] = 1
        wake = ctypes.CDLL(None).syscall
        for _ in range(2):
            if _SYS_FUTEX is not None:
                wake(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(self.address + GEN * 8),
                     ctypes.c_int(FUTEX_WAKE_PRIVATE), ctypes.c_int(0x7FFFFFFF))
            for t in self._threads:
                t.join(timeout / 2)


_pools: dict[int, Pool] = {}
_pool_lock = threading.Lock()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(num_threads: int | None) -> int:
    """The pool size for ``num_threads`` (None: ``GALAXIR_NUM_THREADS``, else every
    available core), capped at the available cores (more threads than cores only wait)."""
    from ...errors import CompileError
    n = num_threads
    if n is None:
        env = os.environ.get("GALAXIR_NUM_THREADS", "").strip()
        try:
            n = int(env) if env else 0
        except ValueError:
            raise CompileError(f"GALAXIR_NUM_THREADS must be an integer, got {env!r}") from None
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise CompileError(f"num_threads must be a non-negative integer (0: every core), got {n!r}")
    cores = available_cores()
    return cores if n == 0 else min(int(n), cores)


def pool_of_size(size: int) -> Pool | None:
    """The process-wide pool of ``size`` threads (not capped: tests oversubscribe), or None
    for one thread."""
    if size <= 1:
        return None
    with _pool_lock:
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = Pool(size)
        return pool


def get_pool(num_threads: int | None) -> Pool | None:
    """The shared pool for ``num_threads`` (see ``resolve_threads``), or None on one thread."""
    bind_symbols()
    return pool_of_size(resolve_threads(num_threads))


@atexit.register
def _close_pools() -> None:
    for pool in list(_pools.values()):
        pool.close()
