"""Converters for reductions, ArgMax/ArgMin, the softmax family, normalizations and losses.

Older opsets are upgraded to the newest semantics here: reduction axes given as an
attribute become a constant operand; Softmax/LogSoftmax/Hardmax before opset 13 (which
flattened the input to 2-D at ``axis``) become a reshape around the newest form unless
that is the same thing; GroupNormalization-18 per-group scale/bias become per-channel;
BatchNormalization training mode becomes reductions feeding inference batch_norm.
"""
from __future__ import annotations

import numpy as np

from ....errors import ShapeInferenceError
from ....ir.types import DType, TensorType
from ..importer import converter, simple

# ONNX op -> (galaxir op, first opset where axes is an input)
REDUCTIONS = {
    "ReduceSum": ("reduce_sum", 13), "ReduceMean": ("reduce_mean", 18),
    "ReduceMax": ("reduce_max", 18), "ReduceMin": ("reduce_min", 18),
    "ReduceProd": ("reduce_prod", 18), "ReduceL1": ("reduce_l1", 18),
    "ReduceL2": ("reduce_l2", 18), "ReduceLogSum": ("reduce_log_sum", 18),
    "ReduceLogSumExp": ("reduce_log_sum_exp", 18), "ReduceSumSquare": ("reduce_sum_square", 18),
}


def _axes_const(ctx, axes) -> "object":
    return ctx.constant(np.asarray(list(axes), dtype=np.int64))


def reduce(ctx, gx_name: str, x, axes, keepdims: int = 1, noop: int = 0):
    """Emit a reduction; ``axes`` is a Value, a sequence of ints, or None (all axes)."""
    if axes is not None and not hasattr(axes, "type"):
        axes = _axes_const(ctx, axes)
    kw = {}
    if not keepdims:
        kw["keepdims"] = 0
    if noop:
        kw["noop_with_empty_axes"] = 1
    operands = [x] if axes is None else [x, axes]
    return ctx.op(gx_name, *operands, **kw)


def _make_reduce(gx_name: str, axes_input_since: int):
    def convert(ctx):
        keep = ctx.attr("keepdims", 1)
        noop = ctx.attr("noop_with_empty_axes", 0)
        if ctx.opset < axes_input_since:
            axes = ctx.attr("axes")
            axes = list(axes) if axes else None
        else:
            axes = ctx.input(1)
        return [reduce(ctx, gx_name, ctx.inputs[0], axes, keep, noop)]
    return convert


for _onnx, (_gx, _since) in REDUCTIONS.items():
    converter(_onnx)(_make_reduce(_gx, _since))


def _make_arg(gx_name: str):
    def convert(ctx):
        kw = {"axis": ctx.attr("axis", 0), "keepdims": ctx.attr("keepdims", 1)}
        if ctx.attr("select_last_index", 0):
            kw["select_last_index"] = 1
        return [ctx.op(gx_name, ctx.inputs[0], **kw)]
    return convert


converter("ArgMax")(_make_arg("argmax"))
converter("ArgMin")(_make_arg("argmin"))


# -- softmax family ------------------------------------------------------------------------------
def _make_softmax_like(gx_name: str):
    """Opset >= 13: along ``axis`` (default -1).  Before: the input is coerced to 2-D
    [prod(shape[:axis]), prod(shape[axis:])] (default axis 1) and the op runs on rows."""
    def convert(ctx):
        x = ctx.inputs[0]
        if ctx.opset >= 13:
            return [ctx.op(gx_name, x, axis=ctx.attr("axis", -1))]
        axis = ctx.attr("axis", 1)
        t = x.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise ctx.unsupported(f"{ctx.op_type}-{ctx.opset} (2-D coercion at axis {axis}) "
                                  "needs the input rank")
        rank = len(t.shape)
        if rank == 0:
            raise ctx.unsupported(f"{ctx.op_type} of a scalar")
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis <= rank:
            raise ctx.unsupported(f"axis {ctx.attr('axis')} out of range for rank {rank}")
        if axis == rank - 1 or (axis < rank and all(d == 1 for d in t.shape[axis + 1:])):
            return [ctx.op(gx_name, x, axis=axis)]  # same as the newest semantics
        if t.is_static:
            rows = int(np.prod(t.shape[:axis], dtype=np.int64))
            cols = int(np.prod(t.shape[axis:], dtype=np.int64))
            flat = ctx.op("reshape", x, ctx.constant(np.asarray([rows, cols], np.int64)))
            back = ctx.constant(np.asarray(t.shape, np.int64))
        else:
            flat = ctx.op("flatten", x, axis=axis)
            back = ctx.op("shape", x)
        y = ctx.op(gx_name, flat, axis=1)
        return [ctx.op("reshape", y, back)]
    return convert


