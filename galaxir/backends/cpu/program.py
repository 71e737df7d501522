"""A compiled specialization: the memory plan (one arena, liveness-based offsets), the LLVM
module with one entry point per native segment, and the runtime loop that calls the
segments and runs fallback ops on the numpy reference in between."""
from __future__ import annotations

import ctypes
from contextlib import contextmanager
from typing import Any

import llvmlite.ir as ir
import numpy as np

from ...errors import ExecutionError
from ...ir import Module, Operation, Value
from ...ir.opdef import describe
from . import jit
from . import kernels as K
from .codegen import I8P, I64
from .lower import AliasStep, ConstArray, FallbackStep, NativeStep, lower_module, nbytes_of, static_shape

#: the cpu backend's arena alignment (a cache line; the AVX-512 loads want 64 bytes): the
#: shared memory planner (galaxir/passes/memory.py) places every buffer on it
ALIGN = 64


def plan_offsets(buffers) -> int:
    """Place ``buffers`` (galaxir.passes.memory.Buffer) in one arena; returns its size."""
    from ...passes.memory import place
    return place(list(buffers), align=ALIGN)[0]


class Specialization:
    """Everything for one set of concrete input shapes."""

    def __init__(self, module: Module, cache_dir=None, split: bool = False, inplace: bool = True):
        self.module = module
        self.inplace = inplace  # elementwise steps may write over an input that dies there
        self.split = split  # one segment per native step (debugging: check each step)
        self.steps = lower_module(module)
        self._build_plan()
        self._build_code(cache_dir)

    @classmethod
    def plan_only(cls, module: Module) -> "Specialization":
        """Lower and plan memory for a specialized module without generating code (for
        memory reports and benchmarks: the same plan a compiled specialization executes)."""
        self = cls.__new__(cls)
        self.module = module
        self.inplace = True
        self.split = False
        self.steps = lower_module(module)
        self._build_plan()
        return self

    # -- planning ---------------------------------------------------------------------------
    def _build_plan(self) -> None:
        """Liveness over the steps, in-place elementwise steps, and the arena offsets, by
        the O3 memory planner (galaxir/passes/memory.py); the plan is validated."""
        from ...passes.memory import Step, plan_schedule
        steps = self.steps
        g = self.module.graph
        self.root: dict[int, Value] = {}

        def root_of(v):
            return self.root.get(id(v), v)

        produced_native: set[int] = set()
        rootv: dict[int, Value] = {}
        for s in steps:
            if isinstance(s, AliasStep):
                self.root[id(s.result)] = root_of(s.source)
            elif isinstance(s, NativeStep):
                for v in s.outputs:
                    produced_native.add(id(v))
                    rootv[id(v)] = v
        self.root_of = root_of
        sched: list[Step] = []
        for i, s in enumerate(steps):
            if isinstance(s, NativeStep):
                uses = [id(root_of(v)) for v in s.inputs if not isinstance(v, ConstArray)]
                pairs = []
                if self.inplace and isinstance(s.kernel, K.Elementwise) and len(s.outputs) == 1:
                    out = s.outputs[0]
                    oshape = tuple(s.kernel.out_shape)
                    bad = {id(root_of(v)) for v, shp in zip(s.inputs, s.kernel.in_shapes)
                           if not isinstance(v, ConstArray) and tuple(shp) != oshape}
                    for v in s.inputs:
                        if isinstance(v, ConstArray):
                            continue
                        r = root_of(v)
                        # every read of r must walk it like the output (same shape, no view
                        # broadcast), so element i is read before element i is written
                        if id(r) in produced_native and id(r) not in bad \
                                and v.type.dtype == out.type.dtype:
                            pairs.append((id(out), id(r)))
                sched.append(Step([id(v) for v in s.outputs], uses, pairs,
                                  scratch=s.kernel.scratch_bytes or 0, name=s.kernel.name))
            elif isinstance(s, FallbackStep):
                sched.append(Step((), [id(root_of(v)) for v in s.op.read_values()], name=s.op.name))
            else:
                sched.append(Step((), (), name="view"))
        sizes = {k: nbytes_of(v) for k, v in rootv.items()}
        names = {k: (v.name or f"%{v.producer.name if v.producer else '?'}") for k, v in rootv.items()}
        live_out = [id(root_of(v)) for v in g.outputs if v is not None]
        # the validator runs on every plan (CompileError naming the buffers if unsound)
        self.plan = plan_schedule(sched, sizes, live_out=live_out, names=names,
                                  inplace=self.inplace, align=ALIGN)
        self.arena_size = self.plan.arena_bytes
        self.buffers = self.plan.buffers
        self.offset = {k: b.offset for k, b in self.plan.assignment.items()}
        self.scratch_offset = {b.key[1]: b.offset for b in self.buffers if b.kind == "scratch"}
        self.inplace_steps = {i for i, _, _ in self.plan.inplace}
        self.produced_native = produced_native
        # ext slots: values not in the arena that native code reads
        self.slot: dict[int, int] = {}
        self.slot_value: list[Value] = []
        for s in steps:
            if isinstance(s, NativeStep):
                for v in s.inputs:
                    r = root_of(v)
                    if id(r) not in produced_native and id(r) not in self.slot:
                        self.slot[id(r)] = len(self.slot_value) + 1
                        self.slot_value.append(r)

    def emit_module(self, stamp=None) -> tuple[ir.Module, dict]:
        """The LLVM module: the kernels and one entry point ``gx_seg{k}(table)`` per native
        segment.  ``stamp`` (the profiler's, galaxir/backends/cpu/profile.py) makes timed
        entry points instead: ``stamp(builder, times, j)`` is emitted before the first step
        (j = 0) and after each step; the normal module has no timing code at all."""
        mod = ir.Module(name="galaxir")
        mod.triple = jit.target_triple()
        mod.data_layout = jit.target_data_layout()
        kernel_fns: dict[tuple, ir.Function] = {}
        table_t = I8P.as_pointer()
        for k, seg in enumerate(self.segments):
            # returns 0, or 1 + the index of the step whose kernel refused its input
            if stamp is None:
                fn = ir.Function(mod, ir.FunctionType(I64, [table_t]), f"gx_seg{k}")
            else:
                fn = ir.Function(mod, ir.FunctionType(I64, [table_t, I64.as_pointer()]),
                                 f"gx_seg{k}_timed")
            fn.attributes.add("nounwind")
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            table = fn.args[0]
            base = b.load(table)
            if stamp is not None:
                stamp(b, fn.args[1], 0)
            for j, (i, s) in enumerate(seg):
                nargs = len(s.outputs) + len(s.inputs) + (1 if s.kernel.scratch_bytes else 0)
                inplace = i in self.inplace_steps
                key = (s.kernel.key(), inplace)
                kf = kernel_fns.get(key)
                if kf is None:
                    kf = s.kernel.emit(mod, f"gx_k{len(kernel_fns)}_{s.kernel.name}", nargs)
                    if inplace:  # output and an input share memory: no noalias promise
                        for a in kf.args:
                            a.attributes.discard("noalias")
                    kernel_fns[key] = kf
                args = []
                for v in list(s.outputs) + list(s.inputs):
                    r = self.root_of(v)
                    if id(r) in self.produced_native:
                        p = b.gep(base, [ir.Constant(I64, self.offset[id(r)])], inbounds=True)
                    else:
                        p = b.load(b.gep(table, [ir.Constant(I64, self.slot[id(r)])], inbounds=True))
                    args.append(p)
                if s.kernel.scratch_bytes:
                    args.append(b.gep(base, [ir.Constant(I64, self.scratch_offset[i])], inbounds=True))
                args = [b.bitcast(a, t.type) for a, t in zip(args, kf.args)]
                rc = b.call(kf, args)
                if s.kernel.fallible:
                    with b.if_then(b.icmp_signed("!=", rc, ir.Constant(I64, 0)), likely=False):
                        b.ret(ir.Constant(I64, i + 1))
                if stamp is not None:
                    stamp(b, fn.args[1], j + 1)
            b.ret(ir.Constant(I64, 0))
        return mod, kernel_fns

    # -- code -------------------------------------------------------------------------------
    def _build_code(self, cache_dir) -> None:
        self.segments: list[list[NativeStep]] = []
        seq: list[Any] = []  # runtime program: ("native", segment index) | ("fallback", step)
        cur: list[NativeStep] | None = None
        for i, s in enumerate(self.steps):
            if isinstance(s, NativeStep):
                if cur is None or self.split:
                    cur = []
                    self.segments.append(cur)
                    seq.append(("native", len(self.segments) - 1))
                cur.append((i, s))
            elif isinstance(s, FallbackStep):
                cur = None
                seq.append(("fallback", s))
        self.seq = seq
        mod, kernel_fns = self.emit_module()
        self.llvm_ir = str(mod)
        self.n_kernels = len(kernel_fns)
        if self.segments:
            obj, self.cache_source = jit.compile_ir(self.llvm_ir, cache_dir)
            self.loaded = jit.LoadedObject(obj)
            proto = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)
            self.entries = [proto(self.loaded.address(f"gx_seg{k}")) for k in range(len(self.segments))]
            self.pool_slot = self.loaded.global_address("gx_pool")
        else:
            self.cache_source = "none"
            self.pool_slot = 0
            self.loaded = None
            self.entries = []
        self._arena = None
        self._table = (ctypes.c_void_p * (len(self.slot_value) + 1))()
        self._fixed: list[Any] = []
        for k, v in enumerate(self.slot_value, start=1):
            if isinstance(v, ConstArray):
                arr = _native_ready(v.array)
                self._fixed.append(arr)
                self._table[k] = arr.ctypes.data
                continue
            p = v.producer
            if p is not None and p.name == "constant":
                arr = _native_ready(np.asarray(p.attrs["value"]))
                self._fixed.append(arr)
                self._table[k] = arr.ctypes.data

    # -- running ----------------------------------------------------------------------------
    def _ensure_arena(self) -> None:
        """Allocate the arena and the input staging buffers once, and precompute what each
        call needs (so a call does no Python work per op: see ``_prepare_run``)."""
        if self._arena is None:
            try:
                raw = np.empty(self.arena_size + ALIGN, np.uint8)
            except (MemoryError, ValueError) as e:
                raise ExecutionError(f"cpu backend: cannot allocate the {self.arena_size} byte "
                                     f"arena for these input shapes: {e}") from None
            off = (-raw.ctypes.data) % ALIGN
            self._views: dict[int, np.ndarray] = {}
            self._arena = raw[off:off + self.arena_size]
            self._table[0] = self._arena.ctypes.data if self.arena_size else raw.ctypes.data
            self._prepare_run()

    def _prepare_run(self) -> None:
        """Per-call plan, computed once: for each graph input its table slot and (when it is
        small) an aligned staging buffer whose address is in the table for good, so binding
        it is one copy instead of an address lookup (``ndarray.ctypes.data`` costs ~2 us);
        the arena views of the outputs; whether any op runs on numpy."""
        g = self.module.graph
        self._in_values = list(g.inputs)
        self._bind: list[tuple[int | None, np.ndarray | None]] = []
        for a in g.inputs:
            slot = self.slot.get(id(a))
            stage = None
            shape = static_shape(a.type) if slot is not None else None
            if shape is not None and nbytes_of(a) <= STAGE_MAX_BYTES:
                stage = _aligned_empty(shape, a.type.dtype.numpy)
                self._fixed.append(stage)
                self._table[slot] = stage.ctypes.data
            self._bind.append((slot, stage))
        self._all_native = all(kind == "native" for kind, _ in self.seq)
        self._out_views = None
        if self._all_native and all(v is not None and id(self.root_of(v)) in self.produced_native
                                    for v in g.outputs):
            self._out_views = [self.view(v) for v in g.outputs]
        self._table_addr = ctypes.addressof(self._table)
        # data the native steps touch: below POOL_MIN_BYTES waking the worker thread costs
        # more than splitting can save (its tasks then run inline on the calling thread)
        self.work_bytes = 0
        for s in self.steps:
            if isinstance(s, NativeStep):
                for v in list(s.outputs) + list(s.inputs):
                    self.work_bytes += v.array.nbytes if isinstance(v, ConstArray) else nbytes_of(v)
        self._pool_set: dict[int, int | None] = {}

    def view(self, v: Value) -> np.ndarray:
        """The arena view holding natively produced value ``v``."""
        arr = self._views.get(id(v))
        if arr is None:
            r = self.root_of(v)
            shape = static_shape(v.type)
            dt = v.type.dtype.numpy
            nb = nbytes_of(v)
            off = self.offset[id(r)]
            arr = self._arena[off:off + nb].view(dt).reshape(shape)
            self._views[id(v)] = arr
        return arr

    def run(self, inputs: list[Any], interp, pool=None) -> list[Any]:
        if self._arena is None:
            self._ensure_arena()
        with self.pool_for_call(pool, self.pool_slot):
            return self._run(inputs, interp)

    @contextmanager
    def pool_for_call(self, pool, pool_slot: int):
        """Point the loaded code's ``gx_pool`` (at ``pool_slot``) at ``pool`` for one call,
        or at nothing (parallel loops then run inline on the calling thread).  One call at a
        time owns a pool: a call takes it only when it has enough work and no other thread's
        call holds it (``Pool.try_acquire``, never waiting), so concurrent calls of different
        executables run side by side on their own threads (docs/reliability.md)."""
        owned = bool(pool_slot) and pool is not None and self.work_bytes >= POOL_MIN_BYTES \
            and pool.try_acquire()
        try:
            if pool_slot:
                addr = pool.address if owned else None
                if addr != self._pool_set.get(pool_slot):  # set only when it changes
                    ctypes.c_void_p.from_address(pool_slot).value = addr
                    self._pool_set[pool_slot] = addr
            yield owned
        finally:
            if owned:
                pool.release()

    def _run(self, inputs, interp):
        if self._out_views is not None:  # every op native: no per-op Python work at all
            keep = []  # copies made for native code must live until it has run
            for x, (slot, stage) in zip(inputs, self._bind):
                if stage is not None:
                    stage[...] = x
                elif slot is not None:
                    x = _native_ready(x)
                    keep.append(x)
                    self._table[slot] = x.ctypes.data
            addr = self._table_addr
            for entry in self.entries:
                failed = entry(addr)
                if failed:
                    self._failed(failed)
            return [v.copy() for v in self._out_views]
        ext = self._bind_inputs(inputs)
        for kind, item in self.seq:
            if kind == "native":
                self._call_segment(item)
            else:
                self._run_fallback(item, ext, interp)
        return self._outputs(ext)

    def _bind_inputs(self, inputs) -> dict[int, Any]:
        """Put the inputs where native code reads them; returns the values by id for the
        fallback ops."""
        ext: dict[int, Any] = {}
        for a, x, (slot, stage) in zip(self._in_values, inputs, self._bind):
            if stage is not None:
                stage[...] = x
            elif slot is not None:
                x = _native_ready(x)
                self._table[slot] = x.ctypes.data
            ext[id(a)] = x
        return ext

    def _call_segment(self, k: int) -> None:
        failed = self.entries[k](self._table_addr)
        if failed:
            self._failed(failed)

    def _failed(self, code: int) -> None:
        """A segment returned ``code`` (1 + the index of the step whose kernel refused its
        input): raise the error naming that op."""
        step = self.steps[code - 1]
        raise ExecutionError(f"{describe(step.ops[0])}: {step.kernel.failure()}")

    def _run_fallback(self, step: FallbackStep, ext: dict[int, Any], interp) -> None:
        op = step.op
        env = {}
        for v in op.read_values():
            env[id(v)] = self._materialize(v, ext)
        interp.run_op(op, env)
        for r in op.results:
            x = env.get(id(r))
            if isinstance(x, np.ndarray) and self._arena is not None and self._arena.size \
                    and np.may_share_memory(x, self._arena):
                x = x.copy()
            slot = self.slot.get(id(r))
            if slot is not None:
                x = _native_ready(x, static_shape(r.type))
                self._table[slot] = x.ctypes.data
            ext[id(r)] = x

    def _outputs(self, ext: dict[int, Any]) -> list[Any]:
        outs = []
        for v in self.module.graph.outputs:
            if v is None:
                outs.append(None)
                continue
            r = self.root_of(v)
            if id(r) in self.produced_native:
                outs.append(self.view(v).copy())
            else:
                outs.append(self._materialize(v, ext))
        return outs

    def _materialize(self, v: Value, ext: dict[int, Any]) -> Any:
        r = self.root_of(v)
        if id(r) in self.produced_native:
            return self.view(v)
        if id(r) in ext:
            x = ext[id(r)]
        elif r.producer is not None and r.producer.name == "constant":
            x = r.producer.attrs["value"]
        else:
            raise ExecutionError(f"cpu backend: value {v!r} was not computed")
        if r is not v:
            x = np.asarray(x).reshape(static_shape(v.type))
        return x

    # -- reporting --------------------------------------------------------------------------
    def placement(self) -> list[tuple[Operation, str, str]]:
        """(op, where, detail) for every op of the specialized module."""
        out = []
        for s in self.steps:
            if isinstance(s, NativeStep):
                for op in s.ops:
                    out.append((op, "native", s.kernel.name))
            elif isinstance(s, AliasStep):
                out.append((s.op, "native", "view"))
            else:
                out.append((s.op, "numpy", s.reason))
        return out


#: a specialization whose native steps touch less data than this runs on the calling
#: thread alone (a kernel's tasks run inline when the pool's worker is not woken)
POOL_MIN_BYTES = 256 << 10

#: inputs up to this size are copied into a staging buffer (one memcpy is cheaper than
#: asking numpy for the array's address); larger ones are passed in place
STAGE_MAX_BYTES = 32 << 10


def _aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialized C-contiguous array of ``shape`` whose data is ALIGN-byte aligned."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + n].view(dtype).reshape(shape)


def _native_ready(x: Any, shape=None) -> np.ndarray:
    """A C-contiguous array whose data is aligned for its element type (copied if not)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if shape is not None and x.shape != tuple(shape):
        raise ExecutionError(f"cpu backend: a fallback op produced shape {list(x.shape)}, "
                             f"expected {list(shape)}")
    if not x.flags.c_contiguous or x.ctypes.data % max(x.dtype.itemsize, 1) or x.dtype.hasobject:
        if x.dtype.hasobject:
            raise ExecutionError("cpu backend: object arrays cannot enter native code")
        y = np.empty(x.shape, x.dtype)
        y[...] = x
        x = y
    return x
