"""Running lowered modules on a CUDA device with cupy.

Per set of input shapes a ``Program``: the lowered actions (lower.py), one device arena
laid out by the shared memory planner (galaxir/passes/memory.py), the constants uploaded
once, and one ``cupy.RawModule`` holding every generated kernel (NVRTC, cached by cupy by
source hash and architecture).  Inputs are numpy arrays (copied in, outputs copied out) or
device arrays: cupy arrays and DLPack producers such as torch CUDA tensors, read in place
and answered with cupy arrays.  After the first run of a shape whose actions are all on
the device, the run is captured in a CUDA graph and replayed (one launch per run).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import CompileError, ExecutionError, InputValidationError
from ...ir import Module
from ...ir.types import UNKNOWN, DType, TensorType
from ..base import Executable
from .lower import Alias, Blas, Buf, Fallback, Launch, lower_module

MAX_PROGRAMS = 8


def _cupy():
    try:
        import cupy
    except Exception as e:
        raise CompileError("the cuda backend needs cupy: install the 'cuda' extra "
                           f"(cupy-cuda13x); importing it failed: {e}") from None
    return cupy


@dataclass
class Device:
    ordinal: int
    arch: str          # "sm_90"
    cp: Any            # the cupy module


def open_device(ordinal: int | None = None) -> Device:
    """The CUDA device to run on; CompileError when there is no driver or no device."""
    cp = _cupy()
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise CompileError(f"target 'cuda': no usable CUDA driver or device ({e}); kernels can "
                           "still be generated and checked with NVRTC, but running needs a "
                           "GPU (use target='cpu' or 'numpy' here)") from None
    if n < 1:
        raise CompileError("target 'cuda': the CUDA driver reports no device")
    if ordinal is None:
        ordinal = cp.cuda.runtime.getDevice()
    if not isinstance(ordinal, int) or not 0 <= ordinal < n:
        raise CompileError(f"target 'cuda': device {ordinal!r} does not exist ({n} device(s))")
    cc = cp.cuda.Device(ordinal).compute_capability
    return Device(ordinal, f"sm_{cc}", cp)


def storage_dtype(dt: DType) -> np.dtype:
    """The numpy dtype cupy holds ``dt`` as (bfloat16 as its raw 16 bits)."""
    return np.dtype(np.uint16) if dt is DType.bfloat16 else np.dtype(dt.numpy)


def is_device_array(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in (2, 13)  # kDLCUDA, kDLCUDAManaged
        except Exception:
            return False
    return False


_FUNCTIONS: dict[tuple[int, str], Any] = {}
_FN_LOCK = threading.Lock()


def load_kernels(dev: Device, kernels) -> dict[str, Any]:
    """{name: cupy RawKernel} for ``kernels`` on ``dev``; those not loaded yet in this
    process are compiled together in one ``cupy.RawModule`` (one NVRTC call; cupy keeps
    the binary on disk by source hash and architecture)."""
    cp = dev.cp
    with _FN_LOCK:
        missing = {k.name: k for k in kernels if (dev.ordinal, k.name) not in _FUNCTIONS}
        if missing:
            from .nvrtc import OPTIONS, translation_unit
            try:
                mod = cp.RawModule(code=translation_unit(missing.values()), options=OPTIONS,
                                   backend="nvrtc")
                for name in missing:
                    _FUNCTIONS[(dev.ordinal, name)] = mod.get_function(name)
            except Exception as e:
                raise CompileError(f"cuda: compiling or loading the generated kernels for "
                                   f"{dev.arch} failed: {e}") from None
        return {k.name: _FUNCTIONS[(dev.ordinal, k.name)] for k in kernels}


class Program:
    """Everything for one set of concrete input shapes on one device."""

    def __init__(self, module: Module, dev: Device, graphs: bool):
        self.dev = dev
        cp = dev.cp
        self.module = module
        self.low = lower_module(module)
        self.graphs_wanted = graphs
        self.graph = None
        self.graph_note = ""
        self.runs = 0
        self._plan()
        need = self.plan.arena_bytes + sum(a.nbytes for a in self.low.consts.values())
        with cp.cuda.Device(dev.ordinal):
            free, total = cp.cuda.runtime.memGetInfo()
            if need > free:
                raise CompileError(
                    f"cuda: the model needs {need / 2**20:.1f} MiB of device memory (arena "
                    f"{self.plan.arena_bytes / 2**20:.1f} MiB + weights) but device "
                    f"{dev.ordinal} has {free / 2**20:.1f} MiB free of {total / 2**20:.1f} MiB")
            try:
                self.arena = cp.cuda.alloc(max(self.plan.arena_bytes, 256))
                self.consts = {k: cp.asarray(v.view(np.uint16) if v.dtype.name == "bfloat16" else v)
                               for k, v in self.low.consts.items()}
            except cp.cuda.memory.OutOfMemoryError as e:
                raise CompileError(f"cuda: out of device memory placing the model: {e}") from None
            self.err = cp.zeros(1, dtype=np.int32)
            self.functions = load_kernels(dev, self.low.kernels())
            self.stream = cp.cuda.Stream(non_blocking=True)
        self.has_fallback = any(isinstance(a, Fallback) for a in self.low.actions)
        self.checks_err = any(isinstance(a, Launch) and a.kernel.kind == "gather"
                              for a in self.low.actions)

    def _plan(self) -> None:
        ap = plan_arena(self.module, self.low)
        self.plan, self.bufs, self.sizes, self.rootf = ap.plan, ap.bufs, ap.sizes, ap.root

    def view(self, b: Buf, feeds: dict | None = None):
        """A cupy array over ``b``'s storage (a constant, a fed device input or the arena)."""
        cp = self.dev.cp
        if b.key[0] == "const":
            return self.consts[b.key]
        k = self.rootf(b.key)
        if feeds is not None and k in feeds:
            return feeds[k].reshape(b.shape)
        off = self.plan.offset_of(k)
        return cp.ndarray(b.shape, dtype=storage_dtype(b.dtype), memptr=self.arena + off)

    # -- running ---------------------------------------------------------------------------------
    def run(self, inputs: list, device_out: bool) -> list:
        cp = self.dev.cp
        g = self.module.graph
        with cp.cuda.Device(self.dev.ordinal), self.stream:
            feeds: dict = {}
            host: dict[int, Any] = {}
            use_graph = self.graphs_wanted and not self.has_fallback
            for a, x in zip(g.inputs, inputs):
                key = ("val", id(a))
                if isinstance(x, np.ndarray) or key not in self.sizes:
                    host[id(a)] = x  # (device inputs reach fallback ops through their slot)
                if key not in self.sizes:
                    continue
                b = self.bufs[key]
                if isinstance(x, np.ndarray):
                    xs = x.view(np.uint16) if b.dtype is DType.bfloat16 else x
                    self.view(b).set(np.ascontiguousarray(xs), stream=self.stream)
                elif use_graph or not x.flags.c_contiguous:
                    self.view(b)[...] = x
                else:
                    feeds[key] = x
            if self.checks_err:
                self.err.fill(0)
            if use_graph and self.graph is not None:
                self.graph.launch(self.stream)
            elif use_graph and self.runs >= 1 and not self.graph_note:
                self._capture()
                if self.graph is not None:
                    self.graph.launch(self.stream)
                else:
                    self._run_actions(feeds, host)
            else:
                self._run_actions(feeds, host)
            self.runs += 1
            if self.checks_err and int(self.err.get(stream=self.stream)[0]):
                raise ExecutionError("cuda: a gather index is outside its axis "
                                     "(expected -dim <= index < dim)")
            outs = []
            for v in g.outputs:
                k = self.rootf(("val", id(v)))
                if k in self.sizes and (k in feeds or self.plan.buffer_of(k) is not None) \
                        and id(v) not in host:
                    d = self.view(Buf(("val", id(v)), tuple(v.type.shape), v.type.dtype), feeds)
                    if device_out:
                        outs.append(d.copy())
                    else:
                        h = d.get(stream=self.stream)
                        outs.append(h.view(v.type.dtype.numpy) if v.type.dtype is DType.bfloat16 else h)
                else:
                    val = host.get(id(v))
                    if val is None and v.constant_value() is not None:
                        val = np.asarray(v.constant_value())
                    outs.append(cp.asarray(val) if device_out and isinstance(val, np.ndarray) else val)
            self.stream.synchronize()
        return outs

    def _capture(self) -> None:
        """Record the actions into a CUDA graph (kernel launches and cuBLAS calls on the
        arena, whose addresses never change); a failure leaves eager launches in place."""
        try:
            self.stream.begin_capture()
            try:
                self._run_actions({}, {})
            finally:
                graph = self.stream.end_capture()
            self.graph = graph
        except Exception as e:
            self.graph = None
            self.graph_note = f"graph capture failed ({type(e).__name__}: {e}); launching eagerly"

    def _run_actions(self, feeds: dict, host: dict) -> None:
        cp = self.dev.cp
        for i, act in enumerate(self.low.actions):
            if isinstance(act, Launch):
                args = tuple(self.err if b == "err" else self.view(b, feeds) for b in act.args)
                k = act.kernel
                self.functions[k.name](k.grid, k.block, args, shared_mem=k.shared)
            elif isinstance(act, Blas):
                a = self._strided(act.a, act.a_view, feeds)
                b = self._strided(act.b, act.b_view, feeds)
                o = self._strided(act.out, act.out_view, feeds)
                if act.a.dtype is DType.bfloat16:
                    raise ExecutionError("cuda: bfloat16 products use the tiled GEMM kernel")
                cp.matmul(a, b, out=o)
            elif isinstance(act, Fallback):
                self._fallback(i, act, feeds, host)

    def _strided(self, b: Buf, view, feeds):
        shape, strides = view
        base = self.view(b, feeds)
        item = base.dtype.itemsize
        return self.dev.cp.lib.stride_tricks.as_strided(
            base, shape=tuple(shape), strides=tuple(s * item for s in strides))

    def _fallback(self, i: int, act: Fallback, feeds: dict, host: dict) -> None:
        """Run one op on the numpy reference: its device operands come to the host, its
        results go to their arena slots."""
        from ..numpy import Interpreter
        op = act.op
        env: dict[int, Any] = {}
        for v in op.read_values():
            if v is None:
                continue
            if id(v) in host:
                env[id(v)] = host[id(v)]
                continue
            c = v.constant_value()
            if c is not None:
                env[id(v)] = c
                continue
            k = self.rootf(("val", id(v)))
            if k in self.sizes and isinstance(v.type, TensorType):
                d = self.view(Buf(("val", id(v)), tuple(v.type.shape), v.type.dtype), feeds)
                h = d.get(stream=self.stream)
                env[id(v)] = h.view(v.type.dtype.numpy) if v.type.dtype is DType.bfloat16 else h
        interp = getattr(self, "_interp", None)
        if interp is None:
            interp = self._interp = Interpreter(self.module)
        try:
            interp.run_op(op, env)
        except Exception as e:
            raise ExecutionError(f"cuda: op {op.name} on the numpy reference failed: {e}") from e
        for r in op.results:
            val = env.get(id(r))
            host[id(r)] = val
            key = ("val", id(r))
            if key in self.sizes and isinstance(val, np.ndarray) and self.plan.buffer_of(key) is not None:
                b = self.bufs[key]
                if tuple(val.shape) != b.shape:
                    raise ExecutionError(f"cuda: {op.name} on the reference gave shape "
                                         f"{list(val.shape)}, expected {list(b.shape)}")
                xs = val.view(np.uint16) if b.dtype is DType.bfloat16 else val
                self.view(b).set(np.ascontiguousarray(xs.astype(storage_dtype(b.dtype), copy=False)),
                                 stream=self.stream)


