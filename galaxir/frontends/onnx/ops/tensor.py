"""Converters for the tensor manipulation and shape ops (Reshape, Slice, Gather, Pad, ...).

Older opsets passed some operands as attributes (Reshape-1 shape, Slice-1 starts/ends/axes,
Squeeze/Unsqueeze-1/11 axes, Split-2/11 split, Pad-2 pads, TopK-1 k); those become constant
operands so the IR only knows the newest form.
"""
from __future__ import annotations

import numpy as np

from ....ir.types import DType
from ..importer import converter


def _i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _inputs(ctx, n: int) -> list:
    """The first ``n`` inputs, None-padded."""
    return [ctx.input(i) for i in range(n)]


@converter("Reshape")
def reshape(ctx):
    shape = ctx.input(1)
    if ctx.opset < 5:
        if "shape" not in ctx.attrs:
            raise ctx.unsupported("Reshape-1 needs a 'shape' attribute")
        shape = ctx.constant(_i64(ctx.attrs["shape"]))
    return [ctx.op("reshape", ctx.input(0), shape, allowzero=ctx.attr("allowzero", 0))]


@converter("Transpose")
def transpose(ctx):
    return [ctx.op("transpose", ctx.input(0), perm=ctx.attr("perm"))]


@converter("Concat")
def concat(ctx):
    axis = ctx.attr("axis", 1 if ctx.opset < 4 else None)
    if axis is None:
        raise ctx.unsupported("Concat needs an 'axis' attribute")
    return [ctx.op("concat", *[v for v in ctx.inputs if v is not None], axis=axis)]


@converter("Split")
def split(ctx):
    n = ctx.num_outputs
    sizes = ctx.input(1)
    if sizes is None and "split" in ctx.attrs and ctx.attrs["split"]:
        sizes = ctx.constant(_i64(ctx.attrs["split"]))
    num = ctx.attr("num_outputs")
    if sizes is None and num is None:
        num = n  # equal parts (Split < 18): same as num_outputs when the dim divides
    outs = ctx.op("split", ctx.input(0), sizes, num_results=n, axis=ctx.attr("axis", 0),
                  num_outputs=num if sizes is None else None)
    return list(outs) if isinstance(outs, tuple) else [outs]


def _axes_operand(ctx):
    if ctx.opset < 13:
        axes = ctx.attr("axes")
        return None if axes is None else ctx.constant(_i64(axes))
    return ctx.input(1)


@converter("Squeeze")
def squeeze(ctx):
    return [ctx.op("squeeze", ctx.input(0), _axes_operand(ctx))]


@converter("Unsqueeze")
def unsqueeze(ctx):
    axes = _axes_operand(ctx)
    if axes is None:
        raise ctx.unsupported("Unsqueeze needs axes")
    return [ctx.op("unsqueeze", ctx.input(0), axes)]


@converter("Flatten")
def flatten(ctx):
    return [ctx.op("flatten", ctx.input(0), axis=ctx.attr("axis", 1))]


@converter("Expand")
def expand(ctx):
    return [ctx.op("expand", ctx.input(0), ctx.input(1))]


@converter("Tile")
def tile(ctx):
    if ctx.opset < 6:  # Tile-1: (input, tiles, axis) repeats one axis
        tiles, axis = ctx.const(1), ctx.const(2)
        rank = ctx.input(0).type.rank
        if tiles is None or axis is None or rank is None:
            raise ctx.unsupported("Tile-1 needs constant tiles/axis and an input of known rank")
        reps = [1] * rank
        reps[int(np.asarray(axis).reshape(-1)[0])] = int(np.asarray(tiles).reshape(-1)[0])
        return [ctx.op("tile", ctx.input(0), ctx.constant(_i64(reps)))]
    return [ctx.op("tile", ctx.input(0), ctx.input(1))]


@converter("Slice")
def slice_(ctx):
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        if starts is None or ends is None:
            raise ctx.unsupported("Slice-1 needs 'starts' and 'ends' attributes")
        axes = ctx.attr("axes")
        return [ctx.op("slice", ctx.input(0), ctx.constant(_i64(starts)), ctx.constant(_i64(ends)),
                       None if axes is None else ctx.constant(_i64(axes)))]
    return [ctx.op("slice", *_inputs(ctx, 5))]


@converter("Gather")
def gather(ctx):
    return [ctx.op("gather", ctx.input(0), ctx.input(1), axis=ctx.attr("axis", 0))]


@converter("GatherElements")
def gather_elements(ctx):
    return [ctx.op("gather_elements", ctx.input(0), ctx.input(1), axis=ctx.attr("axis", 0))]


@converter("GatherND")
def gather_nd(ctx):
    return [ctx.op("gather_nd", ctx.input(0), ctx.input(1), batch_dims=ctx.attr("batch_dims", 0))]


@converter("Scatter", "ScatterElements")
def scatter_elements(ctx):
    return [ctx.op("scatter_elements", *_inputs(ctx, 3), axis=ctx.attr("axis", 0),
                   reduction=ctx.attr("reduction", "none"))]


