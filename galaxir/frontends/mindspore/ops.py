"""Converters of MindSpore primitives, by family.  Each reads its arguments with
``ctx.arg`` (attribute or constant input) and ``ctx.value`` (tensor input)."""
from __future__ import annotations

import numpy as np

from ...ir import Value
from ...ir.types import DType
from .importer import MindContext, converter
from .reader import MONAD

# MindSpore's enum encodings of string arguments (ops/_utils/arg_handler.str_to_enum)
_PAD_MODES = {0: "PAD", 1: "SAME", 2: "VALID"}
_FORMATS = {0: "NCHW", 1: "NHWC"}


def _mode(v, table) -> str:
    return table.get(v, str(v)) if isinstance(v, int) else str(v).upper()


def _ints(v, n: int | None = None) -> list[int]:
    """A flat list of ints from an int or a (nested) tuple; ``n`` trailing spatial values
    of MindSpore's 4-element (N, C, H, W) forms."""
    if isinstance(v, (int, np.integer)):
        out = [int(v)]
    else:
        out = [int(x) for x in np.asarray(v, dtype=np.int64).reshape(-1)]
    if n is not None:
        if len(out) == 1:
            out = out * n
        elif len(out) > n:
            out = out[-n:]
    return out


# -- plumbing: side effects and tuples ---------------------------------------------------------
@converter("Load")
def load(ctx: MindContext):
    return ctx.inputs[0]


@converter("UpdateState")
def update_state(ctx: MindContext):
    return MONAD


@converter("Depend")
def depend(ctx: MindContext):
    return ctx.inputs[0]


@converter("MakeTuple", "make_tuple", "MakeList")
def make_tuple(ctx: MindContext):
    return tuple(ctx.inputs)


@converter("TupleGetItem", "tuple_getitem", "ListGetItem")
def tuple_getitem(ctx: MindContext):
    seq, i = ctx.inputs[0], int(ctx.arg("index", 1))
    if not isinstance(seq, tuple) or not -len(seq) <= i < len(seq):
        raise ctx.unsupported(f"item {i} of a {type(seq).__name__}")
    return seq[i]


@converter("Identity", "Dropout", "StopGradient")
def identity(ctx: MindContext):
    return (ctx.value(0), None) if ctx.op_type == "Dropout" else ctx.value(0)


# -- elementwise ------------------------------------------------------------------------------------
def _unary(gx: str, **attrs):
    def convert(ctx: MindContext):
        return ctx.op(gx, ctx.value(0), **attrs)
    return convert


for _ms, _gx in {"ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
                 "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Erf": "erf", "Floor": "floor",
                 "Ceil": "ceil", "Reciprocal": "reciprocal", "Sin": "sin", "Cos": "cos",
                 "Softplus": "softplus", "HSwish": "hard_swish", "Sign": "sign",
                 "Round": "round", "LogicalNot": "not"}.items():
    converter(_ms)(_unary(_gx))
converter("SiLU")(_unary("swish"))
converter("HSigmoid")(_unary("hard_sigmoid", alpha=1.0 / 6, beta=0.5))


@converter("Rsqrt")
def rsqrt(ctx: MindContext):
    return ctx.op("reciprocal", ctx.op("sqrt", ctx.value(0)))


@converter("ReLU6")
def relu6(ctx: MindContext):
    x = ctx.value(0)
    return ctx.op("clip", x, ctx.tensor(0.0, x.type.dtype), ctx.tensor(6.0, x.type.dtype))


@converter("GeLU", "GeLUExt")
def gelu(ctx: MindContext):
    approx = ctx.arg("approximate", 1, "none")
    approx = {0: "none", 1: "tanh"}.get(approx, approx) if isinstance(approx, int) else str(approx)
    return ctx.op("gelu", ctx.value(0), approximate="tanh" if approx == "tanh" else "none")


@converter("FastGeLU")
def fast_gelu(ctx: MindContext):
    # x * sigmoid(1.702 x)
    x = ctx.value(0)
    return ctx.op("mul", x, ctx.op("sigmoid", ctx.op("mul", x, ctx.tensor(1.702, x.type.dtype))))


