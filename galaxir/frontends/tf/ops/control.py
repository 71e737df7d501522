"""TF control flow: functional While and If (from tf.while_loop / tf.cond and Keras RNNs)."""
from __future__ import annotations

from ..importer import TfContext, convert_function, converter


@converter("PartitionedCall", "StatefulPartitionedCall")
def partitioned_call(ctx: TfContext):
    """A function call: its body is inlined."""
    return convert_function(ctx, ctx.tf_op.get_attr("f").name, list(ctx.inputs), ctx.b.block)


def _bool_scalar(ctx: TfContext, v):
    from ....ir.types import DType
    if v.type.dtype != DType.bool:
        v = ctx.op("not", ctx.op("equal", v, ctx.const(0, v.type.dtype.numpy)))
    if v.type.shape != ():
        v = ctx.op("reshape", v, ctx.i64([]))
    return v


@converter("If", "StatelessIf")
def if_(ctx: TfContext):
    """tf.cond: an ``if`` whose branches are the two functions, reading the If's inputs
    from the enclosing scope."""
    cond = _bool_scalar(ctx, ctx.inputs[0])
    args = list(ctx.inputs[1:])
    regions = [ctx.b.region((), lambda rb, key=key: convert_function(
        ctx, ctx.tf_op.get_attr(key).name, args, rb.block))
        for key in ("then_branch", "else_branch")]
    out = ctx.b.create("if", cond, regions=regions).results
    return list(out)


@converter("While", "StatelessWhile")
def while_(ctx: TfContext):
    """tf.while_loop: a ``loop`` with no trip count whose condition is the cond function,
    evaluated once on the initial values and again at the end of every iteration."""
    from ....ir.ops.control import relax_type
    from ....ir.types import DType, TensorType
    cond_fn, body_fn = ctx.tf_op.get_attr("cond").name, ctx.tf_op.get_attr("body").name
    init = list(ctx.inputs)
    (c0,) = convert_function(ctx, cond_fn, init, ctx.b.block)
    c0 = _bool_scalar(ctx, c0)
    scalar = (TensorType(DType.int64, ()), TensorType(DType.bool, ()))

    def body(rb, _i, _c, *carried):
        outs = convert_function(ctx, body_fn, list(carried), rb.block)
        (c,) = convert_function(ctx, cond_fn, outs, rb.block)
        saved, ctx.b = ctx.b, rb
        try:
            c = _bool_scalar(ctx, c)
        finally:
            ctx.b = saved
        return [c, *outs]

    types = [v.type for v in init]
    try:
        region = ctx.b.region((*scalar, *types), body)
        op = ctx.b.create("loop", None, c0, *init, regions=[region])
    except Exception:  # a loop value changes shape between iterations
        region = ctx.b.region((*scalar, *[relax_type(t) for t in types]), body)
        op = ctx.b.create("loop", None, c0, *init, regions=[region])
    return list(op.results)
