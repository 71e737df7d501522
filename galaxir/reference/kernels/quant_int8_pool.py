"""Reference kernel of int8_global_average_pool (galaxir/ir/ops/quant_int8_pool.py)."""
from __future__ import annotations

import numpy as np

from ...ir.ops.quant_int8_pool import avg_factor
from ..registry import kernel
from .quant import _requantize


@kernel("int8_global_average_pool")
def int8_global_average_pool(ctx, x, x_scale, x_zp, y_scale, y_zp):
    axes = tuple(range(2, x.ndim))
    n = int(np.prod([x.shape[a] for a in axes]))
    acc = (x.astype(np.int64) - np.asarray(x_zp).astype(np.int64)).sum(axis=axes,
                                                                         keepdims=True)
    y = _requantize(acc, avg_factor(x_scale, y_scale, n), y_zp, ctx.result_dtype(0))
    return y if ctx.attr("keepdims", 1) else y.reshape(x.shape[:2])
