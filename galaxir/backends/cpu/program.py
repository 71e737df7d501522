"""A compiled specialization: the memory plan (one arena, liveness-based offsets), the LLVM
module with one entry point per native segment, and the runtime loop that calls the
segments and runs fallback ops on the numpy reference in between."""
from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import Any

import llvmlite.ir as ir
import numpy as np

from ...errors import ExecutionError
from ...ir import Module, Operation, Value
from ...ir.opdef import describe
from . import jit
from . import kernels as K
from .codegen import I8P, I64, begin_dynamic, dyn_pointer, dynamic_blocks, dynamic_emission, dynamic_values
from .shapetrace import Traced
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

    def __init__(self, module: Module, cache_dir=None, split: bool = False, inplace: bool = True,
                 dynamic: bool = False, templates: dict | None = None):
        self.module = module
        # dynamic: the module came from symbolic input dims; its LLVM IR reads every
        # shape-dependent integer at run time (codegen.begin_dynamic), so other shapes
        # with the same kernel structure reuse the object code (no LLVM compile)
        self.dynamic = dynamic
        # templates: the executable's dynreuse.Template per kernel structure; a shape whose
        # structure has one takes its object code and computes its shape values from the
        # traced program, emitting no LLVM IR (dynreuse.py)
        self.templates = templates if dynamic else None
        self.inplace = inplace  # elementwise steps may write over an input that dies there
        self.split = split  # one segment per native step (debugging: check each step)
        with dynamic_emission(dynamic):  # lowering and planning see the same kernel choices
            self.steps = lower_module(module)
            self._build_plan()
            self._build_code(cache_dir)

    @classmethod
    def plan_only(cls, module: Module) -> "Specialization":
        """Lower and plan memory for a specialized module without generating code (for
        memory reports and benchmarks: the same plan a compiled specialization executes)."""
        self = cls.__new__(cls)
        self.module = module
        self.dynamic = False
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
        self._plan_direct_outputs(rootv)

    def _plan_direct_outputs(self, rootv: dict[int, Value]) -> None:
        """Graph outputs that native code writes straight into an array made for the call
        (its address in a table slot after the ext slots) and handed to the caller: no copy
        out of the arena.  Each call gets new arrays, so a result the caller holds is never
        written again.  Only outputs of at least DIRECT_MIN_BYTES (below that a copy is
        cheaper than a fresh array and its address) whose root no other graph output shares
        (two results must not share memory); the arena keeps their planned space unused,
        so the plan and its in-place pairs stay as validated.  A dynamic module sends every
        such output direct: a size threshold would make the code differ between shapes."""
        outs = self.module.graph.outputs
        roots = [id(self.root_of(v)) if v is not None else None for v in outs]
        self.out_slot: dict[int, int] = {}     # root id -> table slot
        self._direct: list[tuple | None] = []  # per graph output: (root id, slot, shape, dtype)
        for v, k in zip(outs, roots):
            d = None
            if k is not None and k in self.produced_native and roots.count(k) == 1 \
                    and (self.dynamic or nbytes_of(v) >= DIRECT_MIN_BYTES):
                slot = len(self.slot_value) + 1 + len(self.out_slot)
                self.out_slot[k] = slot
                d = (k, slot, tuple(static_shape(v.type)), v.type.dtype.numpy)
            self._direct.append(d)
        self._direct_index = {d[0]: j for j, d in enumerate(self._direct) if d is not None}
        self.n_slots = len(self.slot_value) + 1 + len(self.out_slot)

    def emit_module(self, stamp=None, trace=None) -> tuple[ir.Module, dict]:
        """The LLVM module: the kernels and one entry point ``gx_seg{k}(table)`` per native
        segment.  ``stamp`` (the profiler's, galaxir/backends/cpu/profile.py) makes timed
        entry points instead: ``stamp(builder, times, j)`` is emitted before the first step
        (j = 0) and after each step; the normal module has no timing code at all.
        ``trace`` (dynreuse.Recorder) is told each emitted kernel and arena offset, and
        gives the traced stand-ins the emission uses instead."""
        mod = ir.Module(name="galaxir")
        mod.triple = jit.target_triple()
        mod.data_layout = jit.target_data_layout()
        if self.dynamic:
            begin_dynamic(mod)
        with dynamic_emission(self.dynamic):
            return self._emit_segments(mod, stamp, trace)

    def arg_offset(self, i: int, j: int) -> int:
        """Arena offset of argument ``j`` of step ``i`` (outputs then inputs; -1: its
        scratch), for an argument that lives in the arena."""
        if j < 0:
            return self.scratch_offset[i]
        s = self.steps[i]
        n = len(s.outputs)
        v = s.outputs[j] if j < n else s.inputs[j - n]
        return self.offset[id(self.root_of(v))]

    def _emit_segments(self, mod: ir.Module, stamp, trace=None) -> tuple[ir.Module, dict]:
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
            offset = _offsets(b, mod)
            if stamp is not None:
                stamp(b, fn.args[1], 0)
            for j, (i, s) in enumerate(seg):
                nargs = len(s.outputs) + len(s.inputs) + (1 if s.kernel.scratch_bytes else 0)
                inplace = i in self.inplace_steps
                # steps with equal kernels share one function (its shape values too); in a
                # dynamic module which steps are equal could depend on the shapes, which
                # costs at most another variant (the IR text differs), never a wrong value
                key = (s.kernel.key(), inplace)
                kf = kernel_fns.get(key)
                if kf is None:
                    kern = s.kernel if trace is None else trace.kernel(i, s.kernel)
                    kf = kern.emit(mod, f"gx_k{len(kernel_fns)}_{s.kernel.name}", nargs)
                    if inplace:  # output and an input share memory: no noalias promise
                        for a in kf.args:
                            a.attributes.discard("noalias")
                    kernel_fns[key] = kf
                args = []
                for jv, v in enumerate(list(s.outputs) + list(s.inputs)):
                    r = self.root_of(v)
                    if id(r) in self.out_slot:  # a graph output in the caller's array
                        p = b.load(b.gep(table, [ir.Constant(I64, self.out_slot[id(r)])], inbounds=True))
                    elif id(r) in self.produced_native:
                        off = self.offset[id(r)]
                        if trace is not None:
                            off = trace.offset(i, jv, off)
                        p = b.gep(base, [offset(off)], inbounds=True)
                    else:
                        p = b.load(b.gep(table, [ir.Constant(I64, self.slot[id(r)])], inbounds=True))
                    args.append(p)
                if s.kernel.scratch_bytes:
                    off = self.scratch_offset[i]
                    if trace is not None:
                        off = trace.offset(i, -1, off)
                    args.append(b.gep(base, [offset(off)], inbounds=True))
                args = [b.bitcast(a, t.type) for a, t in zip(args, kf.args)]
                rc = b.call(kf, args)
                if s.kernel.fallible:
                    with b.if_then(b.icmp_signed("!=", rc, ir.Constant(I64, 0)), likely=False):
                        b.ret(ir.Constant(I64, i + 1))
                if stamp is not None:
                    stamp(b, fn.args[1], j + 1)
            b.ret(ir.Constant(I64, 0))
        return mod, kernel_fns

    @classmethod
    def planned(cls, module: Module, dynamic: bool = False) -> "Specialization":
        """Lowered, planned and cut into segments, without code (what a dynamic module's
        compile at ``gx.compile`` traces and checks before it runs LLVM, dynreuse.warm)."""
        self = cls.__new__(cls)
        self.module, self.dynamic, self.templates = module, dynamic, None
        self.inplace, self.split = True, False
        with dynamic_emission(dynamic):
            self.steps = lower_module(module)
            self._build_plan()
        self._cut_segments()
        return self

    # -- code -------------------------------------------------------------------------------
    def _build_code(self, cache_dir) -> None:
        self._cut_segments()
        self._code_from(cache_dir)

    def _cut_segments(self) -> None:
        """``segments`` (runs of native steps) and ``seq``, the runtime program."""
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

    def _code_from(self, cache_dir) -> None:
        """The object code (a template's, or emitted and compiled), loaded and bound."""
        from . import dynreuse
        reused = None
        if self.templates is not None and self.segments:
            reused = dynreuse.reuse(self, self.templates)
        self.reused = reused is not None
        if reused is not None:  # no LLVM IR emitted: the structure's object code
            tpl, values = reused
            self.llvm_ir, self.n_kernels = tpl.llvm_ir, tpl.n_kernels
            obj, self.cache_source = tpl.obj, "memory"
        else:
            values = None
            if self.templates is not None and self.segments:
                # the first shape of a structure: emitted once more, traced (values: None
                # when the trace failed and the module was emitted plainly)
                mod, kernel_fns, self.llvm_ir, values = dynreuse.emit_traced(self)
            else:
                mod, kernel_fns = self.emit_module()
                self.llvm_ir = str(mod)
            self.n_kernels = len(kernel_fns)
            if self.segments:
                obj, self.cache_source = jit.compile_ir(self.llvm_ir, cache_dir)
                dynreuse.keep(self, obj)
        if self.segments:
            self.object_bytes = len(obj)
            self.loaded = jit.LoadedObject(obj)
            if values is not None:
                self._dyn_data = bind_values(self.loaded, *values)
            else:
                self._dyn_data = bind_dynamic(self.loaded, mod)
            proto = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)
            self.entries = [proto(self.loaded.address(f"gx_seg{k}")) for k in range(len(self.segments))]
            self.pool_slot = self.loaded.global_address("gx_pool")
        else:
            self.cache_source = "none"
            self.pool_slot = 0
            self.loaded = None
            self.entries = []
        self._bind = None  # the per-call plan, made at the first call (_prepare_run)
        self._free: list[CallState] = []
        self._free_lock = threading.Lock()
        self._table = (ctypes.c_void_p * self.n_slots)()  # fixed entries
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
        """Precompute what each call needs, once (so a call does no Python work per op:
        see ``_prepare_run``); the memory itself is per call (``CallState``)."""
        if self._bind is None:
            self._prepare_run()

    def _prepare_run(self) -> None:
        """Per-call plan, computed once: for each graph input its table slot and (when it is
        small) the shape of an aligned staging buffer whose address each call's table holds
        for good, so binding it is one copy instead of an address lookup
        (``ndarray.ctypes.data`` costs ~2 us); whether any op runs on numpy."""
        g = self.module.graph
        self._in_values = list(g.inputs)
        bind: list[tuple[int | None, tuple | None]] = []
        for a in g.inputs:
            slot = self.slot.get(id(a))
            stage = None
            shape = static_shape(a.type) if slot is not None else None
            if shape is not None and nbytes_of(a) <= STAGE_MAX_BYTES:
                stage = (tuple(shape), a.type.dtype.numpy)
            bind.append((slot, stage))
        self._all_native = all(kind == "native" for kind, _ in self.seq)
        self._native_outputs = self._all_native and all(
            v is not None and id(self.root_of(v)) in self.produced_native
            for v in g.outputs)
        # data the native steps touch: below POOL_MIN_BYTES waking the workers costs more
        # than splitting can save (parallel loops then run inline on the calling thread)
        self.work_bytes = 0
        for s in self.steps:
            if isinstance(s, NativeStep):
                for v in list(s.outputs) + list(s.inputs):
                    self.work_bytes += v.array.nbytes if isinstance(v, ConstArray) else nbytes_of(v)
        self._pool_set: dict[int, int | None] = {}
        self._bind = bind

    def new_call(self) -> "CallState":
        """Fresh memory for one call: arena, pointer table, staging buffers."""
        self._ensure_arena()
        return CallState(self)

    @contextmanager
    def call_state(self):
        """A call's memory, from a small free list (a new one when every state is in use:
        concurrent calls never share an arena and never wait for one)."""
        with self._free_lock:
            c = self._free.pop() if self._free else None
        if c is None:
            c = self.new_call()
        try:
            yield c
        finally:
            with self._free_lock:
                if len(self._free) < MAX_FREE_CALLS:
                    self._free.append(c)

    def view(self, v: Value, call: "CallState") -> np.ndarray:
        """The arena view (in ``call``'s arena) holding natively produced value ``v``."""
        j = self._direct_index.get(id(self.root_of(v)))
        if j is not None:  # a graph output written into the call's own array
            arr = call.direct[j]
            if arr is None:
                arr = self._new_direct(call, j)
            return arr.reshape(static_shape(v.type))
        arr = call.views.get(id(v))
        if arr is None:
            r = self.root_of(v)
            shape = static_shape(v.type)
            dt = v.type.dtype.numpy
            nb = nbytes_of(v)
            off = self.offset[id(r)]
            arr = call.arena[off:off + nb].view(dt).reshape(shape)
            call.views[id(v)] = arr
        return arr

    def _new_direct(self, call: "CallState", j: int, into: np.ndarray | None = None) -> np.ndarray:
        """Graph output j's array for this call (``into``, a caller's out= buffer, or a new
        one), its address put in the call's table."""
        _, slot, shape, dtype = self._direct[j]
        arr = np.empty(shape, dtype) if into is None else into
        call.direct[j] = arr
        call.table[slot] = arr.ctypes.data
        return arr

    def _bind_outputs(self, call: "CallState", inputs, out=None) -> None:
        """Arrays for this call's direct outputs (``_plan_direct_outputs``).  A caller's out=
        buffer is written in place when it has the output's exact shape and dtype, is
        C-contiguous and element-aligned and shares no memory with an input (a kernel may
        read an input after it has written part of its output) or another out= buffer; otherwise the result goes
        to a new array and is copied into it after the run."""
        for j, d in enumerate(self._direct):
            if d is None:
                continue
            o = out[j] if out is not None else None
            if o is not None and not (
                    isinstance(o, np.ndarray) and o.shape == d[2] and o.dtype == d[3]
                    and o.flags.c_contiguous and o.flags.writeable and o.flags.aligned
                    and not any(isinstance(x, np.ndarray) and np.may_share_memory(o, x)
                                for x in inputs)
                    and not any(q is not None and q is not o and np.may_share_memory(o, q)
                                for q in out)):
                o = None
            self._new_direct(call, j, o)

    def _take_direct(self, call: "CallState", j: int, o) -> np.ndarray:
        """Hand graph output j's array to the caller (copied into ``o`` when it was not
        written there) and forget it, so the call state never holds a returned result."""
        arr = call.direct[j]
        call.direct[j] = None
        if o is None or o is arr:
            return arr
        return _into(o, arr)

    def run(self, inputs: list[Any], interp, pool=None, out: list | None = None) -> list[Any]:
        """Run on validated inputs; ``out`` (one array or None per graph output) receives
        outputs in place of fresh copies."""
        self._ensure_arena()
        self.use_pool(pool, self.pool_slot)
        with self.call_state() as call:
            return self._run(call, inputs, interp, out)

    def use_pool(self, pool, pool_slot: int) -> None:
        """Point the loaded code's ``gx_pool`` (at ``pool_slot``) at ``pool``, or at nothing
        when this specialization has too little work to split (its parallel loops then run
        inline).  Safe while other threads run this code: the pool itself refuses a second
        job at a time (``gx_parallel_for_s``), so a stale pointer costs speed, not results."""
        if not pool_slot:
            return
        addr = pool.address if pool is not None and self.work_bytes >= POOL_MIN_BYTES else None
        if addr != self._pool_set.get(pool_slot):  # set only when it changes
            ctypes.c_void_p.from_address(pool_slot).value = addr
            self._pool_set[pool_slot] = addr

    def _run(self, call: "CallState", inputs, interp, out=None):
        if self._native_outputs:  # every op native: no per-op Python work at all
            keep = []  # copies made for native code must live until it has run
            table = call.table
            for x, (slot, _), stage in zip(inputs, self._bind, call.stages):
                if stage is not None:
                    stage[...] = x
                elif slot is not None:
                    x = _native_ready(x)
                    keep.append(x)
                    table[slot] = x.ctypes.data
            if self.out_slot:
                self._bind_outputs(call, inputs, out)
            addr = call.table_addr
            for entry in self.entries:
                failed = entry(addr)
                if failed:
                    self._failed(failed)
            if not self.out_slot:
                if out is None:
                    return [v.copy() for v in call.out_views]
                return [v.copy() if o is None else _into(o, v) for v, o in zip(call.out_views, out)]
            if out is None:
                out = [None] * len(self._direct)
            return [self._take_direct(call, j, o) if v is None else
                    (v.copy() if o is None else _into(o, v))
                    for j, (v, o) in enumerate(zip(call.out_views, out))]
        ext = self._bind_inputs(call, inputs, out)
        for kind, item in self.seq:
            if kind == "native":
                self._call_segment(call, item)
            else:
                self._run_fallback(call, item, ext, interp)
        return self._outputs(call, ext, out)

    def _bind_inputs(self, call: "CallState", inputs, out=None) -> dict[int, Any]:
        """Put the inputs where native code reads them, and the direct outputs' arrays where
        it writes them; returns the values by id for the fallback ops."""
        if self.out_slot:
            self._bind_outputs(call, inputs, out)
        ext: dict[int, Any] = {}
        for a, x, (slot, _), stage in zip(self._in_values, inputs, self._bind, call.stages):
            if stage is not None:
                stage[...] = x
            elif slot is not None:
                x = _native_ready(x)
                call.table[slot] = x.ctypes.data
            ext[id(a)] = x
        return ext

    def _call_segment(self, call: "CallState", k: int) -> None:
        failed = self.entries[k](call.table_addr)
        if failed:
            self._failed(failed)

    def _failed(self, code: int) -> None:
        """A segment returned ``code`` (1 + the index of the step whose kernel refused its
        input): raise the error naming that op."""
        step = self.steps[code - 1]
        raise ExecutionError(f"{describe(step.ops[0])}: {step.kernel.failure()}")

    def _run_fallback(self, call: "CallState", step: FallbackStep, ext: dict[int, Any],
                      interp) -> None:
        op = step.op
        env = {}
        for v in op.read_values():
            env[id(v)] = self._materialize(call, v, ext)
        interp.run_op(op, env)
        for r in op.results:
            x = env.get(id(r))
            if isinstance(x, np.ndarray) and call.arena.size \
                    and np.may_share_memory(x, call.arena):
                x = x.copy()
            slot = self.slot.get(id(r))
            if slot is not None:
                x = _native_ready(x, static_shape(r.type))
                call.table[slot] = x.ctypes.data
            ext[id(r)] = x

    def _outputs(self, call: "CallState", ext: dict[int, Any], out=None) -> list[Any]:
        outs = []
        for k, v in enumerate(self.module.graph.outputs):
            o = out[k] if out is not None else None
            if v is None:
                outs.append(None)
                continue
            r = self.root_of(v)
            if self._direct[k] is not None:
                outs.append(self._take_direct(call, k, o))
            elif id(r) in self.produced_native:
                x = self.view(v, call)
                outs.append(x.copy() if o is None else _into(o, x))
            else:
                x = self._materialize(call, v, ext)
                outs.append(x if o is None else _into(o, x))
        return outs

    def _materialize(self, call: "CallState", v: Value, ext: dict[int, Any]) -> Any:
        r = self.root_of(v)
        if id(r) in self.produced_native:
            return self.view(v, call)
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