@converter("ScatterND")
def scatter_nd(ctx):
    return [ctx.op("scatter_nd", *_inputs(ctx, 3), reduction=ctx.attr("reduction", "none"))]


@converter("TensorScatter")
def tensor_scatter(ctx):
    return [ctx.op("tensor_scatter", *_inputs(ctx, 3), mode=ctx.attr("mode", "linear"),
                   axis=ctx.attr("axis", -2))]


@converter("Shape")
def shape(ctx):
    return [ctx.op("shape", ctx.input(0), start=ctx.attr("start", 0), end=ctx.attr("end"))]


@converter("Size")
def size(ctx):
    return [ctx.op("size", ctx.input(0))]


@converter("ConstantOfShape")
def constant_of_shape(ctx):
    value = ctx.attr("value")
    if value is None:
        value = np.zeros((1,), np.float32)
    return [ctx.op("constant_of_shape", ctx.input(0), value=np.asarray(value).reshape(1))]


@converter("Range")
def range_(ctx):
    return [ctx.op("range", *_inputs(ctx, 3))]


@converter("Pad")
def pad(ctx):
    mode = ctx.attr("mode", "constant")
    x = ctx.input(0)
    if ctx.opset < 11:  # pads (paddings in Pad-1) and value are attributes
        pads = ctx.attr("pads", ctx.attr("paddings"))
        if pads is None:
            raise ctx.unsupported("Pad needs a 'pads' attribute")
        dt = x.type.dtype.numpy if hasattr(x.type, "dtype") and x.type.dtype is not DType.string else np.float32
        value = ctx.constant(np.asarray(ctx.attr("value", 0.0)).astype(dt))
        return [ctx.op("pad", x, ctx.constant(_i64(pads)), value, mode=mode)]
    return [ctx.op("pad", *_inputs(ctx, 4), mode=mode)]


@converter("Compress")
def compress(ctx):
    return [ctx.op("compress", ctx.input(0), ctx.input(1), axis=ctx.attr("axis"))]


@converter("NonZero")
def non_zero(ctx):
    return [ctx.op("non_zero", ctx.input(0))]


@converter("OneHot")
def one_hot(ctx):
    return [ctx.op("one_hot", *_inputs(ctx, 3), axis=ctx.attr("axis", -1))]


@converter("EyeLike")
def eye_like(ctx):
    dt = ctx.attr("dtype")
    return [ctx.op("eye_like", ctx.input(0), dtype=None if dt is None else DType.from_onnx(dt),
                   k=ctx.attr("k", 0))]


@converter("Trilu")
def trilu(ctx):
    return [ctx.op("trilu", ctx.input(0), ctx.input(1), upper=ctx.attr("upper", 1))]


@converter("DepthToSpace")
def depth_to_space(ctx):
    return [ctx.op("depth_to_space", ctx.input(0), blocksize=ctx.attr("blocksize"),
                   mode=ctx.attr("mode", "DCR"))]


@converter("SpaceToDepth")
def space_to_depth(ctx):
    return [ctx.op("space_to_depth", ctx.input(0), blocksize=ctx.attr("blocksize"),
                   mode=ctx.attr("mode", "DCR"))]


@converter("CenterCropPad")
def center_crop_pad(ctx):
    return [ctx.op("center_crop_pad", ctx.input(0), ctx.input(1), axes=ctx.attr("axes"))]


@converter("ReverseSequence")
def reverse_sequence(ctx):
    return [ctx.op("reverse_sequence", ctx.input(0), ctx.input(1), batch_axis=ctx.attr("batch_axis", 1),
                   time_axis=ctx.attr("time_axis", 0))]


@converter("Unique")
def unique(ctx):
    return list(ctx.op("unique", ctx.input(0), sorted=ctx.attr("sorted", 1), axis=ctx.attr("axis")))


@converter("TopK")
def top_k(ctx):
    k = ctx.input(1)
    if ctx.opset < 10:
        k = ctx.constant(_i64([ctx.attr("k")]))
    return list(ctx.op("top_k", ctx.input(0), k, axis=ctx.attr("axis", -1),
                       largest=ctx.attr("largest", 1), sorted=ctx.attr("sorted", 1)))


@converter("CumSum")
def cumsum(ctx):
    return [ctx.op("cumsum", ctx.input(0), ctx.input(1), exclusive=ctx.attr("exclusive", 0),
                   reverse=ctx.attr("reverse", 0))]


@converter("CumProd")
def cumprod(ctx):
    return [ctx.op("cumprod", ctx.input(0), ctx.input(1), exclusive=ctx.attr("exclusive", 0),
                   reverse=ctx.attr("reverse", 0))]


@converter("Col2Im")
def col2im(ctx):
    return [ctx.op("col2im", *_inputs(ctx, 3), dilations=ctx.attr("dilations"), pads=ctx.attr("pads"),
                   strides=ctx.attr("strides"))]
