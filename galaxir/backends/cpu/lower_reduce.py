"""Lowering rules for reduce ops (kernels in kernels_reduce.py).

Imported at the end of lower.py: the ``rule`` decorator registers into lower.RULES.
Anything a rule cannot handle returns a reason and the op runs on the numpy reference.

Float32 in and out, static shapes, and axes that are absent or a constant operand (data
dependent axes run on the numpy reference).  An empty axes list reduces every axis, or
with ``noop_with_empty_axes`` copies the input, as the numpy reference does.
"""
from __future__ import annotations

import numpy as np

from ...ir.ops.reduce import REDUCTIONS
from . import kernels as K
from . import kernels_reduce as KR
from .lower import const_of, is_f32, is_static, rule, static_shape


@rule(*REDUCTIONS)
def lower_reduce(op):
    x, y = op.operands[0], op.results[0]
    for v in (x, y):
        if not is_f32(v):
            dt = getattr(v.type, "dtype", None)
            return f"dtype {dt.name if dt is not None else v.type} (native kernels are float32)"
    axes_v = op.operand(1)
    axes: list[int] = []
    if axes_v is not None:
        c = const_of(axes_v)
        if c is None:
            return "axes not constant"
        axes = [int(a) for a in np.asarray(c).reshape(-1)]
    if not (is_static(x) and is_static(y)):
        return "shape not static"
    xs = static_shape(x.type)
    rank = len(xs)
    if not axes:
        if op.attr("noop_with_empty_axes"):
            return K.Copy(nbytes=K.prod(xs) * 4), [x]
        axes = list(range(rank))
    norm = {a + rank if a < 0 else a for a in axes}
    if len(norm) != len(axes) or not all(0 <= a < rank for a in norm):
        return f"axes {axes} invalid for rank {rank}"
    dims, reduced = KR.collapse_reduction(xs, [i in norm for i in range(rank)])
    return KR.Reduce(kind=op.name[len("reduce_"):], shape=dims, reduced=reduced), [x]