def _binary(gx: str):
    def convert(ctx: MindContext):
        a, b = ctx.inputs[0], ctx.inputs[1]
        dt = next((v.type.dtype for v in (a, b) if isinstance(v, Value)), None)
        return ctx.op(gx, ctx.tensor(a, dt), ctx.tensor(b, dt))
    return convert


for _ms, _gx in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "RealDiv": "div",
                 "Maximum": "max", "Minimum": "min", "Pow": "pow", "Muls": "mul",
                 "Adds": "add", "Subs": "sub", "Divs": "div", "Equal": "equal", "Less": "less", "Greater": "greater",
                 "LessEqual": "less_or_equal", "GreaterEqual": "greater_or_equal",
                 "LogicalAnd": "and", "LogicalOr": "or"}.items():
    converter(_ms)(_binary(_gx))


@converter("AddExt", "SubExt")
def add_ext(ctx: MindContext):
    a = ctx.value(0)
    b = ctx.tensor(ctx.inputs[1], a.type.dtype)
    alpha = ctx.arg("alpha", 2, 1)
    if alpha != 1:
        b = ctx.op("mul", b, ctx.tensor(float(alpha), a.type.dtype))
    return ctx.op("add" if ctx.op_type == "AddExt" else "sub", a, b)


@converter("Select")
def select(ctx: MindContext):
    return ctx.op("where", ctx.value(0), ctx.value(1), ctx.value(2))


@converter("BiasAdd")
def bias_add(ctx: MindContext):
    x, bias = ctx.value(0), ctx.value(1, None)
    fmt = _mode(ctx.arg("data_format", 2, 0), _FORMATS)
    r = ctx.rank(x)
    if r > 2 and fmt == "NCHW":
        bias = ctx.op("reshape", bias, ctx.i64([-1] + [1] * (r - 2)))
    return ctx.op("add", x, bias)


# -- matmul family ------------------------------------------------------------------------------------
def _maybe_t(ctx: MindContext, v: Value, flag) -> Value:
    if not flag:
        return v
    r = ctx.rank(v)
    perm = list(range(r - 2)) + [r - 1, r - 2]
    weight = ctx.static(v)  # a stored weight is transposed here, not by an op in the graph
    if weight is not None:
        return ctx.tensor(np.ascontiguousarray(weight.transpose(perm)))
    return ctx.op("transpose", v, perm=perm)


@converter("MatMul", "BatchMatMul")
def matmul(ctx: MindContext):
    a = _maybe_t(ctx, ctx.value(0), ctx.arg("transpose_a", 2, False))
    b = _maybe_t(ctx, ctx.value(1), ctx.arg("transpose_b", 3, False))
    return ctx.op("matmul", a, b)


@converter("MatMulExt", "BatchMatMulExt")
def matmul_ext(ctx: MindContext):
    return ctx.op("matmul", ctx.value(0), ctx.value(1))


@converter("Dense")
def dense(ctx: MindContext):
    x, w = ctx.value(0), ctx.value(1)
    y = ctx.op("matmul", x, ctx.op("transpose", w, perm=[1, 0]))
    if len(ctx.inputs) > 2 and ctx.inputs[2] is not None:
        y = ctx.op("add", y, ctx.value(2))
    return y


# -- convolution and pooling ------------------------------------------------------------------------------
def _spatial_pads(ctx: MindContext, pad_list, n: int) -> list[int]:
    """ONNX pads (begins then ends) from MindSpore's (top, bottom, left, right)."""
    p = _ints(pad_list)
    if len(p) == 1:
        p = p * (2 * n)
    if len(p) != 2 * n:
        raise ctx.unsupported(f"pad list {p} for {n} spatial dims")
    return p[0::2] + p[1::2]


