"""TFLite builtin op converters.

Every converter reads its inputs as reals (``ctx.real(i)``: quantized tensors dequantized)
and hands its float result to ``ctx.finish`` (fused activation, then quantization when
the output tensor is quantized), so float, float16-weight and int8 files share them.
"""
from __future__ import annotations

import numpy as np

from ...ir.types import DType
from ..nhwc import conv_nhwc, depthwise_to_mckk, ohwi_to_mckk, pool_nhwc
from .importer import TfliteContext, converter, dequantize, is_quantized, quantize
from .reader import DTYPES

_PADDING = {0: "SAME", 1: "VALID"}


def _act(ctx: TfliteContext) -> int:
    o = ctx.options
    return int(o.FusedActivationFunction()) if o is not None and \
        hasattr(o, "FusedActivationFunction") else 0


def _padding(ctx: TfliteContext) -> str:
    p = int(ctx.options.Padding())
    if p not in _PADDING:
        raise ctx.unsupported(f"padding {p}")
    return _PADDING[p]


def _weights(ctx: TfliteContext, i: int, what: str) -> np.ndarray:
    w = ctx.real_static(i)
    if w is None:
        raise ctx.unsupported(f"{what} (input {i}) must be a constant")
    return np.asarray(w, np.float32)


@converter("CONV_2D")
def conv_2d(ctx: TfliteContext):
    o = ctx.options
    x = ctx.real(0)
    w = _weights(ctx, 1, "the filter")  # [M, kh, kw, C/g]
    bias = ctx.real_static(2)
    c = x.type.shape[-1] if x.type.shape else None
    group = c // w.shape[3] if isinstance(c, int) and w.shape[3] and c != w.shape[3] else 1
    y = conv_nhwc(ctx.b, x, ohwi_to_mckk(w), None if bias is None else np.asarray(bias, np.float32),
                  [int(o.StrideH()), int(o.StrideW())],
                  [int(o.DilationHFactor()), int(o.DilationWFactor())], _padding(ctx), group)
    return ctx.finish(y, activation=_act(ctx))


