"""The shared partitioner: a backend runs the ops it declares (``Backend.capabilities``),
the numpy reference runs the rest.

``compile_partitioned`` cuts the module's top-level ops into runs of consecutive ops the
backend supports (native segments, each compiled by the backend as a module of its own)
and single ops it does not (run by the numpy interpreter in between).  ``gx.compile``
uses it for every backend whose capabilities leave an op of the module out; a backend
that runs every op (cpu, numpy) gets the whole module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedOpError
from ..ir import Graph, Module, Operation, Value
from ..ir.clone import clone_op
from ..ir.opdef import describe
from .base import Backend, Capabilities, Executable


@dataclass
class Segment:
    """Consecutive ops the backend runs, compiled as one module of their own."""

    ops: list[Operation]
    inputs: list[Value]        # values of the parent module the segment reads, in order
    outputs: list[Value]       # values it produces that later steps or the outputs read
    module: Module
    exe: Executable | None = None


def needs_partition(module: Module, caps: Capabilities) -> bool:
    """Does ``module`` hold an op the backend does not run?"""
    return any(not op.is_terminator and not caps.supports(op) for op in module.walk())


def split(module: Module, caps: Capabilities) -> list[Operation | Segment]:
    """The top-level schedule: Segments (native) and Operations (on the reference).
    Constants go with the segment that reads them when the backend runs ``constant``, else
    they are fed to it as inputs."""
    block = module.graph.block
    ops = [op for op in block if not op.is_terminator]
    const_native = caps.supports("constant")
    steps: list[Any] = []
    run: list[Operation] = []
    for op in ops:
        if op.name == "constant":
            continue
        if _native(op, caps):
            run.append(op)
        else:
            if run:
                steps.append(run)
                run = []
            steps.append(op)
    if run:
        steps.append(run)
    later_reads = _readers(module)
    out: list[Any] = []
    for i, s in enumerate(steps):
        if isinstance(s, Operation):
            out.append(s)
        else:
            out.append(_segment(s, later_reads, const_native, len(out)))
    return out


def _native(op: Operation, caps: Capabilities) -> bool:
    return caps.supports(op) and all(caps.supports(inner) for r in op.regions
                                     for inner in r.walk() if not inner.is_terminator)


def _readers(module: Module) -> dict[int, list[Operation]]:
    """value id -> the top-level ops that read it (nested reads count for their top op);
    the terminator counts as a reader (graph outputs)."""
    readers: dict[int, list[Operation]] = {}
    for op in module.graph.block:
        for v in op.read_values():
            if v is not None:
                readers.setdefault(id(v), []).append(op)
    return readers


def _segment(ops: list[Operation], readers, const_native: bool, index: int) -> Segment:
    inside = {id(r) for op in ops for r in op.results}
    members = {id(op) for op in ops}
    inputs: list[Value] = []
    consts: list[Value] = []
    seen: set[int] = set()
    for op in ops:
        for v in op.read_values():
            if v is None or id(v) in inside or id(v) in seen:
                continue
            seen.add(id(v))
            p = v.producer
            if const_native and p is not None and p.name == "constant" and p.parent is op.parent:
                consts.append(v)
            else:
                inputs.append(v)
    outputs = [r for op in ops for r in op.results
               if any(id(u) not in members for u in readers.get(id(r), []))]
    g = Graph()
    mapping: dict[int, Value] = {}
    used: set[str] = set()
    for i, v in enumerate(inputs):
        mapping[id(v)] = g.add_input(_unique(v.name or f"in{i}", used), v.type)
    for c in consts:
        g.block.append(clone_op(c.producer, mapping))
    for op in ops:
        g.block.append(clone_op(op, mapping))
    g.block.append(Operation("return", [mapping[id(v)] for v in outputs]))
    g.output_names = [_unique(v.name or f"out{i}", used) for i, v in enumerate(outputs)]
    return Segment(ops, inputs, outputs, Module(g, f"segment{index}"))


def _unique(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.]", "_", str(name)) or "v"
    out, k = base, 1
    while out in used:
        out, k = f"{base}_{k}", k + 1
    used.add(out)
    return out


def compile_partitioned(module: Module, backend: Backend, **options: Any) -> Executable:
    """The backend's executable for ``module``, partitioned when it does not run every op."""
    caps = backend.capabilities()
    if not needs_partition(module, caps):
        return backend.compile(module, **options)
    from .numpy.registry import get_kernel
    schedule = split(module, caps)
    for s in schedule:
        if isinstance(s, Operation):
            missing = [op for op in [s, *s.walk()] if not op.is_terminator
                       and get_kernel(op.name) is None]
            if missing:
                raise UnsupportedOpError(
                    f"{describe(missing[0])}: backend '{backend.name}' does not run "
                    f"'{missing[0].name}' and the numpy reference has no kernel for it")
        else:
            s.exe = backend.compile(s.module, **options)
    return PartitionedExecutable(module, backend.name, schedule)


