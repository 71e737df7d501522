"""Tensor-shaping TF ops: constants, reshapes, slicing, concatenation, padding, gathers."""
from __future__ import annotations

import numpy as np

from ....ir.types import DType
from ..importer import TfContext, converter

BIG = np.iinfo(np.int64).max


@converter("Const")
def const(ctx: TfContext):
    import tensorflow as tf
    value = tf.make_ndarray(ctx.tf_op.get_attr("value"))
    if value.dtype.kind in "SUO":
        raise ctx.unsupported("string constants")
    return ctx.const(np.array(value, order="C"))


@converter("Identity", "StopGradient", "PreventGradient", "Snapshot", "EnsureShape",
           "CheckNumerics")
def identity(ctx: TfContext):
    return ctx.inputs[0]


@converter("IdentityN")
def identity_n(ctx: TfContext):
    return list(ctx.inputs)


@converter("Reshape")
def reshape(ctx: TfContext):
    shape = _static_reshape(ctx)
    if shape is not None:
        return ctx.op("reshape", ctx.inputs[0], ctx.i64(shape), allowzero=0)
    return ctx.op("reshape", ctx.inputs[0], ctx.int64(ctx.inputs[1]), allowzero=1)


def _static_reshape(ctx: TfContext) -> list[int] | None:
    """The target shape as constants where TF computes it from dims of a dynamic-batch
    tensor (Keras' Flatten, squeeze-excitation and tensordot reshapes): 0 ("copy the
    input's dim") where it is ``tf.shape(x)[i]`` of the reshaped tensor itself at position i,
    -1 for one other unknown dim.  None when that does not describe it."""
    value = ctx.static(1)
    if value is not None:
        v = [int(d) for d in value.reshape(-1)]
        return None if 0 in v else v
    items = symbolic_ints(ctx.tf_op.inputs[1], ctx.dims)
    if items is None:
        return None
    src = ctx.dims(ctx.tf_op.inputs[0])
    out, unknown = [], 0
    for j, d in enumerate(items):
        if isinstance(d, int):
            if d == 0:
                return None
            out.append(d)
        elif isinstance(d, str) and d != "?" and src is not None and j < len(src) and src[j] == d:
            out.append(0)
        else:
            unknown += 1
            out.append(-1)
    return out if unknown <= 1 else None


def symbolic_ints(t, dims, depth: int = 0) -> list | None:
    """A small int tensor of TF shape arithmetic as a list of ints, symbolic dim names
    (galaxir's, from ``dims(tensor)``) or ``"?"``; None when not traceable."""
    import tensorflow as tf
    op = t.op
    if depth > 16:
        return None
    if op.type in ("Identity", "Cast"):
        return symbolic_ints(op.inputs[0], dims, depth + 1)
    if op.type == "Const":
        v = tf.make_ndarray(op.get_attr("value"))
        return [int(x) for x in v.reshape(-1)] if v.dtype.kind in "iu" else None
    if op.type == "Shape":
        return dims(op.inputs[0])
    if op.type in ("Pack", "ConcatV2"):
        parts = op.inputs if op.type == "Pack" else op.inputs[:-1]
        out = []
        for p in parts:
            v = symbolic_ints(p, dims, depth + 1)
            if v is None:
                return None
            out.extend(v)
        return out
    if op.type in ("GatherV2", "StridedSlice", "Prod"):
        base = symbolic_ints(op.inputs[0], dims, depth + 1)
        idx = symbolic_ints(op.inputs[1], dims, depth + 1)
        if base is None or idx is None or not all(isinstance(i, int) for i in idx):
            return None
        if op.type == "GatherV2":
            return [base[i] for i in idx]
        if op.type == "StridedSlice":
            if int(op.get_attr("shrink_axis_mask")) != 1 or len(idx) != 1:
                return None
            return [base[idx[0]]]
        if len(idx) != 1 or idx[0] != 0 or op.get_attr("keep_dims"):
            return None
        prod = 1
        for d in base:
            if not isinstance(d, int):
                return ["?"]
            prod *= d
        return [prod]
    return None


