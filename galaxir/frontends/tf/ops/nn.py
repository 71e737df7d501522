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


def _const_of(t) -> np.ndarray | None:
    import tensorflow as tf
    op = t.op
    while op.type == "Identity":
        op = op.inputs[0].op
    return tf.make_ndarray(op.get_attr("value")) if op.type == "Const" else None


def _dilated(conv_op) -> tuple | None:
    """TF writes a dilated conv as SpaceToBatchND -> conv (VALID) -> BatchToSpaceND: the
    (dilations, padding, explicit NHWC paddings) of the one dilated conv it stands for."""
    s2b = conv_op.inputs[0].op
    if s2b.type != "SpaceToBatchND" or len(conv_op.outputs[0].consumers()) != 1:
        return None
    b2s = conv_op.outputs[0].consumers()[0]
    if b2s.type != "BatchToSpaceND":
        return None
    block, pads, crops = _const_of(s2b.inputs[1]), _const_of(s2b.inputs[2]), _const_of(b2s.inputs[2])
    if block is None or pads is None or crops is None or len(block) != 2 or \
            list(_const_of(b2s.inputs[1]) if _const_of(b2s.inputs[1]) is not None else []) != list(block):
        return None
    begin = pads[:, 0] - crops[:, 0]
    end = pads[:, 1] - crops[:, 1]
    if (begin < 0).any() or (end < 0).any():
        return None
    explicit = [0, 0, int(begin[0]), int(end[0]), int(begin[1]), int(end[1]), 0, 0]
    return [int(b) for b in block], "EXPLICIT", explicit


def _conv_geometry(ctx: TfContext):
    """(input, strides, dilations, padding, explicit paddings) of a conv op."""
    d = _dilated(ctx.tf_op)
    if d is not None:
        if _nhwc_ints(ctx, "strides") != [1, 1] or ctx.attr("padding") != "VALID":
            raise ctx.unsupported("a SpaceToBatchND-dilated conv with strides or padding")
        x = ctx.importer.env[ctx.tf_op.inputs[0].op.inputs[0].name]
        return x, [1, 1], d[0], d[1], d[2]
    return (ctx.inputs[0], _nhwc_ints(ctx, "strides"), _nhwc_ints(ctx, "dilations"),
            ctx.attr("padding"), ctx.attr("explicit_paddings"))


@converter("SpaceToBatchND")
def space_to_batch(ctx: TfContext):
    for c in ctx.tf_op.outputs[0].consumers():
        if c.type not in ("Conv2D", "DepthwiseConv2dNative") or _dilated(c) is None:
            raise ctx.unsupported("SpaceToBatchND other than around a dilated conv")
    return ctx.inputs[0]  # the conv reads the original input with dilations instead


@converter("BatchToSpaceND")
def batch_to_space(ctx: TfContext):
    conv = ctx.tf_op.inputs[0].op
    if conv.type not in ("Conv2D", "DepthwiseConv2dNative") or _dilated(conv) is None:
        raise ctx.unsupported("BatchToSpaceND other than around a dilated conv")
    return ctx.inputs[0]


@converter("Conv2D")
def conv2d(ctx: TfContext):
    _check_nhwc(ctx)
    w = ctx.need_static(1, "the filter")
    x, strides, dilations, padding, explicit = _conv_geometry(ctx)
    c = x.type.shape[-1] if x.type.shape else None
    group = 1
    if isinstance(c, int) and c != w.shape[2]:  # grouped conv: filter [kh, kw, C/g, M]
        group = c // w.shape[2]
    return conv_nhwc(ctx.b, x, hwio_to_mckk(w), None, strides, dilations, padding, group, explicit)


@converter("DepthwiseConv2dNative")
def depthwise(ctx: TfContext):
    _check_nhwc(ctx)
    w = ctx.need_static(1, "the filter")
    x, strides, dilations, padding, explicit = _conv_geometry(ctx)
    return conv_nhwc(ctx.b, x, depthwise_to_mckk(w, w.shape[2]), None, strides, dilations,
                     padding, int(w.shape[2]), explicit)


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
