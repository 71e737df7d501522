"""Lowering of int8_global_average_pool (kernels_int8_pool.QGlobalAvgPool).

Imported at the end of lower.py."""
from __future__ import annotations

import numpy as np

from ...ir.ops.quant_int8_pool import avg_factor
from ...ir.types import DType
from ...passes.qdq import check_scale, check_zero_point
from .kernels_int8_pool import QGlobalAvgPool
from .lower import const_of, rule, static_shape
from .lower_quant import Q8, _dt


@rule("int8_global_average_pool")
def lower_qgap(op):
    x, y = op.operands[0], op.results[0]
    xs = static_shape(x.type)
    if _dt(x) not in Q8 or _dt(y) not in Q8:
        return "uint8 / int8 tensors only"
    if xs is None or len(xs) < 3:
        return "x must be static with spatial axes"
    arrs = []
    for i in (1, 2, 3, 4):
        c = const_of(op.operands[i])
        if c is None or np.asarray(c).size != 1:
            return "per-tensor constant scales and zero points only"
        arrs.append(np.asarray(c).reshape(()))
    sx, zx, sy, zy = arrs
    check_scale(op, "x_scale", sx)
    check_scale(op, "y_scale", sy)
    check_zero_point(op, "x zero point", zx, np.dtype(x.type.dtype.numpy))
    n = int(np.prod(xs[2:]))
    planes = xs[0] * xs[1]
    if n == 0 or planes == 0:
        return "zero-size tensor"
    lo, hi = (-128, 127) if _dt(y) is DType.int8 else (0, 255)
    return QGlobalAvgPool(planes=planes, n=n, x_signed=_dt(x) is DType.int8, zx=int(zx),
                          factor=avg_factor(sx, sy, n), zy=int(zy), lo=lo, hi=hi), [x]