@converter("DEPTHWISE_CONV_2D")
def depthwise_conv_2d(ctx: TfliteContext):
    o = ctx.options
    x = ctx.real(0)
    w = _weights(ctx, 1, "the filter")  # [1, kh, kw, C*mult]
    bias = ctx.real_static(2)
    c = x.type.shape[-1] if x.type.shape else None
    if not isinstance(c, int) or w.ndim != 4 or w.shape[3] % c:
        raise ctx.unsupported(f"a depthwise filter {list(w.shape)} for {c} input channels")
    kh, kw = w.shape[1], w.shape[2]
    wk = depthwise_to_mckk(w[0].reshape(kh, kw, c, w.shape[3] // c), c)
    y = conv_nhwc(ctx.b, x, wk, None if bias is None else np.asarray(bias, np.float32),
                  [int(o.StrideH()), int(o.StrideW())],
                  [int(o.DilationHFactor()), int(o.DilationWFactor())], _padding(ctx), c)
    return ctx.finish(y, activation=_act(ctx))


@converter("FULLY_CONNECTED")
def fully_connected(ctx: TfliteContext):
    x = ctx.real(0)
    w = _weights(ctx, 1, "the weights")  # [N, K]
    bias = ctx.real_static(2)
    keep = bool(ctx.options.KeepNumDims()) if ctx.options is not None else False
    if x.type.shape is None or len(x.type.shape) != 2 and not keep:
        x = ctx.op("reshape", x, ctx.i64([-1, w.shape[1]]))
    y = ctx.op("matmul", x, ctx.const(np.ascontiguousarray(w.T)))
    if bias is not None:
        y = ctx.op("add", y, ctx.const(np.asarray(bias, np.float32)))
    return ctx.finish(y, activation=_act(ctx))


_BINARY = {"ADD": "add", "SUB": "sub", "MUL": "mul", "DIV": "div", "MAXIMUM": "max",
           "MINIMUM": "min", "POW": "pow"}


def _binary(gx: str):
    def convert(ctx: TfliteContext):
        return ctx.finish(ctx.op(gx, ctx.real(0), ctx.real(1)), activation=_act(ctx))
    return convert


for _tfl, _gx in _BINARY.items():
    converter(_tfl)(_binary(_gx))


@converter("SQUARED_DIFFERENCE")
def squared_difference(ctx: TfliteContext):
    d = ctx.op("sub", ctx.real(0), ctx.real(1))
    return ctx.finish(ctx.op("mul", d, d))


_COMPARE = {"LESS": "less", "LESS_EQUAL": "less_or_equal", "GREATER": "greater",
            "GREATER_EQUAL": "greater_or_equal", "EQUAL": "equal"}


def _compare(gx: str):
    def convert(ctx: TfliteContext):
        return ctx.op(gx, ctx.real(0), ctx.real(1))
    return convert


for _tfl, _gx in _COMPARE.items():
    converter(_tfl)(_compare(_gx))

_UNARY = {"RELU": "relu", "LOGISTIC": "sigmoid", "TANH": "tanh", "EXP": "exp", "SQRT": "sqrt",
          "NEG": "neg", "ABS": "abs", "HARD_SWISH": "hard_swish", "LOG": "log", "SIN": "sin",
          "COS": "cos", "FLOOR": "floor", "CEIL": "ceil"}


def _unary(gx: str):
    def convert(ctx: TfliteContext):
        return ctx.finish(ctx.op(gx, ctx.real(0)))
    return convert


for _tfl, _gx in _UNARY.items():
    converter(_tfl)(_unary(_gx))


@converter("RSQRT")
def rsqrt(ctx: TfliteContext):
    return ctx.finish(ctx.op("reciprocal", ctx.op("sqrt", ctx.real(0))))


@converter("RELU6", "RELU_N1_TO_1", "RELU_0_TO_1")
def relu_range(ctx: TfliteContext):
    lo, hi = {"RELU6": (0, 6), "RELU_N1_TO_1": (-1, 1), "RELU_0_TO_1": (0, 1)}[ctx.tfl.code]
    x = ctx.real(0)
    dt = x.type.dtype.numpy
    return ctx.finish(ctx.op("clip", x, ctx.const(lo, dt), ctx.const(hi, dt)))


@converter("LEAKY_RELU")
def leaky_relu(ctx: TfliteContext):
    return ctx.finish(ctx.op("leaky_relu", ctx.real(0), alpha=float(ctx.options.Alpha())))


@converter("GELU")
def gelu(ctx: TfliteContext):
    approx = "tanh" if ctx.options is not None and ctx.options.Approximate() else "none"
    return ctx.finish(ctx.op("gelu", ctx.real(0), approximate=approx))


@converter("SOFTMAX")
def softmax(ctx: TfliteContext):
    x = ctx.real(0)
    beta = float(ctx.options.Beta()) if ctx.options is not None else 1.0
    if beta != 1.0:
        x = ctx.op("mul", x, ctx.const(beta, x.type.dtype.numpy))
    return ctx.finish(ctx.op("softmax", x, axis=-1))


@converter("LOG_SOFTMAX")
def log_softmax(ctx: TfliteContext):
    return ctx.finish(ctx.op("log_softmax", ctx.real(0), axis=-1))


@converter("AVERAGE_POOL_2D", "MAX_POOL_2D")
def pool_2d(ctx: TfliteContext):
    o = ctx.options
    kind = "max" if ctx.tfl.code == "MAX_POOL_2D" else "avg"
    window = ([int(o.FilterHeight()), int(o.FilterWidth())], [int(o.StrideH()), int(o.StrideW())],
              _padding(ctx))
    tin, tout = ctx.input_tensor(0), ctx.output_tensor()
    if kind == "avg" and is_quantized(tin) and is_quantized(tout) and not _act(ctx) and \
            _same_quant(tin, tout):
        return _integer_average(ctx, window)
    y = pool_nhwc(ctx.b, kind, ctx.real(0), *window)
    return ctx.finish(y, activation=_act(ctx))


def _same_quant(a, b) -> bool:
    return a.type == b.type and np.array_equal(a.quant.scale, b.quant.scale) and \
        np.array_equal(a.quant.zero_point, b.quant.zero_point)


def _integer_average(ctx: TfliteContext, window):
    """TFLite's integer average pool: the mean of the raw integers, rounded half away from
    zero (not the real mean rounded half to even: ties are common with 2x2 windows)."""
    x = ctx.op("cast", ctx.value(0), to=DType.float32)
    a = pool_nhwc(ctx.b, "avg", x, *window)
    half = ctx.const(0.5, np.float32)
    r = ctx.op("mul", ctx.op("floor", ctx.op("add", ctx.op("abs", a), half)), ctx.op("sign", a))
    return ctx.op("cast", r, to=DType.from_numpy(ctx.output_tensor().dtype))


_REDUCE = {"MEAN": "reduce_mean", "SUM": "reduce_sum", "REDUCE_MAX": "reduce_max",
           "REDUCE_MIN": "reduce_min", "REDUCE_PROD": "reduce_prod"}


@converter(*_REDUCE)
def reduce(ctx: TfliteContext):
    axes = ctx.need_static(1, "the axes").reshape(-1).astype(np.int64)
    keep = int(bool(ctx.options.KeepDims())) if ctx.options is not None else 0
    y = ctx.op(_REDUCE[ctx.tfl.code], ctx.real(0), ctx.i64(axes), keepdims=keep)
    return ctx.finish(y)


@converter("RESHAPE")
def reshape(ctx: TfliteContext):
    shape = ctx.static(1) if len(ctx.tfl.inputs) > 1 else None
    if shape is None and ctx.value(1) is not None:  # a shape computed in the graph
        target = _static_target(ctx.value(1), ctx.real(0))
        if target is not None:
            return ctx.finish(ctx.op("reshape", ctx.real(0), ctx.i64(target), allowzero=0))
        s = ctx.value(1)
        s = s if s.type.dtype == DType.int64 else ctx.op("cast", s, to=DType.int64)
        return ctx.finish(ctx.op("reshape", ctx.real(0), s, allowzero=0))
    if shape is None and ctx.options is not None and ctx.options.NewShapeLength():
        shape = ctx.options.NewShapeAsNumpy()
    if shape is None:
        shape = np.asarray(ctx.output_tensor().shape)
    shape = [int(d) for d in np.asarray(shape).reshape(-1)]
    x = ctx.real(0)
    src = x.type.shape
    # a dynamic batch: TFLite writes the traced batch (1) into the new shape
    if src and isinstance(src[0], str) and shape and shape[0] == 1 and -1 not in shape:
        shape[0] = -1
    return ctx.finish(ctx.op("reshape", x, ctx.i64(shape), allowzero=1 if 0 in shape else 0))


def _symbolic_ints(v, depth: int = 0) -> list | None:
    """A small int tensor of shape arithmetic (``SHAPE -> GATHER / STRIDED_SLICE ->
    REDUCE_PROD -> PACK / CONCATENATION``, which the converter emits for a Dense on a
    dynamic-batch tensor) as ints, symbolic dim names or "?"; None when not traceable."""
    p = getattr(v, "producer", None)
    if p is None or depth > 16:
        return None
    if p.name == "constant":
        arr = np.asarray(p.attrs["value"])
        return [int(x) for x in arr.reshape(-1)] if arr.dtype.kind in "iu" else None
    if p.name in ("cast", "identity", "unsqueeze", "reshape") and \
            (p.name != "reshape" or (v.type.shape is not None and len(v.type.shape) <= 1)):
        return _symbolic_ints(p.operand(0), depth + 1)
    if p.name == "shape":
        dims = p.operand(0).type.shape
        if dims is None:
            return None
        dims = [d if isinstance(d, (int, str)) else "?" for d in dims]
        return dims[p.attr("start") or 0:p.attr("end")]
    if p.name == "gather" and (p.attr("axis") or 0) == 0:
        base, idx = _symbolic_ints(p.operand(0), depth + 1), _symbolic_ints(p.operand(1), depth + 1)
        if base is None or idx is None or not all(isinstance(i, int) and -len(base) <= i < len(base)
                                                  for i in idx):
            return None
        return [base[i] for i in idx]
    if p.name == "slice":
        base = _symbolic_ints(p.operand(0), depth + 1)
        se = [_symbolic_ints(p.operand(i), depth + 1) if p.operand(i) is not None else None
              for i in (1, 2, 3, 4)]
        if base is None or se[0] is None or se[1] is None or len(se[0]) != 1 or \
                (se[2] is not None and se[2] != [0]) or (se[3] is not None and se[3] != [1]):
            return None
        return base[slice(se[0][0], se[1][0])]
    if p.name == "reduce_prod":
        base = _symbolic_ints(p.operand(0), depth + 1)
        if base is None:
            return None
        if all(isinstance(d, int) for d in base):
            return [int(np.prod(base))]
        return [base[0]] if len(base) == 1 else ["?"]
    if p.name == "concat" and (p.attr("axis") or 0) in (0, -1):
        out = []
        for x in p.operands:
            part = _symbolic_ints(x, depth + 1)
            if part is None:
                return None
            out.extend(part)
        return out
    return None


def _static_target(shape, x) -> list[int] | None:
    """A computed reshape target as constants: 0 (copy the input's dim) where it is the
    input's own symbolic dim at that position, -1 for one other unknown dim; None when that
    does not describe it.  So the backend sees a reshape, not shape arithmetic."""
    items = _symbolic_ints(shape)
    src = x.type.shape
    if items is None:
        return None
    out, unknown = [], 0
    for j, d in enumerate(items):
        if isinstance(d, int):
            if d <= 0:
                return None
            out.append(d)
        elif d != "?" and src is not None and j < len(src) and src[j] == d:
            out.append(0)
        else:
            unknown += 1
            out.append(-1)
    return out if unknown <= 1 else None


@converter("SQUEEZE")
def squeeze(ctx: TfliteContext):
    dims = [int(d) for d in ctx.options.SqueezeDimsAsNumpy()] \
        if ctx.options is not None and ctx.options.SqueezeDimsLength() else []
    x = ctx.real(0)
    return ctx.finish(ctx.op("squeeze", x, ctx.i64(dims)) if dims else ctx.op("squeeze", x))


@converter("EXPAND_DIMS")
def expand_dims(ctx: TfliteContext):
    axis = ctx.need_static(1, "the axis").reshape(-1).astype(np.int64)
    return ctx.finish(ctx.op("unsqueeze", ctx.real(0), ctx.i64(axis)))


@converter("TRANSPOSE")
def transpose(ctx: TfliteContext):
    perm = [int(p) for p in ctx.need_static(1, "the permutation").reshape(-1)]
    return ctx.finish(ctx.op("transpose", ctx.real(0), perm=perm))


@converter("CONCATENATION")
def concatenation(ctx: TfliteContext):
    parts = [ctx.real(i) for i in range(len(ctx.tfl.inputs))]
    y = parts[0] if len(parts) == 1 else ctx.op("concat", *parts, axis=int(ctx.options.Axis()))
    return ctx.finish(y, activation=_act(ctx))


@converter("PACK")
def pack(ctx: TfliteContext):
    axis = int(ctx.options.Axis())
    parts = [ctx.op("unsqueeze", ctx.real(i), ctx.i64([axis])) for i in range(len(ctx.tfl.inputs))]
    return ctx.finish(parts[0] if len(parts) == 1 else ctx.op("concat", *parts, axis=axis))


@converter("PAD", "PADV2")
def pad(ctx: TfliteContext):
    pads = ctx.need_static(1, "the paddings").astype(np.int64).reshape(-1, 2)
    x = ctx.real(0)
    value = ctx.real(2) if ctx.tfl.code == "PADV2" and len(ctx.tfl.inputs) > 2 else None
    if value is not None and value.type.shape:
        value = ctx.op("reshape", value, ctx.i64([]))
    flat = np.concatenate([pads[:, 0], pads[:, 1]])
    return ctx.finish(ctx.op("pad", x, ctx.i64(flat), value))


@converter("BATCH_MATMUL")
def batch_matmul(ctx: TfliteContext):
    a, b = ctx.real(0), ctx.real(1)
    o = ctx.options
    for flag, i in ((o.AdjX() if o is not None else False, 0), (o.AdjY() if o is not None else False, 1)):
        if flag:
            v = a if i == 0 else b
            r = len(v.type.shape)
            v = ctx.op("transpose", v, perm=[*range(r - 2), r - 1, r - 2])
            a, b = (v, b) if i == 0 else (a, v)
    return ctx.finish(ctx.op("matmul", a, b))


@converter("GATHER")
def gather(ctx: TfliteContext):
    return ctx.finish(ctx.op("gather", ctx.real(0), ctx.value(1), axis=int(ctx.options.Axis())))


@converter("STRIDED_SLICE")
def strided_slice(ctx: TfliteContext):
    o = ctx.options
    begin = ctx.need_static(1, "begin").astype(np.int64)
    end = ctx.need_static(2, "end").astype(np.int64)
    strides = ctx.need_static(3, "strides").astype(np.int64)
    if o is not None and (o.EllipsisMask() or o.NewAxisMask()):
        raise ctx.unsupported("ellipsis and new-axis masks")
    bm, em, sm = (int(o.BeginMask()), int(o.EndMask()), int(o.ShrinkAxisMask())) if o else (0, 0, 0)
    big = np.iinfo(np.int64).max
    starts, ends = [], []
    for i, (s, e, st) in enumerate(zip(begin, end, strides)):
        if sm >> i & 1:
            s, e, st = s, (s + 1 if s != -1 else big), 1
        if bm >> i & 1:
            s = 0 if st > 0 else big
        if em >> i & 1 and not sm >> i & 1:
            e = big if st > 0 else -big
        starts.append(int(s))
        ends.append(int(e))
    n = len(begin)
    y = ctx.op("slice", ctx.real(0), ctx.i64(starts), ctx.i64(ends), ctx.i64(list(range(n))),
               ctx.i64(strides))
    shrink = [i for i in range(n) if sm >> i & 1]
    if shrink:
        y = ctx.op("squeeze", y, ctx.i64(shrink))
    return ctx.finish(y)


@converter("CAST")
def cast(ctx: TfliteContext):
    to = DType.from_numpy(np.dtype(DTYPES[ctx.output_tensor().type]))
    return ctx.op("cast", ctx.value(0), to=to)


@converter("SHAPE")
def shape(ctx: TfliteContext):
    s = ctx.op("shape", ctx.value(0))
    to = DType.from_numpy(ctx.output_tensor().dtype)
    return s if to == DType.int64 else ctx.op("cast", s, to=to)


@converter("DEQUANTIZE")
def dequantize_op(ctx: TfliteContext):
    t = ctx.input_tensor(0)
    data = ctx.static(0)
    if data is not None:  # float16 or int8 weights: a float32 constant once
        real = ctx.real_static(0)
        return ctx.const(np.asarray(real, np.float32))
    if t.quant is None:
        return ctx.op("cast", ctx.value(0), to=DType.float32)
    return dequantize(ctx.b, ctx.value(0), t)


@converter("QUANTIZE")
def quantize_op(ctx: TfliteContext):
    out = ctx.output_tensor()
    if not is_quantized(out):
        raise ctx.unsupported("QUANTIZE to a tensor without quantization parameters")
    return quantize(ctx.b, ctx.real(0), out)