converter("Softmax")(_make_softmax_like("softmax"))
converter("LogSoftmax")(_make_softmax_like("log_softmax"))
converter("Hardmax")(_make_softmax_like("hardmax"))


# -- normalizations ------------------------------------------------------------------------------
def _scalar(ctx, value, dtype: DType):
    return ctx.constant(np.asarray(value, dtype=dtype.numpy))


def _dtype(v) -> DType:
    return v.type.dtype if isinstance(v.type, TensorType) else DType.float32


def _as_dtype(ctx, v, dt: DType):
    """``v`` cast to ``dt``: ONNX lets normalization parameters have their own float type
    (BatchNormalization's T1/T2, RMSNormalization's V); galaxir's ops take X's."""
    return v if v is None or _dtype(v) == dt else ctx.op("cast", v, to=dt)


def _same_dtype(ctx, **named) -> None:
    """The ONNX type constraint that the named inputs share one element type."""
    (n0, v0), *rest = [(n, v) for n, v in named.items() if v is not None]
    for n, v in rest:
        if _dtype(v) != _dtype(v0):
            raise ShapeInferenceError(
                f"ONNX node '{ctx.name}' ({ctx.op_type}): input {n} is {_dtype(v).name} but "
                f"{n0} is {_dtype(v0).name}: {', '.join(named)} must share one element type")


@converter("BatchNormalization")
def batch_norm(ctx):
    x, scale, bias, mean, var = ctx.inputs[:5]
    eps = ctx.attr("epsilon", 1e-5)
    rank = x.type.rank if isinstance(x.type, TensorType) else None
    if ctx.opset < 9 and ctx.attr("spatial", 1) == 0:
        # per-activation statistics: params are [C, D1, ...] and broadcast against x
        inv = ctx.op("div", scale, ctx.op("sqrt", ctx.op("add", var, _scalar(ctx, eps, _dtype(var)))))
        y = ctx.op("add", ctx.op("mul", ctx.op("sub", x, mean), inv), bias)
        return [y] + [None] * (ctx.num_outputs - 1)
    training = ctx.opset >= 14 and ctx.attr("training_mode", 0) == 1
    if ctx.opset >= 15:  # scale and B share type T1, mean and var T2 (each may differ from X's)
        _same_dtype(ctx, scale=scale, B=bias)
        _same_dtype(ctx, input_mean=mean, input_var=var)
        scale, bias = _as_dtype(ctx, scale, _dtype(x)), _as_dtype(ctx, bias, _dtype(x))
    if not training:
        stats = [mean, var] if ctx.opset < 15 else [_as_dtype(ctx, p, _dtype(x)) for p in (mean, var)]
        y = ctx.op("batch_norm", x, scale, bias, *stats, epsilon=eps)
        return [y] + [None] * (ctx.num_outputs - 1)
    if rank is None:
        raise ctx.unsupported("training_mode=1 needs the input rank")
    # training mode: normalize with the batch statistics; update the running ones
    axes = [0] + list(range(2, rank))
    bmean = reduce(ctx, "reduce_mean", x, axes, keepdims=0)
    bmean_k = reduce(ctx, "reduce_mean", x, axes, keepdims=1)
    d = ctx.op("sub", x, bmean_k)
    bvar = reduce(ctx, "reduce_mean", ctx.op("mul", d, d), axes, keepdims=0)
    y = ctx.op("batch_norm", x, scale, bias, bmean, bvar, epsilon=eps)
    outs = [y]
    if ctx.num_outputs > 1:
        m = ctx.attr("momentum", 0.9)
        dt = _dtype(mean)

        def running(old, new):
            new = new if _dtype(new) == dt else ctx.op("cast", new, to=dt)
            return ctx.op("add", ctx.op("mul", old, _scalar(ctx, m, dt)),
                          ctx.op("mul", new, _scalar(ctx, 1.0 - m, dt)))
        outs += [running(mean, bmean), running(var, bvar)]
    return outs + [None] * (ctx.num_outputs - len(outs))