@converter("Conv2D")
def conv2d(ctx: MindContext):
    x, w = ctx.value(0), ctx.value(1)
    fmt = _mode(ctx.arg("format", 99, "NCHW"), _FORMATS)
    if fmt != "NCHW":
        raise ctx.unsupported(f"format {fmt}; galaxir reads NCHW MindSpore convolutions")
    k = _ints(ctx.arg("kernel_size", 99), 2)
    strides = _ints(ctx.arg("stride", 99, 1), 2)
    dil = _ints(ctx.arg("dilation", 99, 1), 2)
    group = int(ctx.arg("group", 99, 1))
    mode = _mode(ctx.arg("pad_mode", 99, "valid"), _PAD_MODES)
    attrs = dict(kernel_shape=k, strides=strides, dilations=dil, group=group)
    if mode == "SAME":
        attrs["auto_pad"] = "SAME_UPPER"
    elif mode == "PAD":
        attrs["pads"] = _spatial_pads(ctx, ctx.arg("pad_list", 99, ctx.arg("pad", 99, 0)), 2)
    else:
        attrs["pads"] = [0, 0, 0, 0]
    return ctx.op("conv", x, w, None, **attrs)


def _pool(gx: str):
    def convert(ctx: MindContext):
        x = ctx.value(0)
        fmt = _mode(ctx.arg("data_format", 4, ctx.arg("format", 99, "NCHW")), _FORMATS)
        if fmt != "NCHW":
            raise ctx.unsupported(f"format {fmt}; galaxir reads NCHW MindSpore pooling")
        k = _ints(ctx.arg("kernel_size", 1), 2)
        s = _ints(ctx.arg("strides", 2, k), 2)
        mode = _mode(ctx.arg("pad_mode", 3, "VALID"), _PAD_MODES)
        attrs = dict(kernel_shape=k, strides=s)
        if mode == "SAME":
            attrs["auto_pad"] = "SAME_UPPER"
        elif mode == "VALID":
            attrs["pads"] = [0, 0, 0, 0]
        else:
            raise ctx.unsupported(f"pad mode {mode}")
        if gx == "average_pool":
            attrs["count_include_pad"] = 0
        return ctx.op(gx, x, num_results=1, **attrs)
    return convert


converter("MaxPool")(_pool("max_pool"))
converter("AvgPool")(_pool("average_pool"))


@converter("AdaptiveAvgPool2D")
def adaptive_avg_pool(ctx: MindContext):
    size = _ints(ctx.arg("output_size", 1))
    if any(s != 1 for s in size):
        raise ctx.unsupported(f"output size {size} (galaxir converts the global case, 1x1)")
    return ctx.op("global_average_pool", ctx.value(0))


# -- normalization and softmax ---------------------------------------------------------------------
@converter("BatchNorm")
def batch_norm(ctx: MindContext):
    if ctx.arg("is_training", 5, False):
        raise ctx.unsupported("training-mode batch norm (export the net after set_train(False))")
    fmt = _mode(ctx.arg("data_format", 8, ctx.arg("format", 99, "NCHW")), _FORMATS)
    if fmt != "NCHW":
        raise ctx.unsupported(f"format {fmt}")
    y = ctx.op("batch_norm", ctx.value(0), ctx.value(1), ctx.value(2), ctx.value(3),
               ctx.value(4), epsilon=float(ctx.arg("epsilon", 6, 1e-5)))
    return (y, None, None, None, None)


@converter("LayerNorm")
def layer_norm(ctx: MindContext):
    x = ctx.value(0)
    r = ctx.rank(x)
    axis = int(ctx.arg("begin_norm_axis", 3, -1))
    axis = axis + r if axis < 0 else axis
    if int(ctx.arg("begin_params_axis", 4, -1)) % r != axis:
        raise ctx.unsupported("begin_params_axis differs from begin_norm_axis")
    y = ctx.op("layer_norm", x, ctx.value(1), ctx.value(2), axis=axis,
               epsilon=float(ctx.arg("epsilon", 5, 1e-7)))
    return (y, None, None)


@converter("LayerNormExt")
def layer_norm_ext(ctx: MindContext):
    x = ctx.value(0)
    shape = _ints(ctx.arg("normalized_shape", 1))
    y = ctx.op("layer_norm", x, ctx.value(2), ctx.value(3), axis=ctx.rank(x) - len(shape),
               epsilon=float(ctx.arg("eps", 4, 1e-5)))
    return (y, None, None)


