"""Neural-network TF ops: convolutions and pools (kept NHWC), batch norm, matmuls,
softmax and reductions."""
from __future__ import annotations

import numpy as np

from ....ir.types import DType
from ...nhwc import conv_nhwc, depthwise_to_mckk, hwio_to_mckk, pool_nhwc
from ..importer import TfContext, converter


def _nhwc_ints(ctx: TfContext, name: str, default: int = 1) -> list[int]:
    """The spatial entries of a 4-entry NHWC/NCHW list attribute (strides, dilations, ksize)."""
    v = list(ctx.attr(name) or [default] * 4)
    if ctx.attr("data_format", "NHWC").startswith("NC"):
        return [int(x) for x in v[2:]]
    return [int(x) for x in v[1:-1]]


def _check_nhwc(ctx: TfContext) -> None:
    fmt = ctx.attr("data_format", "NHWC")
    if fmt not in ("NHWC", "NWC", "NDHWC"):
        raise ctx.unsupported(f"data_format {fmt!r} (only channels-last graphs are converted; "
                              "TF on CPU makes NHWC)")


@converter("Conv2D")
def conv2d(ctx: TfContext):
    _check_nhwc(ctx)
    w = ctx.need_static(1, "the filter")
    x = ctx.inputs[0]
    c = x.type.shape[-1] if x.type.shape else None
    group = 1
    if isinstance(c, int) and c != w.shape[2]:  # grouped conv: filter [kh, kw, C/g, M]
        group = c // w.shape[2]
    return conv_nhwc(ctx.b, x, hwio_to_mckk(w), None, _nhwc_ints(ctx, "strides"),
                     _nhwc_ints(ctx, "dilations"), ctx.attr("padding"), group,
                     ctx.attr("explicit_paddings"))


@converter("DepthwiseConv2dNative")
def depthwise(ctx: TfContext):
    _check_nhwc(ctx)
    w = ctx.need_static(1, "the filter")
    return conv_nhwc(ctx.b, ctx.inputs[0], depthwise_to_mckk(w, w.shape[2]), None,
                     _nhwc_ints(ctx, "strides"), _nhwc_ints(ctx, "dilations"),
                     ctx.attr("padding"), int(w.shape[2]), ctx.attr("explicit_paddings"))


@converter("MaxPool", "AvgPool")
def pool(ctx: TfContext):
    _check_nhwc(ctx)
    kind = "max" if ctx.type == "MaxPool" else "avg"
    return pool_nhwc(ctx.b, kind, ctx.inputs[0], _nhwc_ints(ctx, "ksize"),
                     _nhwc_ints(ctx, "strides"), ctx.attr("padding"))


@converter("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def fused_batch_norm(ctx: TfContext):
    fmt = ctx.attr("data_format", "NHWC")
    if ctx.attr("is_training", False):
        raise ctx.unsupported("batch norm in training mode (freeze the model for inference)")
    x, scale, offset, mean, var = ctx.inputs[:5]
    y = ctx.op("batch_norm", x, scale, offset, mean, var, epsilon=float(ctx.attr("epsilon", 1e-3)),
               layout="NHWC" if fmt == "NHWC" else "NCHW")
    return [y, mean, var, mean, var, mean]


def _transposed(ctx: TfContext, i: int, flag: bool):
    v = ctx.inputs[i]
    if not flag:
        return v
    w = ctx.static(i)
    if w is not None:
        return ctx.const(np.ascontiguousarray(np.swapaxes(w, -1, -2)))
    r = len(v.type.shape)
    return ctx.op("transpose", v, perm=[*range(r - 2), r - 1, r - 2])


@converter("MatMul")
def matmul(ctx: TfContext):
    a = _transposed(ctx, 0, bool(ctx.attr("transpose_a", False)))
    b = _transposed(ctx, 1, bool(ctx.attr("transpose_b", False)))
    return ctx.op("matmul", a, b)


@converter("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
def batch_matmul(ctx: TfContext):
    a = _transposed(ctx, 0, bool(ctx.attr("adj_x", False)))
    b = _transposed(ctx, 1, bool(ctx.attr("adj_y", False)))
    return ctx.op("matmul", a, b)


@converter("Einsum")
def einsum(ctx: TfContext):
    return ctx.op("einsum", *ctx.inputs, equation=ctx.attr("equation").replace(" ", ""))


@converter("Softmax")
def softmax(ctx: TfContext):
    return ctx.op("softmax", ctx.inputs[0], axis=-1)


@converter("LogSoftmax")
def log_softmax(ctx: TfContext):
    return ctx.op("log_softmax", ctx.inputs[0], axis=-1)


_REDUCE = {"Mean": "reduce_mean", "Sum": "reduce_sum", "Max": "reduce_max", "Min": "reduce_min",
           "Prod": "reduce_prod", "All": "reduce_min", "Any": "reduce_max"}


@converter(*_REDUCE)
def reduce(ctx: TfContext):
    axes = ctx.need_static(1, "the reduction axes").reshape(-1).astype(np.int64)
    x = ctx.inputs[0]
    keep = int(bool(ctx.attr("keep_dims", False)))
    if axes.size == 0:
        return x
    boolean = ctx.type in ("All", "Any")
    if boolean:
        x = ctx.op("cast", x, to=DType.int8)
    y = ctx.op(_REDUCE[ctx.type], x, ctx.i64(axes), keepdims=keep)
    return ctx.op("cast", y, to=DType.bool) if boolean else y


@converter("ArgMax", "ArgMin")
def arg_max(ctx: TfContext):
    axis = int(ctx.need_static(1, "the axis"))
    y = ctx.op("argmax" if ctx.type == "ArgMax" else "argmin", ctx.inputs[0], axis=axis, keepdims=0)
    to = ctx.out_dtype()
    return y if to == y.type.dtype else ctx.op("cast", y, to=to)
