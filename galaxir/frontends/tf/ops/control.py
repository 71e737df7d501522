"""TF control flow: functional While and If (from tf.while_loop / tf.cond and Keras RNNs)."""
from __future__ import annotations

from ....errors import ModelImportError, UnsupportedOpError
from ....ir import Value
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


def _source(t):
    """The TF tensor ``t`` is an Identity chain of."""
    while t.op.type == "Identity":
        t = t.op.inputs[0]
    return t


def _const(t):
    import numpy as np
    from tensorflow.python.framework import tensor_util
    t = _source(t)
    return np.asarray(tensor_util.MakeNdarray(t.op.get_attr("value"))) if t.op.type == "Const" \
        else None


def _is_counter(ctx: TfContext, body, j: int) -> bool:
    """Whether loop value j starts at 0 and the body adds 1 to it: it is the iteration number."""
    init = ctx.static(j)
    if init is None or init.size != 1 or init.reshape(-1)[0] != 0:
        return False
    out = _source(body.outputs[j])
    if out.op.type not in ("AddV2", "Add"):
        return False
    a, b = out.op.inputs
    if _source(b) is body.inputs[j]:
        a, b = b, a
    one = _const(b)
    return _source(a) is body.inputs[j] and one is not None and one.size == 1 and \
        one.reshape(-1)[0] == 1


def _plan(ctx: TfContext, body) -> dict[int, str]:
    """How each loop value is passed: 'invariant' (the body returns it unchanged: read from
    the enclosing scope), 'scan' (a reserved TensorList the body writes at the iteration
    number: a scan output), 'last' (a one-element reserved TensorList the body overwrites
    at index 0: the last scan output), else 'carried'."""
    from .tensorlist import ReservedList
    plan = {}
    for k, v in enumerate(ctx.inputs):
        out = _source(body.outputs[k])
        if isinstance(v, ReservedList):
            if out.op.type != "TensorListSetItem" or _source(out.op.inputs[0]) is not body.inputs[k]:
                raise ctx.unsupported(f"loop value {k} is the TensorList '{v.node}', which the "
                                      "body does not write with TensorListSetItem")
            idx = _source(out.op.inputs[1])
            c = _const(idx)
            j = next((i for i, t in enumerate(body.inputs) if t is idx), None)
            if j is not None and _is_counter(ctx, body, j):
                plan[k] = "scan"
            elif c is not None and c.size == 1 and c.reshape(-1)[0] == 0 and v.num_elements == 1:
                plan[k] = "last"
            else:
                raise ctx.unsupported(f"the TensorList '{v.node}' is written at an index that "
                                      "is neither the iteration number nor a constant 0 of a "
                                      "one-element list")
        elif out is body.inputs[k]:
            plan[k] = "invariant"
        else:
            plan[k] = "carried"
    return plan


@converter("While", "StatelessWhile")
def while_(ctx: TfContext):
    """tf.while_loop: a ``loop`` with no trip count whose condition is the cond function,
    evaluated once on the initial values and again at the end of every iteration.

    Values the body returns unchanged (weights, bounds) are read from the enclosing scope
    rather than carried; TensorLists the body fills one element per iteration (Keras RNN
    outputs) become the loop's scan outputs."""
    from ....ir.ops.control import relax_type
    from ....ir.types import DType, TensorType
    from .tensorlist import ReservedList, WrittenItem
    cond_fn, body_fn = ctx.tf_op.get_attr("cond").name, ctx.tf_op.get_attr("body").name
    body_graph = ctx.importer.library.graph(body_fn)
    init = list(ctx.inputs)
    if len(body_graph.inputs) != len(init) or len(body_graph.outputs) != len(init):
        raise ctx.unsupported(f"the body '{body_fn}' takes {len(body_graph.inputs)} and returns "
                              f"{len(body_graph.outputs)} values for {len(init)} loop values")
    plan = _plan(ctx, body_graph)
    from .rnn import recognize
    out = recognize(ctx, body_graph, ctx.importer.library.graph(cond_fn), plan)
    if out is not None:
        return out
    carried = [k for k in range(len(init)) if plan[k] == "carried"]
    lists = [k for k in range(len(init)) if plan[k] in ("scan", "last")]
    for k in carried:
        if not isinstance(init[k], Value):
            raise ctx.unsupported(f"loop value {k} is not a tensor")
    (c0,) = convert_function(ctx, cond_fn, init, ctx.b.block)
    c0 = _bool_scalar(ctx, c0)
    scalar = (TensorType(DType.int64, ()), TensorType(DType.bool, ()))

    def body(rb, _i, _c, *args):
        vals = list(init)
        for k, a in zip(carried, args):
            vals[k] = a
        for k in lists:
            vals[k] = ReservedList(init[k].node, init[k].num_elements, init[k].dtype)
        outs = convert_function(ctx, body_fn, vals, rb.block)
        written = []
        for k in lists:
            if not isinstance(outs[k], WrittenItem) or not isinstance(outs[k].item, Value):
                raise ctx.unsupported(f"the TensorList '{init[k].node}' is not written once "
                                      "per iteration")
            written.append(outs[k].item)
        (c,) = convert_function(ctx, cond_fn, outs, rb.block)
        saved, ctx.b = ctx.b, rb
        try:
            c = _bool_scalar(ctx, c)
        finally:
            ctx.b = saved
        return [c, *[outs[k] for k in carried], *written]

    types = [init[k].type for k in carried]
    start = [init[k] for k in carried]
    try:
        region = ctx.b.region((*scalar, *types), body)
        op = ctx.b.create("loop", None, c0, *start, regions=[region])
    except (UnsupportedOpError, ModelImportError):
        raise
    except Exception:  # a loop value changes shape between iterations
        region = ctx.b.region((*scalar, *[relax_type(t) for t in types]), body)
        op = ctx.b.create("loop", None, c0, *start, regions=[region])
    results = list(op.results)
    out = list(init)
    for k, r in zip(carried, results):
        out[k] = r
    for k, r in zip(lists, results[len(carried):]):
        out[k] = r if plan[k] == "scan" else \
            ctx.op("slice", r, ctx.i64([-1]), ctx.i64([1 << 62]), ctx.i64([0]))
    return out
