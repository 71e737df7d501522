"""Elementwise ATen ops: arithmetic with torch's type promotion, comparisons, logic,
unary math and activations."""
from __future__ import annotations

import math
from typing import Any

import torch

from ....ir import Value
from ....ir.types import DType
from ..importer import TorchContext, converter, gx_dtype


# -- type promotion ---------------------------------------------------------------------------
def _dummy(m: Any) -> Any:
    if isinstance(m, torch.Tensor):
        return torch.empty(() if m.dim() == 0 else (1,), dtype=m.dtype)
    if isinstance(m, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return {torch.SymInt: 1, torch.SymFloat: 1.0, torch.SymBool: True}[type(m)]
    return m


def promote(ctx: TorchContext, *names: str) -> DType:
    """torch's result type of the named arguments (tensors and Python scalars)."""
    ms = [_dummy(ctx.meta(n)) for n in names if ctx.meta(n) is not None]
    if not any(isinstance(m, torch.Tensor) for m in ms):
        ms[0] = torch.tensor(ms[0])
    dt = ms[0].dtype if isinstance(ms[0], torch.Tensor) else None
    acc = ms[0]
    for m in ms[1:]:
        dt = torch.result_type(acc, m)
        acc = torch.empty((1,), dtype=dt)
    if dt is None:
        dt = torch.result_type(acc, acc)
    return gx_dtype(dt)


def operands(ctx: TorchContext, *names: str, dtype: DType | None = None) -> list[Value]:
    dt = dtype or promote(ctx, *names)
    return [ctx.tensor(ctx.args[n], dt) for n in names]


def _scaled(ctx: TorchContext, v: Value, alpha: Any) -> Value:
    if alpha is None or alpha == 1:
        return v
    return ctx.op("mul", v, ctx.tensor(alpha, v.type.dtype))


# -- arithmetic ---------------------------------------------------------------------------------
@converter("add")
def add(ctx: TorchContext):
    a, b = operands(ctx, "self", "other")
    return ctx.op("add", a, _scaled(ctx, b, ctx.arg("alpha")))


@converter("sub")
def sub(ctx: TorchContext):
    a, b = operands(ctx, "self", "other")
    return ctx.op("sub", a, _scaled(ctx, b, ctx.arg("alpha")))


@converter("rsub")
def rsub(ctx: TorchContext):
    a, b = operands(ctx, "self", "other")
    return ctx.op("sub", b, _scaled(ctx, a, ctx.arg("alpha")))


@converter("mul")
def mul(ctx: TorchContext):
    a, b = operands(ctx, "self", "other")
    if a.type.dtype == DType.bool:
        return ctx.op("and", a, b)
    return ctx.op("mul", a, b)


def _is_float(dt: DType) -> bool:
    return dt.numpy.kind == "f" or dt in (DType.bfloat16,)


@converter("div")
def div(ctx: TorchContext):
    out = ctx.out_dtype
    mode = ctx.args.get("rounding_mode")
    a, b = operands(ctx, "self", "other", dtype=out)
    if mode is None:
        return ctx.op("div", a, b)
    if mode == "trunc":
        if not _is_float(out):
            return ctx.op("div", a, b)  # integer div truncates, as ONNX's does
        q = ctx.op("div", a, b)
        return ctx.op("mul", ctx.op("sign", q), ctx.op("floor", ctx.op("abs", q)))
    if mode == "floor":
        if _is_float(out):
            return ctx.op("floor", ctx.op("div", a, b))
        # floor division of integers: (a - a mod b) / b is exact (mod takes b's sign)
        return ctx.op("div", ctx.op("sub", a, ctx.op("mod", a, b)), b)
    raise ctx.unsupported(f"rounding_mode {mode!r}")


@converter("remainder")
def remainder(ctx: TorchContext):
    a, b = operands(ctx, "self", "other", dtype=ctx.out_dtype)
    if not _is_float(ctx.out_dtype):
        return ctx.op("mod", a, b)
    return ctx.op("sub", a, ctx.op("mul", ctx.op("floor", ctx.op("div", a, b)), b))


@converter("fmod")
def fmod(ctx: TorchContext):
    a, b = operands(ctx, "self", "other", dtype=ctx.out_dtype)
    return ctx.op("mod", a, b, fmod=1)


@converter("pow")
def pow_(ctx: TorchContext):
    out = ctx.out_dtype
    base = ctx.tensor(ctx.args["self"], out)
    exp = ctx.args["exponent"]
    if not isinstance(exp, Value):
        if exp == 1:
            return base
        if exp == 2:
            return ctx.op("mul", base, base)
        if exp == 0.5 and _is_float(out):
            return ctx.op("sqrt", base)
    return ctx.op("pow", base, ctx.tensor(exp, out))


def _minmax(gx_name: str):
    def convert(ctx: TorchContext):
        return ctx.op(gx_name, *operands(ctx, "self", "other"))
    return convert


converter("maximum")(_minmax("max"))
converter("minimum")(_minmax("min"))


# -- comparisons and logic ------------------------------------------------------------------
def _compare(gx_name: str, negate: bool = False):
    def convert(ctx: TorchContext):
        r = ctx.op(gx_name, *operands(ctx, "self", "other"))
        return ctx.op("not", r) if negate else r
    return convert


converter("eq")(_compare("equal"))
converter("ne")(_compare("equal", negate=True))
converter("lt")(_compare("less"))
converter("le")(_compare("less_or_equal"))
converter("gt")(_compare("greater"))
converter("ge")(_compare("greater_or_equal"))


def _logical(gx_name: str):
    def convert(ctx: TorchContext):
        return ctx.op(gx_name, *operands(ctx, "self", "other", dtype=DType.bool))
    return convert


converter("logical_and")(_logical("and"))
converter("logical_or")(_logical("or"))
converter("logical_xor")(_logical("xor"))


@converter("logical_not")
def logical_not(ctx: TorchContext):
    return ctx.op("not", ctx.tensor(ctx.args["self"], DType.bool))


def _bitwise(gx_bool: str, gx_int: str):
    def convert(ctx: TorchContext):
        dt = promote(ctx, "self", "other")
        a, b = operands(ctx, "self", "other", dtype=dt)
        return ctx.op(gx_bool if dt == DType.bool else gx_int, a, b)
    return convert


converter("bitwise_and")(_bitwise("and", "bitwise_and"))
converter("bitwise_or")(_bitwise("or", "bitwise_or"))
converter("bitwise_xor")(_bitwise("xor", "bitwise_xor"))


@converter("bitwise_not")
def bitwise_not(ctx: TorchContext):
    x = ctx.args["self"]
    return ctx.op("not" if x.type.dtype == DType.bool else "bitwise_not", x)


@converter("where")
def where(ctx: TorchContext):
    cond = ctx.tensor(ctx.args["condition"], DType.bool)
    a, b = operands(ctx, "self", "other", dtype=ctx.out_dtype)
    return ctx.op("where", cond, a, b)


@converter("masked_fill")
def masked_fill(ctx: TorchContext):
    x = ctx.args["self"]
    fill = ctx.tensor(ctx.args["value"], x.type.dtype)
    return ctx.op("where", ctx.tensor(ctx.args["mask"], DType.bool), fill, x)


@converter("isnan")
def isnan(ctx: TorchContext):
    return ctx.op("isnan", ctx.args["self"])


@converter("isinf")
def isinf(ctx: TorchContext):
    return ctx.op("isinf", ctx.args["self"])


# -- unary math ---------------------------------------------------------------------------------
def _unary(gx_name: str, float_only: bool = True):
    def convert(ctx: TorchContext):
        x = ctx.args["self"]
        if float_only:
            x = ctx.tensor(x, ctx.out_dtype)
        return ctx.op(gx_name, x)
    return convert


for _aten, _gx in {"neg": "neg", "abs": "abs", "sign": "sign", "relu": "relu"}.items():
    converter(_aten)(_unary(_gx, float_only=False))
for _aten, _gx in {"exp": "exp", "log": "log", "sqrt": "sqrt", "reciprocal": "reciprocal",
                   "sin": "sin", "cos": "cos", "tan": "tan", "tanh": "tanh", "sigmoid": "sigmoid",
                   "erf": "erf", "floor": "floor", "ceil": "ceil", "asin": "asin", "acos": "acos",
                   "atan": "atan", "sinh": "sinh", "cosh": "cosh", "asinh": "asinh",
                   "acosh": "acosh", "atanh": "atanh", "hardswish": "hard_swish",
                   "mish": "mish"}.items():
    converter(_aten)(_unary(_gx))


@converter("round")
def round_(ctx: TorchContext):
    x = ctx.args["self"]
    decimals = ctx.arg("decimals", 0)
    if not decimals:
        return ctx.op("round", x)
    s = ctx.tensor(10.0 ** decimals, x.type.dtype)
    return ctx.op("div", ctx.op("round", ctx.op("mul", x, s)), s)


@converter("trunc")
def trunc(ctx: TorchContext):
    x = ctx.args["self"]
    return ctx.op("mul", ctx.op("sign", x), ctx.op("floor", ctx.op("abs", x)))


@converter("rsqrt")
def rsqrt(ctx: TorchContext):
    return ctx.op("reciprocal", ctx.op("sqrt", ctx.tensor(ctx.args["self"], ctx.out_dtype)))


@converter("log1p")
def log1p(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    return ctx.op("log", ctx.op("add", x, ctx.tensor(1, x.type.dtype)))


@converter("expm1")
def expm1(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    return ctx.op("sub", ctx.op("exp", x), ctx.tensor(1, x.type.dtype))


@converter("log2", "log10")
def log_base(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    base = 2.0 if "log2" in ctx.op_name else 10.0
    return ctx.op("div", ctx.op("log", x), ctx.tensor(math.log(base), x.type.dtype))


@converter("exp2")
def exp2(ctx: TorchContext):
    x = ctx.tensor(ctx.args["self"], ctx.out_dtype)
    return ctx.op("pow", ctx.tensor(2.0, x.type.dtype), x)


# -- activations ------------------------------------------------------------------------------
@converter("gelu")
def gelu(ctx: TorchContext):
    return ctx.op("gelu", ctx.args["self"], approximate=ctx.arg("approximate", "none"))


@converter("leaky_relu")
def leaky_relu(ctx: TorchContext):
    return ctx.op("leaky_relu", ctx.args["self"], alpha=float(ctx.arg("negative_slope", 0.01)))


@converter("elu")
def elu(ctx: TorchContext):
    x = ctx.args["self"]
    alpha, scale, in_scale = (float(ctx.arg(k, 1)) for k in ("alpha", "scale", "input_scale"))
    if in_scale != 1:
        x = ctx.op("mul", x, ctx.tensor(in_scale, x.type.dtype))
    y = ctx.op("elu", x, alpha=alpha)
    if scale != 1:
        y = ctx.op("mul", y, ctx.tensor(scale, x.type.dtype))
    return y


@converter("silu")
def silu(ctx: TorchContext):
    return ctx.op("swish", ctx.args["self"], alpha=1.0)


@converter("hardsigmoid")
def hardsigmoid(ctx: TorchContext):
    return ctx.op("hard_sigmoid", ctx.args["self"], alpha=1.0 / 6.0, beta=0.5)


@converter("softplus")
def softplus(ctx: TorchContext):
    x = ctx.args["self"]
    beta = float(ctx.arg("beta", 1))
    threshold = float(ctx.arg("threshold", 20))
    dt = x.type.dtype
    bx = x if beta == 1 else ctx.op("mul", x, ctx.tensor(beta, dt))
    y = ctx.op("softplus", bx)
    if beta != 1:
        y = ctx.op("div", y, ctx.tensor(beta, dt))
    # torch returns x itself where beta * x > threshold
    return ctx.op("where", ctx.op("greater", bx, ctx.tensor(threshold, dt)), x, y)


@converter("hardtanh")
def hardtanh(ctx: TorchContext):
    x = ctx.args["self"]
    dt = x.type.dtype
    return ctx.op("clip", x, ctx.tensor(ctx.arg("min_val", -1), dt), ctx.tensor(ctx.arg("max_val", 1), dt))


@converter("clamp", "clip")
def clamp(ctx: TorchContext):
    dt = ctx.out_dtype
    x = ctx.tensor(ctx.args["self"], dt)
    lo, hi = ctx.args.get("min"), ctx.args.get("max")
    lo_v = ctx.tensor(lo, dt) if lo is not None else None
    hi_v = ctx.tensor(hi, dt) if hi is not None else None
    scalar = all(v is None or not isinstance(v, Value) for v in (lo, hi))
    if scalar:
        return ctx.op("clip", x, lo_v, hi_v)
    y = x if lo_v is None else ctx.op("max", x, lo_v)
    return y if hi_v is None else ctx.op("min", y, hi_v)


@converter("clamp_min")
def clamp_min(ctx: TorchContext):
    dt = ctx.out_dtype
    return ctx.op("max", ctx.tensor(ctx.args["self"], dt), ctx.tensor(ctx.args["min"], dt))


@converter("clamp_max")
def clamp_max(ctx: TorchContext):
    dt = ctx.out_dtype
    return ctx.op("min", ctx.tensor(ctx.args["self"], dt), ctx.tensor(ctx.args["max"], dt))


@converter("_prelu_kernel")
def prelu(ctx: TorchContext):
    x, w = ctx.args["self"], ctx.args["weight"]
    return ctx.op("prelu", x, w)


@converter("log_sigmoid_forward")
def log_sigmoid_forward(ctx: TorchContext):
    x = ctx.args["self"]
    # log(sigmoid(x)) = -softplus(-x), stable for both signs
    return ctx.op("neg", ctx.op("softplus", ctx.op("neg", x))), None


@converter("native_dropout")
def native_dropout(ctx: TorchContext):
    if ctx.args.get("train"):
        raise ctx.unsupported("dropout in training mode (export the model in eval mode)")
    return ctx.args["input"], None


@converter("_to_copy")
def to_copy(ctx: TorchContext):
    x = ctx.args["self"]
    dt = ctx.args.get("dtype")
    if dt is None:
        return x
    return ctx.tensor(x, gx_dtype(dt))


@converter("clone", "alias", "detach", "lift_fresh_copy", "contiguous", "dropout")
def passthrough(ctx: TorchContext):
    return ctx.args.get("self", ctx.args.get("input"))


@converter("copy")
def copy(ctx: TorchContext):
    src, dst = ctx.args["src"], ctx.args["self"]
    v = ctx.tensor(src, dst.type.dtype)
    if tuple(ctx.meta("src").shape) != tuple(ctx.meta("self").shape):
        v = ctx.op("expand", v, ctx.op("shape", dst))
    return v