@converter("Softmax", "LogSoftmax")
def softmax(ctx: MindContext):
    axes = _ints(ctx.arg("axis", 1, -1))
    if len(axes) != 1:
        raise ctx.unsupported(f"softmax over several axes {axes}")
    return ctx.op("softmax" if ctx.op_type == "Softmax" else "log_softmax", ctx.value(0),
                  axis=axes[0])


# -- shape ops ------------------------------------------------------------------------------------------
@converter("Flatten")
def flatten(ctx: MindContext):
    return ctx.op("flatten", ctx.value(0), axis=1)


@converter("Reshape")
def reshape(ctx: MindContext):
    return ctx.op("reshape", ctx.value(0), ctx.i64(_ints(ctx.arg("shape", 1))))


@converter("Transpose")
def transpose(ctx: MindContext):
    return ctx.op("transpose", ctx.value(0), perm=_ints(ctx.arg("input_perm", 1)))


@converter("ExpandDims")
def expand_dims(ctx: MindContext):
    return ctx.op("unsqueeze", ctx.value(0), ctx.i64(_ints(ctx.arg("axis", 1))))


@converter("Squeeze")
def squeeze(ctx: MindContext):
    axes = _ints(ctx.arg("axis", 1, ()))
    x = ctx.value(0)
    return ctx.op("squeeze", x, ctx.i64(axes)) if axes else ctx.op("squeeze", x, None)


@converter("Concat")
def concat(ctx: MindContext):
    parts = ctx.inputs[0]
    if not isinstance(parts, tuple):
        raise ctx.unsupported("expects a tuple of tensors")
    axis = int(ctx.arg("axis", 1, 0))
    values = [ctx.tensor(p) for p in parts]
    return ctx.op("concat", *values, axis=axis)


@converter("Cast")
def cast(ctx: MindContext):
    code = ctx.arg("dst_type", 1)
    to = _TYPE_IDS.get(code) if isinstance(code, (int, np.integer)) else None
    if to is None:
        raise ctx.unsupported(f"cast to MindSpore type {code!r}, which galaxir has no dtype for")
    x = ctx.value(0)
    return x if x.type.dtype == to else ctx.op("cast", x, to=to)


#: MindSpore's TypeId codes (mindapi/base/type_id.h) of the number types, as a Cast's target
_TYPE_IDS = {30: DType.bool, 32: DType.int8, 33: DType.int16, 34: DType.int32, 35: DType.int64,
             37: DType.uint8, 42: DType.float16, 43: DType.float32, 44: DType.float64,
             45: DType.bfloat16}


@converter("ReverseV2")
def reverse(ctx: MindContext):
    x = ctx.value(0)
    axes = _ints(ctx.arg("axis", 1))
    big = np.iinfo(np.int64).max
    n = len(axes)
    return ctx.op("slice", x, ctx.i64([-1] * n), ctx.i64([-big] * n), ctx.i64(axes),
                  ctx.i64([-1] * n))


@converter("StridedSlice")
def strided_slice(ctx: MindContext):
    x = ctx.value(0)
    begin, end = _ints(ctx.arg("begin", 1)), _ints(ctx.arg("end", 2))
    strides = _ints(ctx.arg("strides", 3))
    bm, em = int(ctx.arg("begin_mask", 4, 0)), int(ctx.arg("end_mask", 5, 0))
    ellipsis, new_axis = int(ctx.arg("ellipsis_mask", 6, 0)), int(ctx.arg("new_axis_mask", 7, 0))
    shrink = int(ctx.arg("shrink_axis_mask", 8, 0))
    if ellipsis or new_axis:
        raise ctx.unsupported("ellipsis and new-axis masks")
    big = np.iinfo(np.int64).max
    starts, ends = [], []
    for i, (b0, e0, s) in enumerate(zip(begin, end, strides)):
        if bm >> i & 1:
            b0 = 0 if s > 0 else -1
        if em >> i & 1:
            e0 = big if s > 0 else -big
        if shrink >> i & 1:
            e0 = b0 + 1 if b0 != -1 else big
            s = 1
            strides[i] = 1
        starts.append(b0)
        ends.append(e0)
    axes = list(range(len(starts)))
    y = ctx.op("slice", x, ctx.i64(starts), ctx.i64(ends), ctx.i64(axes), ctx.i64(strides))
    squeeze_axes = [i for i in axes if shrink >> i & 1]
    return ctx.op("squeeze", y, ctx.i64(squeeze_axes)) if squeeze_axes else y


