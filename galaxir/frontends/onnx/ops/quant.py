"""Converters for the quantization ops: QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv."""
from __future__ import annotations

from ....ir.types import DType
from ..importer import converter, simple


def _dtype_attr(ctx, name: str) -> DType | None:
    code = ctx.attr(name, 0)
    if not code:
        return None
    try:
        return DType.from_onnx(int(code))
    except ValueError:
        raise ctx.unsupported(f"attribute {name}={code} is not a known element type") from None


@converter("QuantizeLinear")
def quantize_linear(ctx):
    # Every version is a subset of the newest: opset 10 is per-tensor (axis unused),
    # 13 adds axis, 19 saturate, 21 block_size/output_dtype, 23 precision.
    kw = {k: ctx.attrs[k] for k in ("axis", "saturate", "block_size") if k in ctx.attrs}
    return [ctx.op("quantize_linear", *ctx.inputs, output_dtype=_dtype_attr(ctx, "output_dtype"),
                   precision=_dtype_attr(ctx, "precision"), **kw)]


@converter("DequantizeLinear")
def dequantize_linear(ctx):
    kw = {k: ctx.attrs[k] for k in ("axis", "block_size") if k in ctx.attrs}
    return [ctx.op("dequantize_linear", *ctx.inputs, output_dtype=_dtype_attr(ctx, "output_dtype"), **kw)]


@converter("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx):
    return list(ctx.op("dynamic_quantize_linear", ctx.inputs[0]))


simple("MatMulInteger", "matmul_integer")
simple("ConvInteger", "conv_integer")
simple("QLinearMatMul", "qlinear_matmul")
simple("QLinearConv", "qlinear_conv")