@converter("Transpose")
def transpose(ctx: TfContext):
    perm = [int(p) for p in ctx.need_static(1, "the permutation")]
    if perm == list(range(len(perm))):  # tf.tensordot's no-op transposes
        return ctx.inputs[0]
    return ctx.op("transpose", ctx.inputs[0], perm=perm)


@converter("ConcatV2")
def concat(ctx: TfContext):
    axis = int(ctx.need_static(len(ctx.inputs) - 1, "the axis"))
    parts = ctx.inputs[:-1]
    return parts[0] if len(parts) == 1 else ctx.op("concat", *parts, axis=axis)


@converter("Pack")
def pack(ctx: TfContext):
    axis = int(ctx.attr("axis", 0))
    parts = [ctx.op("unsqueeze", v, ctx.i64([axis])) for v in ctx.inputs]
    return parts[0] if len(parts) == 1 else ctx.op("concat", *parts, axis=axis)


@converter("Unpack")
def unpack(ctx: TfContext):
    axis, n = int(ctx.attr("axis", 0)), int(ctx.attr("num"))
    parts = ctx.op("split", ctx.inputs[0], ctx.i64([1] * n), axis=axis, num_results=n)
    parts = [parts] if n == 1 else list(parts)
    return [ctx.op("squeeze", p, ctx.i64([axis])) for p in parts]


@converter("Shape")
def shape(ctx: TfContext):
    s = ctx.op("shape", ctx.inputs[0])
    to = ctx.out_dtype()
    return s if to == DType.int64 else ctx.op("cast", s, to=to)


@converter("Size")
def size(ctx: TfContext):
    s = ctx.op("size", ctx.inputs[0])
    to = ctx.out_dtype()
    return s if to == DType.int64 else ctx.op("cast", s, to=to)


@converter("Rank")
def rank(ctx: TfContext):
    r = ctx.inputs[0].type.shape
    if r is None:
        raise ctx.unsupported("the rank of a tensor of unknown rank")
    return ctx.const(np.int32(len(r)))


@converter("Squeeze")
def squeeze(ctx: TfContext):
    dims = ctx.attr("squeeze_dims") or []
    if dims:
        return ctx.op("squeeze", ctx.inputs[0], ctx.i64(dims))
    return ctx.op("squeeze", ctx.inputs[0])


@converter("ExpandDims")
def expand_dims(ctx: TfContext):
    axis = ctx.need_static(1, "the axis").reshape(-1).astype(np.int64)
    return ctx.op("unsqueeze", ctx.inputs[0], ctx.i64(axis))


@converter("Pad", "PadV2", "MirrorPad")
def pad(ctx: TfContext):
    x, pads = ctx.inputs[0], ctx.need_static(1, "the paddings").astype(np.int64)
    flat = np.concatenate([pads[:, 0], pads[:, 1]])
    if not flat.any():
        return x
    value = ctx.inputs[2] if ctx.type == "PadV2" else None
    mode = "constant"
    if ctx.type == "MirrorPad":
        mode = {"REFLECT": "reflect", "SYMMETRIC": "symmetric"}.get(ctx.attr("mode"), "")
        if mode != "reflect":
            raise ctx.unsupported(f"MirrorPad mode {ctx.attr('mode')!r}")
    return ctx.op("pad", x, ctx.i64(flat), value, mode=mode)


@converter("GatherV2")
def gather(ctx: TfContext):
    axis = int(ctx.need_static(2, "the axis"))
    if int(ctx.attr("batch_dims", 0)):
        raise ctx.unsupported("batch_dims != 0")
    return ctx.op("gather", ctx.inputs[0], ctx.inputs[1], axis=axis)


@converter("Fill")
def fill(ctx: TfContext):
    return ctx.op("expand", ctx.inputs[1], ctx.int64(ctx.inputs[0]))


@converter("BroadcastTo")
def broadcast_to(ctx: TfContext):
    return ctx.op("expand", ctx.inputs[0], ctx.int64(ctx.inputs[1]))


@converter("Range")
def range_(ctx: TfContext):
    return ctx.op("range", *ctx.inputs[:3])


@converter("Tile")
def tile(ctx: TfContext):
    return ctx.op("tile", ctx.inputs[0], ctx.int64(ctx.inputs[1]))


