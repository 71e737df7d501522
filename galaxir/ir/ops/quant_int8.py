"""Fused int8 conv / matmul / add: what the cpu backend makes of a QDQ
``DequantizeLinear -> conv/matmul/gemm (+ bias) (-> relu/clip) -> QuantizeLinear`` chain
(galaxir/passes/qdq.py), and of ``DequantizeLinear x2 -> add (-> relu) -> QuantizeLinear``.  The operands are QLinearConv's (x, x_scale, x_zero_point,
w, w_scale, w_zero_point, y_scale, y_zero_point, bias?); the int32 accumulator is
requantized as QLinearConv does and then clamped to ``[clamp_lo, clamp_hi]`` (in the
quantized domain: a folded relu or clip), so every backend can run them."""
from __future__ import annotations

from ..opdef import INT32, attr, define
from ..types import TensorType
from .quant import CONV_ATTRS, INT8S, _qlinear_types, conv_shape, matmul_shape
from .rules import broadcast_shapes, fail, tensor_operand

_CLAMP = {"clamp_lo": attr("int"), "clamp_hi": attr("int")}


def _int8_conv(op):
    x, w = tensor_operand(op, 0), tensor_operand(op, 3)
    return [TensorType(tensor_operand(op, 7).dtype, conv_shape(op, x, w))]


define("int8_conv", operands=["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point",
                              "y_scale", "y_zero_point", "bias?"],
       attrs={**CONV_ATTRS, **_CLAMP}, infer=_int8_conv,
       types={**_qlinear_types("x", "w"), "y_scale": "TS", "bias": INT32},
       doc="qlinear_conv, then clamp to [clamp_lo, clamp_hi] (a folded relu / clip).")


def _int8_matmul(op):
    a, b = tensor_operand(op, 0), tensor_operand(op, 3)
    if b.shape is not None and len(b.shape) != 2:
        raise fail(op, f"the weights must be 2-d, got {b}")
    return [TensorType(tensor_operand(op, 7).dtype, matmul_shape(op, a, b))]


define("int8_matmul", operands=["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point",
                                "y_scale", "y_zero_point", "bias?"],
       attrs=dict(_CLAMP), infer=_int8_matmul,
       types={**_qlinear_types("a", "b"), "y_scale": "TS", "bias": INT32},
       doc="qlinear_matmul with an int32 bias (per column) added to the accumulator, then "
           "clamp to [clamp_lo, clamp_hi].")


def _int8_add(op):
    a, b = tensor_operand(op, 0), tensor_operand(op, 3)
    return [TensorType(tensor_operand(op, 7).dtype, broadcast_shapes(a.shape, b.shape))]


define("int8_add", operands=["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point",
                             "y_scale", "y_zero_point"],
       attrs=dict(_CLAMP), infer=_int8_add,
       types={**_qlinear_types("a", "b"), "y_scale": "TS"},
       doc="quantize(dequantize(a) + dequantize(b)) (numpy broadcasting, per-tensor scales), "
           "in float32 exactly as the QDQ graph computes it, then clamp to "
           "[clamp_lo, clamp_hi] (a folded relu).")


def _dynamic_qmatmul(op):
    x, w = tensor_operand(op, 0), tensor_operand(op, 1)
    if w.shape is not None and len(w.shape) != 2:
        raise fail(op, f"the weights must be 2-d, got {w}")
    return [TensorType(x.dtype, matmul_shape(op, x, w))]


define("dynamic_qmatmul", operands=["x", "w", "w_scale", "w_zero_point", "bias?"],
       infer=_dynamic_qmatmul, types={"w": ("T1", INT8S), "w_zero_point": "T1"},
       doc="Dynamic quantization's matmul in one op (galaxir/passes/qdq_dynamic.py): x "
           "quantized as dynamic_quantize_linear does, matmul_integer with w - w_zero_point "
           "(int32), then float32: acc * (x_scale * w_scale) (+ bias), as the graph "
           "``cast(matmul_integer(...)) * (x_scale * w_scale) + bias`` computes it.")
