"""Converters for elementwise ONNX ops (math, activations, arithmetic, logic, cast, clip,
dropout).

Old opset forms become the newest semantics here: ``consumed_inputs`` is dropped, the
opset < 7 ``broadcast``/``axis`` attributes become an explicit reshape of the second
operand, Clip's min/max attributes and Dropout's ratio become constant operands, Cast's
string ``to`` becomes a dtype, and CastLike becomes a cast to its second input's dtype.
"""
from __future__ import annotations

import numpy as np
import onnx

from ....ir.types import DType, TensorType
from ..importer import converter

_LEGACY = ("consumed_inputs",)

UNARY = {
    "Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
    "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil", "Round": "round",
    "Sign": "sign", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos",
    "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Tanh": "tanh", "Asinh": "asinh",
    "Acosh": "acosh", "Atanh": "atanh", "Erf": "erf", "Relu": "relu", "Sigmoid": "sigmoid",
    "Softplus": "softplus", "Softsign": "softsign", "BitwiseNot": "bitwise_not", "Not": "not",
    "IsNaN": "isnan", "IsInf": "isinf", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "LeakyRelu": "leaky_relu", "HardSigmoid": "hard_sigmoid", "HardSwish": "hard_swish",
    "ThresholdedRelu": "thresholded_relu", "Mish": "mish", "Gelu": "gelu", "Swish": "swish",
    "Shrink": "shrink",
}

BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Mod": "mod",
    "BitShift": "bit_shift", "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or",
    "BitwiseXor": "bitwise_xor", "And": "and", "Or": "or", "Xor": "xor", "Equal": "equal",
    "Less": "less", "LessOrEqual": "less_or_equal", "Greater": "greater",
    "GreaterOrEqual": "greater_or_equal",
}

VARIADIC = {"Max": "max", "Min": "min", "Sum": "sum", "Mean": "mean"}


def _attrs(ctx, drop=()) -> dict:
    return {k: v for k, v in ctx.attrs.items() if k not in _LEGACY and k not in drop}


def _unary(gx_name: str):
    def convert(ctx):
        x = ctx.inputs[0]
        return [ctx.op(gx_name, x, **_attrs(ctx, drop=("is_test",)))]
    return convert


for _onnx, _gx in UNARY.items():
    converter(_onnx)(_unary(_gx))


def _legacy_broadcast(ctx, a, b):
    """Opset < 7 binary ops: with broadcast=1 and ``axis``, b's dims line up with a's dims
    from ``axis`` on; align them for numpy-style broadcasting by appending 1-dims."""
    if not ctx.attrs.get("broadcast") or "axis" not in ctx.attrs:
        return b
    at, bt = a.type, b.type
    if not (isinstance(at, TensorType) and isinstance(bt, TensorType)) or at.shape is None \
            or bt.shape is None:
        raise ctx.unsupported("legacy broadcast with axis needs operands of known rank")
    rank_a, rank_b = len(at.shape), len(bt.shape)
    axis = ctx.attrs["axis"] + (rank_a if ctx.attrs["axis"] < 0 else 0)
    trailing = rank_a - axis - rank_b
    if trailing < 0:
        raise ctx.unsupported(f"legacy broadcast: b {bt} does not fit a {at} at axis {axis}")
    if trailing == 0:
        return b
    c = ctx.const(1)
    if c is not None:
        return ctx.constant(np.asarray(c).reshape(np.shape(c) + (1,) * trailing))
    shape = ctx.constant(np.array([0] * rank_b + [1] * trailing, dtype=np.int64))
    return ctx.op("reshape", b, shape)


def _binary(gx_name: str):
    def convert(ctx):
        a, b = ctx.inputs[0], ctx.inputs[1]
        if ctx.opset < 7:
            b = _legacy_broadcast(ctx, a, b)
        return [ctx.op(gx_name, a, b, **_attrs(ctx, drop=("broadcast", "axis")))]
    return convert


for _onnx, _gx in BINARY.items():
    converter(_onnx)(_binary(_gx))


def _variadic(gx_name: str):
    def convert(ctx):
        xs = [v for v in ctx.inputs if v is not None]
        if not xs:
            raise ctx.unsupported("needs at least one input")
        return [ctx.op(gx_name, *xs)]
    return convert


for _onnx, _gx in VARIADIC.items():
    converter(_onnx)(_variadic(_gx))


@converter("Where")
def where(ctx):
    return [ctx.op("where", *ctx.inputs[:3])]