#: free call states a specialization keeps (more are made while more calls run at once)
MAX_FREE_CALLS = 4

#: graph outputs of at least this size are written into a new array per call and handed
#: over (``Specialization._plan_direct_outputs``); smaller ones are copied out of the arena
#: (measured: a fresh array and its address cost ~1.2 us, a copy of 64 KiB ~0.8 us)
DIRECT_MIN_BYTES = 64 << 10

#: inputs up to this size are copied into a staging buffer (one memcpy is cheaper than
#: asking numpy for the array's address); larger ones are passed in place
STAGE_MAX_BYTES = 32 << 10


class CallState:
    """The memory of one running call: its arena, its pointer table (the fixed entries
    copied from the specialization's), its input staging buffers, its output views.  Calls
    at the same time each hold their own, so they never wait for each other."""

    __slots__ = ("arena", "table", "table_addr", "stages", "views", "out_views", "direct", "_raw")

    def __init__(self, spec: Specialization):
        try:
            raw = np.empty(spec.arena_size + ALIGN, np.uint8)
        except (MemoryError, ValueError) as e:
            raise ExecutionError(f"cpu backend: cannot allocate the {spec.arena_size} byte "
                                 f"arena for these input shapes: {e}") from None
        off = (-raw.ctypes.data) % ALIGN
        self._raw = raw
        self.arena = raw[off:off + spec.arena_size]
        n = len(spec._table)
        self.table = (ctypes.c_void_p * n)()
        ctypes.memmove(self.table, spec._table, ctypes.sizeof(self.table))
        self.table[0] = self.arena.ctypes.data if spec.arena_size else raw.ctypes.data
        self.table_addr = ctypes.addressof(self.table)
        self.stages = []
        for slot, stage in spec._bind:
            arr = None
            if stage is not None:
                arr = _aligned_empty(*stage)
                self.table[slot] = arr.ctypes.data
            self.stages.append(arr)
        self.views: dict[int, np.ndarray] = {}
        #: per graph output: this call's array for a direct output (None between calls)
        self.direct: list[np.ndarray | None] = [None] * len(spec._direct)
        self.out_views = None
        if spec._native_outputs:  # None where the output is direct
            self.out_views = [None if d is not None else spec.view(v, self)
                              for v, d in zip(spec.module.graph.outputs, spec._direct)]