@converter("LayerNormalization")
def layer_norm(ctx):
    x, scale = ctx.inputs[:2]
    bias = ctx.input(2)
    axis = ctx.attr("axis", -1)
    eps = ctx.attr("epsilon", 1e-5)
    stash = ctx.attr("stash_type", 1)
    kw = {"axis": axis, "epsilon": eps}
    if stash != 1:
        kw["stash_type"] = stash
    operands = [x, scale] + ([bias] if bias is not None else [])
    y = ctx.op("layer_norm", *operands, **kw)
    want = [i for i in (1, 2) if i < ctx.num_outputs and ctx.node.output[i]]
    if not want:
        return [y]
    # Mean and InvStdDev outputs: the statistics, from core ops, in the stash type
    rank = x.type.rank if isinstance(x.type, TensorType) else None
    if rank is None:
        raise ctx.unsupported("the Mean/InvStdDev outputs need the input rank")
    axis = axis + rank if axis < 0 else axis
    axes = list(range(axis, rank))
    xs = x
    if stash == 1 and _dtype(x) != DType.float32:
        xs = ctx.op("cast", x, to=DType.float32)
    dt = _dtype(xs)
    mean = reduce(ctx, "reduce_mean", xs, axes)
    d = ctx.op("sub", xs, mean)
    var = reduce(ctx, "reduce_mean", ctx.op("mul", d, d), axes)
    inv = ctx.op("reciprocal", ctx.op("sqrt", ctx.op("add", var, _scalar(ctx, eps, dt))))
    return [y, mean, inv][:ctx.num_outputs]


@converter("GroupNormalization")
def group_norm(ctx):
    x, scale, bias = ctx.inputs[:3]
    g = ctx.attr("num_groups")
    if g is None:
        raise ctx.unsupported("num_groups is required")
    kw = {"num_groups": g, "epsilon": ctx.attr("epsilon", 1e-5)}
    if ctx.attr("stash_type", 1) != 1:
        kw["stash_type"] = ctx.attr("stash_type")
    if ctx.opset < 21:  # scale and bias were per group: repeat them per channel
        c = x.type.shape[1] if isinstance(x.type, TensorType) and x.type.shape else None
        if not isinstance(c, int) or c % g:
            raise ctx.unsupported(f"GroupNormalization-{ctx.opset} (per-group scale) needs a "
                                  "static channel count divisible by num_groups")
        scale, bias = (_per_channel(ctx, v, g, c // g) for v in (scale, bias))
    return [ctx.op("group_norm", x, scale, bias, **kw)]


def _per_channel(ctx, v, groups: int, per: int):
    val = ctx.const(ctx.inputs.index(v))
    if val is not None:
        return ctx.constant(np.repeat(np.asarray(val), per))
    col = ctx.op("reshape", v, ctx.constant(np.asarray([groups, 1], np.int64)))
    rep = ctx.op("expand", col, ctx.constant(np.asarray([groups, per], np.int64)))
    return ctx.op("reshape", rep, ctx.constant(np.asarray([groups * per], np.int64)))


@converter("InstanceNormalization")
def instance_norm(ctx):
    return [ctx.op("instance_norm", *ctx.inputs[:3], epsilon=ctx.attr("epsilon", 1e-5))]


@converter("RMSNormalization")
def rms_norm(ctx):
    kw = {"axis": ctx.attr("axis", -1), "epsilon": ctx.attr("epsilon", 1e-5)}
    if ctx.attr("stash_type", 1) != 1:
        kw["stash_type"] = ctx.attr("stash_type")
    x, scale = ctx.inputs[:2]
    return [ctx.op("rms_norm", x, _as_dtype(ctx, scale, _dtype(x)), **kw)]


@converter("LpNormalization")
def lp_norm(ctx):
    p = ctx.attr("p", 2)
    if p not in (1, 2):
        raise ctx.unsupported(f"p={p} (only 1 and 2 are defined)")
    return [ctx.op("lp_norm", ctx.inputs[0], axis=ctx.attr("axis", -1), p=p)]


@converter("MeanVarianceNormalization")
def mean_variance_norm(ctx):
    axes = ctx.attr("axes", (0, 2, 3))
    return [ctx.op("mean_variance_norm", ctx.inputs[0], axes=tuple(axes))]


simple("LRN", "lrn")


# -- losses ------------------------------------------------------------------------------------
def _loss_attrs(ctx) -> dict:
    kw = {"reduction": ctx.attr("reduction", "mean")}
    if ctx.attr("ignore_index") is not None:
        kw["ignore_index"] = ctx.attr("ignore_index")
    return kw


@converter("NegativeLogLikelihoodLoss")
def nll_loss(ctx):
    return [ctx.op("negative_log_likelihood_loss", *ctx.inputs[:3], **_loss_attrs(ctx))]


@converter("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(ctx):
    """log_softmax over the class axis, then the NLL loss; log_prob is the second output."""
    scores, labels = ctx.inputs[:2]
    weights = ctx.input(2)
    log_prob = ctx.op("log_softmax", scores, axis=1)
    operands = [log_prob, labels] + ([weights] if weights is not None else [])
    loss = ctx.op("negative_log_likelihood_loss", *operands, **_loss_attrs(ctx))
    return [loss, log_prob][:ctx.num_outputs]
