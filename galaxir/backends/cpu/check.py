"""``galaxir bisect --target cpu`` beyond the passes: each native kernel of the cpu
backend checked against the numpy reference on the same inputs.

The module is prepared and specialized as ``compile`` does, lowered with one segment per
native step (``Specialization(split=True)``), and the reference computes every value.
Each step then runs alone on the reference's values of its inputs, so a kernel is
judged by itself (an error upstream cannot hide or fake one).  The first step whose
output differs is named: its kernel, the ops it implements and their source nodes.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...ir import Module
from ...ir.types import TensorType
from .lower import ConstArray, NativeStep, static_shape
from ...passes.memory import specialize_types as specialize
from .prepare import prepare
from .program import Specialization, _native_ready


def first_bad_kernel(module: Module, feeds: Mapping[str, Any], rtol: float, atol: float,
                     cache_dir=None, dynamic: bool = False) -> str | None:
    """None when every native kernel matches the reference, else which one does not
    (``dynamic``: the kernels as a module with symbolic input dims emits them)."""
    from ...passes.bisect import compare_outputs
    from ..numpy import Interpreter
    m = prepare(module)
    shapes = {a.name: tuple(np.shape(feeds[a.name])) for a in m.graph.inputs
              if isinstance(a.type, TensorType) and a.name in feeds}
    m = specialize(m, shapes)
    interp = Interpreter(m)
    ref: dict[int, Any] = {}
    for a in m.graph.inputs:
        ref[id(a)] = feeds[a.name]
    with np.errstate(all="ignore"):
        for op in m.graph.block:
            if not op.is_terminator:
                interp.run_op(op, ref)
    spec = Specialization(m, cache_dir, split=True, dynamic=dynamic)
    if not spec.segments:
        return None
    call = spec.new_call()  # this check's own arena and pointer table
    keep = []
    for k, v in enumerate(spec.slot_value, start=1):
        if isinstance(v, ConstArray) or (v.producer is not None and v.producer.name == "constant"):
            continue
        x = _native_ready(np.asarray(ref[id(v)]), static_shape(v.type))
        keep.append(x)
        call.table[k] = x.ctypes.data
    for k, seg in enumerate(spec.segments):
        (_, step), = seg
        for v in step.inputs:
            if isinstance(v, ConstArray):
                continue
            r = spec.root_of(v)
            if id(r) in spec.produced_native:
                spec.view(r, call)[...] = np.asarray(ref[id(r)]).reshape(spec.view(r, call).shape)
        spec._call_segment(call, k)
        for v in step.outputs:
            got = spec.view(v, call).copy()
            why = compare_outputs([v.name or "%result"], [np.asarray(ref[id(v)])], [got], rtol, atol)
            if why is not None:
                return _describe(step, why)
    return None


def _op_label(op) -> str:
    """``op``'s name; a fused loop's also lists the ops of its region."""
    if op.name != "fused_elementwise" or not op.regions:
        return op.name
    inner = [o.name for o in op.regions[0].block if not o.is_terminator and o.name != "constant"]
    return f"fused_elementwise({'+'.join(inner)})"


def _describe(step: NativeStep, why: str) -> str:
    ops = "+".join(_op_label(op) for op in step.ops)
    src = sorted({p for op in step.ops for p in op.provenance})
    where = f" (from {', '.join(src)})" if src else ""
    return f"native kernel '{step.kernel.name}' for {ops}{where} differs from the reference: {why}"