@dataclass
class ArenaPlan:
    plan: Any          # galaxir.passes.memory.MemoryPlan
    bufs: dict         # key -> Buf
    sizes: dict        # root key -> bytes
    root: Any          # key -> the key whose storage it shares (views)


def plan_arena(module: Module, low) -> ArenaPlan:
    """The device arena for lowered ``low`` (no device needed): graph inputs, kernel and
    cuBLAS results, temporaries and fallback results each get a slot; views share their
    source's; the shared planner places them (and validates the placement)."""
    from ...passes.memory import Step, plan_schedule
    g = module.graph
    root_map: dict = {}
    sizes: dict = {}
    bufs: dict = {}

    def root(k):
        while k in root_map:
            k = root_map[k]
        return k

    def note(b):
        if isinstance(b, Buf) and b.key[0] != "const":
            sizes[root(b.key)] = max(sizes.get(root(b.key), 0), b.nbytes)
            bufs.setdefault(b.key, b)

    steps = []
    inputs = []
    for a in g.inputs:
        if isinstance(a.type, TensorType) and a.type.shape is not None and \
                all(isinstance(d, int) for d in a.type.shape):
            b = Buf(("val", id(a)), tuple(a.type.shape), a.type.dtype)
            if a.type.dtype in _STORABLE:
                note(b)
                inputs.append(b.key)
    steps.append(Step(inputs, (), name="inputs"))
    for act in low.actions:
        if isinstance(act, Alias):
            root_map[act.dst] = root(act.src)
            steps.append(Step((), (), name="view"))
        elif isinstance(act, Launch):
            for b in act.args:
                note(b)
            ins = [root(b.key) for b, (role, _) in zip(act.args, act.kernel.params)
                   if role == "in" and isinstance(b, Buf) and b.key[0] != "const"]
            outs = [root(b.key) for b, (role, _) in zip(act.args, act.kernel.params)
                    if role == "out" and isinstance(b, Buf) and root(b.key) not in ins]
            steps.append(Step(outs, ins, name=act.kernel.kind))
        elif isinstance(act, Blas):
            for b in (act.a, act.b, act.out):
                note(b)
            ins = [root(b.key) for b in (act.a, act.b) if b.key[0] != "const"]
            steps.append(Step([root(act.out.key)], ins, name="blas"))
        else:
            defs = []
            for r in act.op.results:
                t = r.type
                if isinstance(t, TensorType) and t.shape is not None and t.dtype in _STORABLE \
                        and all(isinstance(d, int) for d in t.shape):
                    b = Buf(("val", id(r)), tuple(t.shape), t.dtype)
                    note(b)
                    defs.append(b.key)
            uses = [root(("val", id(v))) for v in act.op.read_values() if v is not None
                    and root(("val", id(v))) in sizes]
            steps.append(Step(defs, uses, name=act.op.name))
    live_out = [root(("val", id(v))) for v in g.outputs if v is not None
                and root(("val", id(v))) in sizes]
    # every key named in a step must be sized: drop the ones that are not (host values)
    for s in steps:
        s.defs = [k for k in s.defs if k in sizes]
        s.uses = [k for k in s.uses if k in sizes]
    return ArenaPlan(plan_schedule(steps, sizes, live_out=live_out, inplace=False), bufs, sizes, root)