def first_bad_segment(module: Module, backend: Backend, feeds, rtol: float, atol: float) -> str | None:
    """Each native segment, compiled by ``backend``, run on the reference's values of its
    inputs: None when all agree, else the first that differs (its ops and source nodes)."""
    import numpy as np

    from ..passes.bisect import compare_outputs
    from .numpy import Interpreter
    caps = backend.capabilities()
    schedule = split(module, caps) if needs_partition(module, caps) else None
    interp = Interpreter(module)
    ref: dict[int, Any] = {id(a): feeds[a.name] for a in module.graph.inputs}
    with np.errstate(all="ignore"):
        for op in module.graph.block:
            if not op.is_terminator:
                interp.run_op(op, ref)
    if schedule is None:  # the backend runs the whole module: one segment
        got = backend.compile(module)(*[feeds[a.name] for a in module.graph.inputs])
        want = [ref[id(v)] for v in module.graph.outputs]
        why = compare_outputs(module.graph.output_names, want, list(got), rtol, atol)
        return None if why is None else f"backend '{backend.name}' differs from the reference: {why}"
    for k, s in enumerate(schedule):
        if isinstance(s, Operation):
            continue
        got = backend.compile(s.module)(*[ref[id(v)] for v in s.inputs])
        why = compare_outputs([v.name or "%result" for v in s.outputs],
                              [ref[id(v)] for v in s.outputs], list(got), rtol, atol)
        if why is not None:
            ops = "+".join(op.name for op in s.ops)
            src = sorted({p for op in s.ops for p in op.provenance})
            where = f" (from {', '.join(src)})" if src else ""
            return (f"native segment #{k} of backend '{backend.name}' ({ops}){where} differs "
                    f"from the reference: {why}")
    return None


class PartitionedExecutable(Executable):
    """Native segments (the backend's executables) and reference ops, in schedule order."""

    def __init__(self, module: Module, target: str, schedule: list):
        super().__init__(module)
        from ..ir.mapped import detach_constants, has_file_backed_constants
        from .numpy import Interpreter
        self.target = self.target_name = target
        self.schedule = schedule
        self._interp = Interpreter(module)
        if has_file_backed_constants(module):
            detach_constants(module)  # the executable owns its weights
        self._consts: dict[int, Any] = {}
        for op in module.graph.block:
            if op.name == "constant":
                self._interp.run_op(op, self._consts)

    @property
    def segments(self) -> list[Segment]:
        return [s for s in self.schedule if isinstance(s, Segment)]

    def _execute(self, inputs: list[Any]) -> list[Any]:
        env = dict(self._consts)
        env.update(zip((id(a) for a in self.module.graph.inputs), inputs))
        for s in self.schedule:
            self._step(s, env)
        return [None if v is None else env[id(v)] for v in self.module.graph.outputs]

    def _step(self, s, env: dict[int, Any]) -> None:
        if isinstance(s, Operation):
            self._interp.run_op(s, env)
        else:
            outs = s.exe(*[env[id(v)] for v in s.inputs])
            env.update(zip((id(v) for v in s.outputs), outs))

    def report(self) -> str:
        native: dict[str, int] = {}
        ref: dict[str, int] = {}
        for s in self.schedule:
            if isinstance(s, Segment):
                for op in s.ops:
                    native[op.name] = native.get(op.name, 0) + 1
            else:
                ref[s.name] = ref.get(s.name, 0) + 1
        segs = self.segments
        lines = [f"{self.target} backend: {sum(native.values()) + sum(ref.values())} ops "
                 f"({sum(native.values())} native in {len(segs)} native segment(s), "
                 f"{sum(ref.values())} on the numpy reference)"]
        lines.append("  native:")
        lines += [f"    {n}: {k}" for n, k in sorted(native.items())] or ["    none"]
        lines.append("  numpy fallback:")
        lines += [f"    {n}: {k} (not in the backend's capabilities)" for n, k in sorted(ref.items())] \
            or ["    none"]
        return "\n".join(lines)

    def kernel_steps(self, inputs: list[Any]):
        """Each reference op as one step, and inside each native segment the steps its
        executable reports (``kernel_steps``: the cpu's kernels, a plugin's ops), else
        the segment as one step.  One untimed run first gives each segment the inputs
        its kernels are described for (their shapes pick e.g. the cpu's specialization)."""
        from .profile import StepTiming, run_units, shapes_label, timed, value_label
        env = dict(self._consts)
        env.update(zip((id(a) for a in self.module.graph.inputs), inputs))
        steps: list[StepTiming] = []
        parts = []  # per schedule item: (its step indices, its segment's own plan or None)
        for s in self.schedule:
            first = len(steps)
            if isinstance(s, Segment):
                plan = s.exe.kernel_steps([env[id(v)] for v in s.inputs])
                if plan is None:
                    steps.append(StepTiming(first, value_label(s.outputs), "segment",
                                            [op.name for op in s.ops], "native", self.target,
                                            shapes_label(s.inputs, s.outputs)))
                else:
                    for k, st in enumerate(plan[0]):
                        st.index = first + k
                        steps.append(st)
            else:
                plan = None
                steps.append(StepTiming(first, value_label(s.results), s.name, [s.name], "numpy",
                                        "numpy", shapes_label(s.read_values(), s.results)))
            parts.append((list(range(first, len(steps))), plan))
            self._step(s, env)

        def segment_unit(s: Segment, plan, indices, env):
            def run(now):
                seg_in = [env[id(v)] for v in s.inputs]
                if len(plan) > 2:  # it runs on this run's inputs and keeps its outputs
                    got = run_units(plan[1](seg_in), now)
                    outs = plan[2]()
                else:  # described for these inputs, run again (untimed) for the outputs
                    got = run_units(s.exe.kernel_steps(seg_in)[1](), now)
                    outs = s.exe(*seg_in)
                env.update(zip((id(v) for v in s.outputs), outs))
                return [got.get(k, (0, 0)) for k in range(len(indices))]
            return indices, run

        def start_run():
            env = dict(self._consts)
            env.update(zip((id(a) for a in self.module.graph.inputs), inputs))
            units = []
            for s, (indices, plan) in zip(self.schedule, parts):
                if plan is None:
                    units.append((indices, timed(lambda s=s: self._step(s, env))))
                else:
                    units.append(segment_unit(s, plan, indices, env))
            return units
        return steps, start_run


__all__ = ["Segment", "split", "needs_partition", "compile_partitioned", "PartitionedExecutable",
           "first_bad_segment"]