@converter("Gather")
def gather(ctx: MindContext):
    if int(ctx.arg("batch_dims", 3, 0)):
        raise ctx.unsupported("batch_dims")
    return ctx.op("gather", ctx.value(0), ctx.value(1, DType.int64), axis=int(ctx.arg("axis", 2, 0)))


def _reduce(gx: str):
    def convert(ctx: MindContext):
        x = ctx.value(0)
        axis = ctx.arg("axis", 1, ())
        axes = [] if axis is None else _ints(axis)  # None (SumExt's dim=None): all axes
        keep = bool(ctx.arg("keep_dims", 2, False))
        if len(ctx.inputs) > 3 and ctx.op_type.endswith("Ext") and ctx.inputs[3] is not None:
            raise ctx.unsupported("a dtype for the reduction")
        if not axes:
            axes = list(range(ctx.rank(x)))
        return ctx.op(gx, x, ctx.i64(axes), keepdims=int(keep))
    return convert


for _ms, _gx in {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
                 "ReduceMin": "reduce_min", "MeanExt": "reduce_mean", "SumExt": "reduce_sum"}.items():
    converter(_ms)(_reduce(_gx))


# -- recurrent --------------------------------------------------------------------------------------------
@converter("LSTM")
def lstm(ctx: MindContext):
    """MindSpore's LSTM primitive on one layer and one direction (``nn.LSTM`` exports one
    per layer and direction): x [seq, batch, in], h0/c0 [1, batch, H], and one flat weight
    holding W_ih [4H, in], W_hh [4H, H] and the summed bias [4H], gates i, f, g, o."""
    layers, bidir = int(ctx.arg("num_layers", 99, 1)), bool(ctx.arg("bidirectional", 99, False))
    if layers != 1 or bidir:
        raise ctx.unsupported("several layers or directions in one LSTM primitive")
    H, I = int(ctx.arg("hidden_size", 99)), int(ctx.arg("input_size", 99))
    has_bias = bool(ctx.arg("has_bias", 99, True))
    if float(ctx.arg("proj_size", 99, 0)):
        raise ctx.unsupported("projection (proj_size)")
    flat = ctx.op("reshape", ctx.value(3), ctx.i64([-1]))
    dt = flat.type.dtype
    order = ctx.i64(np.concatenate([np.arange(H) + k * H for k in (0, 3, 1, 2)]))  # ifgo -> iofc

    def part(start: int, size: int, shape: list[int]) -> Value:
        v = ctx.op("slice", flat, ctx.i64([start]), ctx.i64([start + size]), ctx.i64([0]), None)
        v = ctx.op("gather", ctx.op("reshape", v, ctx.i64(shape)), order, axis=0)
        return ctx.op("unsqueeze", v, ctx.i64([0]))

    W = part(0, 4 * H * I, [4 * H, I])
    R = part(4 * H * I, 4 * H * H, [4 * H, H])
    if has_bias:
        b = part(4 * H * (I + H), 4 * H, [4 * H])
        B = ctx.op("concat", b, ctx.tensor(np.zeros((1, 4 * H)), dt), axis=1)
    else:
        B = None
    y, hy, cy = ctx.op("lstm", ctx.value(0), W, R, B, None, ctx.value(1), ctx.value(2), None,
                       num_results=3, hidden_size=H)
    y = ctx.op("squeeze", y, ctx.i64([1]))
    return (y, hy, cy, None, None)


from . import control  # noqa: E402,F401  (Partial, Switch: registered with the rest)
