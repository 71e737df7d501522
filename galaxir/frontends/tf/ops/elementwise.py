"""Elementwise TF ops: arithmetic, comparisons, activations, casts."""
from __future__ import annotations

import numpy as np

from ..importer import TfContext, converter, gx_dtype

_BINARY = {"Add": "add", "AddV2": "add", "Sub": "sub", "Mul": "mul", "RealDiv": "div",
           "Div": "div", "Pow": "pow", "Less": "less", "LessEqual": "less_or_equal",
           "Greater": "greater", "GreaterEqual": "greater_or_equal", "Equal": "equal",
           "LogicalAnd": "and", "LogicalOr": "or"}
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
          "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Erf": "erf", "Floor": "floor",
          "Ceil": "ceil", "Sin": "sin", "Cos": "cos", "Reciprocal": "reciprocal",
          "Inv": "reciprocal", "Sign": "sign", "Softplus": "softplus", "Softsign": "softsign",
          "Elu": "elu", "Selu": "selu", "LogicalNot": "not", "Round": "round"}


def _binary(gx_name: str):
    def convert(ctx: TfContext):
        return ctx.op(gx_name, ctx.inputs[0], ctx.inputs[1])
    return convert


def _unary(gx_name: str):
    def convert(ctx: TfContext):
        return ctx.op(gx_name, ctx.inputs[0])
    return convert


for _tf, _gx in _BINARY.items():
    converter(_tf)(_binary(_gx))
for _tf, _gx in _UNARY.items():
    converter(_tf)(_unary(_gx))


@converter("Maximum")
def maximum(ctx: TfContext):
    return ctx.op("max", ctx.inputs[0], ctx.inputs[1])


@converter("Minimum")
def minimum(ctx: TfContext):
    return ctx.op("min", ctx.inputs[0], ctx.inputs[1])


@converter("AddN")
def add_n(ctx: TfContext):
    return ctx.op("sum", *ctx.inputs) if len(ctx.inputs) > 1 else ctx.inputs[0]


@converter("NotEqual")
def not_equal(ctx: TfContext):
    return ctx.op("not", ctx.op("equal", ctx.inputs[0], ctx.inputs[1]))


@converter("Rsqrt")
def rsqrt(ctx: TfContext):
    return ctx.op("reciprocal", ctx.op("sqrt", ctx.inputs[0]))


@converter("Square")
def square(ctx: TfContext):
    return ctx.op("mul", ctx.inputs[0], ctx.inputs[0])


@converter("SquaredDifference")
def squared_difference(ctx: TfContext):
    d = ctx.op("sub", ctx.inputs[0], ctx.inputs[1])
    return ctx.op("mul", d, d)


@converter("FloorDiv")
def floor_div(ctx: TfContext):
    a, b = ctx.inputs
    q = ctx.op("div", a, b)
    if a.type.dtype.is_float:
        return ctx.op("floor", q)
    # integer floor division from truncating division: a - mod(a, b) is divisible by b
    return ctx.op("div", ctx.op("sub", a, ctx.op("mod", a, b)), b)


@converter("FloorMod")
def floor_mod(ctx: TfContext):
    fmod = 1 if ctx.inputs[0].type.dtype.numpy.kind == "f" else 0
    if fmod:  # float: x - floor(x / y) * y
        a, b = ctx.inputs
        return ctx.op("sub", a, ctx.op("mul", ctx.op("floor", ctx.op("div", a, b)), b))
    return ctx.op("mod", ctx.inputs[0], ctx.inputs[1], fmod=0)


@converter("Relu6")
def relu6(ctx: TfContext):
    dt = ctx.inputs[0].type.dtype.numpy
    return ctx.op("clip", ctx.inputs[0], ctx.const(0, dt), ctx.const(6, dt))


@converter("LeakyRelu")
def leaky_relu(ctx: TfContext):
    return ctx.op("leaky_relu", ctx.inputs[0], alpha=float(ctx.attr("alpha", 0.2)))


@converter("ClipByValue")
def clip_by_value(ctx: TfContext):
    return ctx.op("clip", *ctx.inputs[:3])


@converter("Cast")
def cast(ctx: TfContext):
    to = gx_dtype(ctx.tf_op.get_attr("DstT"))
    x = ctx.inputs[0]
    return x if x.type.dtype == to else ctx.op("cast", x, to=to)


@converter("Select", "SelectV2")
def select(ctx: TfContext):
    c, x, y = ctx.inputs
    if ctx.type == "Select" and c.type.shape is not None and x.type.shape is not None and \
            len(c.type.shape) == 1 and len(x.type.shape) > 1:  # Select: c picks rows
        c = ctx.op("reshape", c, ctx.i64([-1] + [1] * (len(x.type.shape) - 1)))
    return ctx.op("where", c, x, y)


@converter("BiasAdd")
def bias_add(ctx: TfContext):
    x, bias = ctx.inputs
    if ctx.attr("data_format", "NHWC") == "NCHW" and x.type.shape is not None and len(x.type.shape) > 2:
        bias = ctx.op("reshape", bias, ctx.i64([-1] + [1] * (len(x.type.shape) - 2)))
    return ctx.op("add", x, bias)


@converter("ZerosLike", "OnesLike")
def zeros_like(ctx: TfContext):
    x = ctx.inputs[0]
    one = np.asarray(1 if ctx.type == "OnesLike" else 0, dtype=x.type.dtype.numpy)
    return ctx.op("expand", ctx.const(one), ctx.op("shape", x))


@converter("Erfc")
def erfc(ctx: TfContext):
    x = ctx.inputs[0]
    return ctx.op("sub", ctx.const(1, x.type.dtype.numpy), ctx.op("erf", x))