@converter("PRelu")
def prelu(ctx):
    x, slope = ctx.inputs[0], ctx.inputs[1]
    xt, st = x.type, slope.type
    if ctx.opset < 7 and isinstance(xt, TensorType) and xt.shape is not None and \
            len(xt.shape) > 2 and isinstance(st, TensorType) and st.shape is not None and \
            len(st.shape) == 1 and st.shape[0] != 1:
        # PRelu-6 and older: a 1-D slope of size C applies per channel (axis 1)
        tail = (1,) * (len(xt.shape) - 2)
        c = ctx.const(1)
        if c is not None:
            slope = ctx.constant(np.asarray(c).reshape((-1,) + tail))
        else:
            slope = ctx.op("reshape", slope, ctx.constant(np.array((-1,) + tail, np.int64)))
    return [ctx.op("prelu", x, slope)]


@converter("Binarizer", domain="ai.onnx.ml")
def binarizer(ctx):
    return [ctx.op("ml.binarizer", ctx.inputs[0], **_attrs(ctx))]


@converter("Clip")
def clip(ctx):
    x = ctx.inputs[0]
    if ctx.opset < 11:  # min/max were attributes
        dt = x.type.dtype.numpy if isinstance(x.type, TensorType) else np.float32
        lo = ctx.attrs.get("min")
        hi = ctx.attrs.get("max")
        lo_v = None if lo is None else ctx.constant(np.asarray(lo, dtype=dt))
        hi_v = None if hi is None else ctx.constant(np.asarray(hi, dtype=dt))
        return [ctx.op("clip", x, lo_v, hi_v)]
    lo_v = ctx.input(1)
    hi_v = ctx.input(2)
    return [ctx.op("clip", x, lo_v, hi_v)]


def _dtype_of_attr(ctx, to) -> DType:
    if isinstance(to, str):  # Cast-1..5: the type name as a string
        try:
            code = onnx.TensorProto.DataType.Value(to.upper())
        except ValueError:
            raise ctx.unsupported(f"unknown target type {to!r}") from None
        return DType.from_onnx(code)
    try:
        return DType.from_onnx(int(to))
    except ValueError as e:
        raise ctx.unsupported(str(e)) from None


def _cast_attrs(ctx) -> dict:
    kw = {}
    if "saturate" in ctx.attrs:
        kw["saturate"] = int(ctx.attrs["saturate"])
    if "round_mode" in ctx.attrs:
        kw["round_mode"] = ctx.attrs["round_mode"]
    return kw


@converter("Cast")
def cast(ctx):
    if "to" not in ctx.attrs:
        raise ctx.unsupported("Cast needs the 'to' attribute")
    to = _dtype_of_attr(ctx, ctx.attrs["to"])
    return [ctx.op("cast", ctx.inputs[0], to=to, **_cast_attrs(ctx))]


@converter("CastLike")
def cast_like(ctx):
    target = ctx.inputs[1]
    t = target.type if target is not None else None
    if not isinstance(t, TensorType):
        raise ctx.unsupported(f"CastLike needs a tensor target_type input, got {t}")
    return [ctx.op("cast", ctx.inputs[0], to=t.dtype, **_cast_attrs(ctx))]


@converter("BitCast")
def bit_cast(ctx):
    return [ctx.op("bit_cast", ctx.inputs[0], to=_dtype_of_attr(ctx, ctx.attrs["to"]))]


@converter("Dropout")
def dropout(ctx):
    x = ctx.inputs[0]
    n = ctx.num_outputs
    seed = ctx.attrs.get("seed")
    kw = {} if seed is None else {"seed": int(seed)}
    if ctx.opset >= 12:
        ops = [x, ctx.input(1), ctx.input(2)]
        while len(ops) > 1 and ops[-1] is None:
            ops.pop()
        outs = ctx.op("dropout", *ops, num_results=n, **kw)
        return [outs] if n == 1 else list(outs)
    # Dropout-1..10: ratio was an attribute and there was no training input; old models
    # are run for inference (is_test is ignored, as onnxruntime does).
    ratio = ctx.attrs.get("ratio", 0.5)
    dt = x.type.dtype.numpy if isinstance(x.type, TensorType) else np.float32
    r = ctx.constant(np.asarray(ratio, dtype=dt))
    outs = ctx.op("dropout", x, r, num_results=n, **kw)
    if n == 1:
        return [outs]
    y, mask = outs
    if ctx.opset < 10 and isinstance(x.type, TensorType):  # the mask had x's dtype then
        mask = ctx.op("cast", mask, to=x.type.dtype)
    return [y, mask]