@converter("Split")
def split(ctx: TfContext):
    axis = int(ctx.need_static(0, "the axis"))
    n = int(ctx.attr("num_split"))
    out = ctx.op("split", ctx.inputs[1], axis=axis, num_outputs=n, num_results=n)
    return [out] if n == 1 else list(out)


@converter("SplitV")
def split_v(ctx: TfContext):
    sizes = ctx.need_static(1, "the sizes").astype(np.int64)
    axis = int(ctx.need_static(2, "the axis"))
    n = len(sizes)
    if (sizes < 0).any():
        x = ctx.inputs[0].type.shape
        d = x[axis] if x is not None else None
        if not isinstance(d, int):
            raise ctx.unsupported("a -1 split size on a dim of unknown size")
        sizes = np.where(sizes < 0, d - sizes[sizes >= 0].sum(), sizes)
    out = ctx.op("split", ctx.inputs[0], ctx.i64(sizes), axis=axis, num_results=n)
    return [out] if n == 1 else list(out)


@converter("Slice")
def slice_(ctx: TfContext):
    x, begin, size = ctx.inputs
    begin = ctx.int64(begin)
    size = ctx.int64(size)
    # size -1 means "to the end"
    ends = ctx.op("where", ctx.op("less", size, ctx.i64(0)), ctx.i64(BIG),
                  ctx.op("add", begin, size))
    return ctx.op("slice", x, begin, ends)


@converter("StridedSlice")
def strided_slice(ctx: TfContext):
    x = ctx.inputs[0]
    begin = ctx.need_static(1, "begin").astype(np.int64)
    end = ctx.need_static(2, "end").astype(np.int64)
    strides = ctx.need_static(3, "strides").astype(np.int64)
    masks = {k: int(ctx.attr(k, 0)) for k in
             ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
    rank = len(x.type.shape) if x.type.shape is not None else None
    n = len(begin)
    starts, ends, axes, steps, shrink, new_axes = [], [], [], [], [], []
    dim = 0  # input axis
    out_axis = 0  # output axis before shrinking
    for i in range(n):
        bit = 1 << i
        if masks["ellipsis_mask"] & bit:
            if rank is None:
                raise ctx.unsupported("an ellipsis on a tensor of unknown rank")
            # the axes after the ellipsis that read input axes (new axes do not)
            rest = sum(1 for j in range(i + 1, n) if not masks["new_axis_mask"] & (1 << j))
            skip = rank - dim - rest
            dim += skip
            out_axis += skip
            continue
        if masks["new_axis_mask"] & bit:
            new_axes.append(out_axis)
            out_axis += 1
            continue
        s, e, st = int(begin[i]), int(end[i]), int(strides[i])
        if masks["shrink_axis_mask"] & bit:
            e = s + 1 if s != -1 else BIG
            st = 1
            shrink.append(out_axis)
        else:
            if masks["begin_mask"] & bit:
                s = 0 if st > 0 else BIG
            if masks["end_mask"] & bit:
                e = BIG if st > 0 else -BIG
        starts.append(s)
        ends.append(e)
        axes.append(dim)
        steps.append(st)
        dim += 1
        out_axis += 1
    y = x
    if axes:
        y = ctx.op("slice", x, ctx.i64(starts), ctx.i64(ends), ctx.i64(axes), ctx.i64(steps))
    # new axes are positions in the output before shrinking; insert then squeeze
    if new_axes:
        y = ctx.op("unsqueeze", y, ctx.i64(new_axes))
    if shrink:
        y = ctx.op("squeeze", y, ctx.i64(shrink))
    return y


@converter("ReverseV2")
def reverse(ctx: TfContext):
    """tf.reverse: a slice with step -1 on each axis."""
    axes = ctx.need_static(1, "the axes").reshape(-1).astype(np.int64)
    if not axes.size:
        return ctx.inputs[0]
    n, big = axes.size, np.iinfo(np.int64).max
    return ctx.op("slice", ctx.inputs[0], ctx.i64([-1] * n), ctx.i64([-big] * n), ctx.i64(axes),
                  ctx.i64([-1] * n))