_STORABLE = {DType.float32, DType.float16, DType.bfloat16, DType.float64, DType.int64, DType.int32,
             DType.int16, DType.int8, DType.uint8, DType.uint16, DType.uint32, DType.uint64, DType.bool}


class CudaExecutable(Executable):
    def __init__(self, module: Module, dev: Device, graphs: bool = True):
        super().__init__(module)
        self.dev = dev
        self.graphs = graphs
        self._programs: OrderedDict[tuple, Program] = OrderedDict()
        self._lock = threading.RLock()
        self.last: Program | None = None
        static = {}
        for a in module.graph.inputs:
            t = a.type
            if isinstance(t, TensorType) and t.shape is not None and all(isinstance(d, int) for d in t.shape):
                static[a.name] = tuple(t.shape)
            else:
                static = None
                break
        if static is not None:
            self._program(static)

    def _program(self, shapes: dict) -> Program:
        key = tuple(sorted(shapes.items()))
        p = self._programs.get(key)
        if p is None:
            from .lower import specialize
            p = Program(specialize(self.module, shapes), self.dev, self.graphs)
            self._programs[key] = p
            if len(self._programs) > MAX_PROGRAMS:
                self._programs.popitem(last=False)
        else:
            self._programs.move_to_end(key)
        self.last = p
        return p

    def _check_input(self, i: int, v, bindings: dict[str, int]):
        if is_device_array(v):
            return self._check_device(v, self.input_types[i], self.input_names[i], bindings)
        return super()._check_input(i, v, bindings)

    def _check_device(self, v, t, name, bindings):
        cp = self.dev.cp
        try:
            x = cp.asarray(v) if hasattr(v, "__cuda_array_interface__") else cp.from_dlpack(v)
        except Exception as e:
            raise InputValidationError(f"input '{name}': a device array cupy cannot read: {e}") from None
        if x.device.id != self.dev.ordinal:
            raise InputValidationError(f"input '{name}': on CUDA device {x.device.id}, but the model "
                                       f"was compiled for device {self.dev.ordinal}")
        if not isinstance(t, TensorType):
            raise InputValidationError(f"input '{name}': expected {t}, got a device array")
        want = storage_dtype(t.dtype)
        if x.dtype != want or (t.dtype is DType.uint16 and "bfloat16" in str(getattr(v, "dtype", ""))):
            raise InputValidationError(f"input '{name}': expected dtype {t.dtype.name}, got "
                                       f"{getattr(v, 'dtype', x.dtype)}")
        if t.shape is not None:
            if x.ndim != len(t.shape):
                raise InputValidationError(f"input '{name}': expected rank {len(t.shape)} ({t}), "
                                           f"got shape {list(x.shape)}")
            for axis, (w, h) in enumerate(zip(t.shape, x.shape)):
                if isinstance(w, int) and w != h:
                    raise InputValidationError(f"input '{name}': dim {axis} must be {w} ({t}), "
                                               f"got shape {list(x.shape)}")
                if isinstance(w, str) and w != UNKNOWN and bindings.setdefault(w, h) != h:
                    raise InputValidationError(f"input '{name}': dim {axis} is symbol '{w}', bound "
                                               f"to {bindings[w]} by an earlier input, but is {h} here")
        return x

    def _execute(self, inputs: list) -> list:
        cp = self.dev.cp
        device_out = any(not isinstance(x, np.ndarray) and is_device_array(x) for x in inputs)
        shapes = {a.name: tuple(int(d) for d in x.shape) for a, x in zip(self.module.graph.inputs, inputs)
                  if isinstance(a.type, TensorType) and hasattr(x, "shape")}
        with self._lock:
            p = self._program(shapes)
            try:
                return p.run(inputs, device_out)
            except cp.cuda.memory.OutOfMemoryError as e:
                raise ExecutionError(f"cuda: out of device memory running the model: {e}") from None

    def report(self) -> str:
        if self.last is None:
            return "cuda backend: not specialized yet (symbolic input dims); call it once"
        return placement_report(self.last.low, arena=self.last.plan.arena_bytes,
                                graph=("captured" if self.last.graph is not None else
                                       (self.last.graph_note or "not captured (yet)")))


def placement_report(low, arena: int | None = None, graph: str | None = None) -> str:
    """Where each op ran, grouped: kernels on the device, ops on the numpy reference."""
    on: dict[str, int] = {}
    off: dict[tuple, int] = {}
    for op, where, detail in low.placement:
        if where == "cuda":
            on[f"{op.name} [{detail}]"] = on.get(f"{op.name} [{detail}]", 0) + 1
        else:
            off[(op.name, detail)] = off.get((op.name, detail), 0) + 1
    head = (f"cuda backend: {len(low.placement)} ops ({sum(on.values())} on the device in "
            f"{len(low.kernels())} distinct kernels, {sum(off.values())} on the numpy reference)")
    if arena is not None:
        head += f"; arena {arena / 2**20:.1f} MiB"
    if graph:
        head += f"; CUDA graph: {graph}"
    lines = [head]
    if on:
        lines.append("  device:")
        lines += [f"    {k}: {n}" for k, n in sorted(on.items())]
    lines.append("  numpy fallback:" + ("" if off else " none"))
    lines += [f"    {k}: {n} ({why})" for (k, why), n in sorted(off.items())]
    return "\n".join(lines)
