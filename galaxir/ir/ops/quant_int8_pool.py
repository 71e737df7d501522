"""Global average pooling on a quantized tensor: what the cpu backend makes of
``DequantizeLinear -> global_average_pool / reduce_mean over the spatial axes ->
QuantizeLinear`` (galaxir/passes/qdq_pool.py), so a QDQ CNN stays in 8 bits up to its
classifier.  The mean is taken exactly (an integer sum) and requantized once, as
onnxruntime's QLinearGlobalAveragePool does; the float QDQ graph rounds its float32 mean
first, so the two differ by at most one quantization step."""
from __future__ import annotations

import numpy as np

from ..opdef import FLOATS, attr, define
from ..types import TensorType
from .quant import INT8S
from .rules import fail, tensor_operand


def avg_factor(x_scale, y_scale, n: int) -> float:
    """The requantization factor ``x_scale / (y_scale * n)`` in float64: the numpy
    reference and the native kernel both use it, so they agree bit for bit."""
    sx = float(np.asarray(x_scale, np.float64).reshape(()))
    sy = float(np.asarray(y_scale, np.float64).reshape(()))
    return sx / (sy * float(n))


def _infer(op):
    x = tensor_operand(op, 0)
    out = tensor_operand(op, 4).dtype
    if x.shape is None:
        return [TensorType(out, None)]
    if len(x.shape) < 3:
        raise fail(op, f"x must have spatial axes (rank >= 3), got {x}")
    tail = (1,) * (len(x.shape) - 2) if op.attr("keepdims") else ()
    return [TensorType(out, tuple(x.shape[:2]) + tail)]


define("int8_global_average_pool",
       operands=["x", "x_scale", "x_zero_point", "y_scale", "y_zero_point"],
       attrs={"keepdims": attr("int", 1)}, infer=_infer,
       types={"x": ("T1", INT8S), "x_zero_point": "T1", "x_scale": ("TS", FLOATS),
              "y_scale": "TS", "y_zero_point": ("T2", INT8S)},
       doc="quantize(mean over the spatial axes of dequantize(x)) with per-tensor scales: "
           "clamp(rint(sum(x - x_zero_point) * x_scale / (y_scale * n)) + y_zero_point); "
           "keepdims=0 drops the spatial axes.")