def _offsets(b: ir.IRBuilder, mod: ir.Module):
    """``offset(v)`` for a segment entry: the constant arena offset ``v``, or in a dynamic
    module its run-time slot (the slots' base loaded once, here at the entry)."""
    if dynamic_values(mod) is None:
        return lambda v: ir.Constant(I64, v)
    dbase = b.load(dyn_pointer(mod))

    def offset(v):
        vals = dynamic_values(mod)
        vals.append(v if isinstance(v, Traced) else int(v))
        return b.load(b.gep(dbase, [ir.Constant(I64, len(vals) - 1)], inbounds=True))
    return offset


def bind_dynamic(loaded, mod: ir.Module) -> np.ndarray | None:
    """Give a loaded dynamic module its shape values: ``bind_values`` with
    ``dynamic_values(mod)`` and ``dynamic_blocks(mod)`` (None: a static module)."""
    vals = dynamic_values(mod)
    if vals is None:
        return None
    return bind_values(loaded, vals, dynamic_blocks(mod))


def bind_values(loaded, vals, blocks: dict) -> np.ndarray:
    """Point a loaded dynamic module's ``gx_dynp`` at an int64 array of ``vals``
    (returned: keep it alive with the loaded code) and fill its parameter blocks (name ->
    values).  Each specialization loads its own copy of the object code (cheap: no LLVM
    compile), so calls with different shapes never share these globals."""
    data = np.asarray(vals if len(vals) else [0], np.int64)
    slot = loaded.global_address("gx_dynp")
    if slot:
        ctypes.c_void_p.from_address(slot).value = data.ctypes.data
    for name, block in blocks.items():
        addr = loaded.global_address(name)
        if not addr:
            raise ExecutionError(f"cpu backend: parameter block {name} missing from the object code")
        arr = np.asarray(block, np.int64)
        ctypes.memmove(addr, arr.ctypes.data, arr.nbytes)
    return data


def _into(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Copy ``src`` into the caller's buffer ``dst`` (dtype checked by the executable; a
    symbolic output's shape is known only now)."""
    src = np.asarray(src)
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise ExecutionError(f"out=: an output is {src.dtype}{list(src.shape)}, its buffer "
                             f"{dst.dtype}{list(dst.shape)}")
    np.copyto(dst, src, casting="no")
    return dst


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
