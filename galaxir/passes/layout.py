"""O3 layout: run convolution-heavy graphs channels-last (NHWC), converting only at the
graph's boundaries.

1. **Wrap**: every conv, fused_conv, max_pool (values only), average_pool,
   global_average_pool, global_max_pool and lrn in NCHW becomes its ``layout="NHWC"`` form
   between two transposes:  ``transpose(op_nhwc(transpose(x, to_last)), to_first)``
   (fused_conv's residual input is transposed too; weights keep their [M, C/g, *K] form).
2. **Push and cancel** (to a fixpoint): a ``to_first`` transpose moves down through
   elementwise ops (every tensor operand transposed the same way, or a constant that is
   permuted to match, or a broadcast scalar), concat (its axis remapped) and batch_norm
   (constant statistics become a channels-last multiply-add; otherwise ``layout="NHWC"``);
   two transposes in a row merge, and cancel when they compose to the identity; a transpose
   that only moves size-1 dims becomes a reshape (a view).

What is left are the transposes at the inputs (NCHW -> NHWC) and before ops with no
channels-last form (flatten to a matrix, gemm, softmax over channels ...).

The pass runs at O3 only for a target whose backend declares ``preferred_layout =
"NHWC"`` (the cpu backend does), and then only where it pays (``worth_converting``), or
when ``optimize(..., layout="NHWC")`` asks for it; otherwise it does nothing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir.builder import Builder
from ..ir.core import Block, Module, Operation, Value
from ..ir.traits import Elementwise, LayoutAttr
from ..ir.types import TensorType
from .manager import Pass, PassContext
from .rewrite import replace_op

# Which ops the pass converts (``LayoutAttr``: an NHWC form chosen by the ``layout``
# attribute) and which a transpose moves through (``Elementwise``: numpy broadcasting, no
# axis attribute) are traits of the ops (galaxir/ir/traits.py).


def to_last(rank: int) -> tuple[int, ...]:
    """The perm NCHW -> NHWC for ``rank`` dims."""
    return (0, *range(2, rank), 1)


def to_first(rank: int) -> tuple[int, ...]:
    """The perm NHWC -> NCHW for ``rank`` dims."""
    return (0, rank - 1, *range(1, rank - 1))


def inverse(perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _rank(v: Value | None) -> int | None:
    t = v.type if v is not None else None
    if isinstance(t, TensorType) and t.shape is not None:
        return len(t.shape)
    return None


def _perm_of(op: Operation) -> tuple[int, ...] | None:
    r = _rank(op.operands[0])
    perm = op.attr("perm")
    if perm is None:
        return None if r is None else tuple(range(r - 1, -1, -1))
    return tuple(p + len(perm) if p < 0 else p for p in perm)


def _transposed(v: Value | None) -> tuple[Value, tuple[int, ...]] | None:
    """(x, perm) when ``v = transpose(x, perm)``."""
    p = v.producer if v is not None else None
    if p is None or p.name != "transpose":
        return None
    perm = _perm_of(p)
    return None if perm is None else (p.operands[0], perm)


def _const(v: Value | None) -> np.ndarray | None:
    p = v.producer if v is not None else None
    if p is None or p.name != "constant":
        return None
    return np.asarray(p.attrs["value"])


def wants_nhwc(ctx: PassContext) -> bool:
    lay = (ctx.options or {}).get("layout")
    if lay is not None:
        return str(lay).upper() == "NHWC"
    if ctx.target is None:
        return False
    try:
        from ..backends import get_backend
        backend = get_backend(ctx.target)
    except Exception:
        return False
    return getattr(backend, "preferred_layout", "NCHW") == "NHWC"


class ToChannelsLast(Pass):
    """The O3 layout pass (see the module docstring)."""

    name = "layout"

    def run(self, module: Module, ctx: PassContext) -> bool:
        if not wants_nhwc(ctx):
            return False
        if (ctx.options or {}).get("layout") is None and not worth_converting(module):
            ctx.stat("kept NCHW (unprofitable)", 1)
            return False
        n = convert_to_nhwc(module)
        ctx.stat("wrapped", n["wrapped"])
        ctx.stat("pushed", n["pushed"])
        ctx.stat("cancelled", n["cancelled"])
        return any(n.values())


def worth_converting(module: Module) -> bool:
    """Whether channels-last pays on ``module`` (checked on a copy): it may add at most one
    interior transpose per four ops it converts.  Where it cannot push conversions through
    the graph (an op with no NHWC form between convs, such as a softmax over channels) the
    transposes it adds cost more than the faster kernels gain (docs/performance.md).  An explicit ``layout="NHWC"`` skips
    this check.  A graph with no conv stays NCHW: the pools' and lrn's channels-last kernels
    are no faster than their NCHW ones, so transposing the graph's input and output for them
    is a loss (a standalone squeeze-excitation block ran 2x slower converted)."""
    from ..ir.clone import clone_module
    if not any(op.name in ("conv", "fused_conv") for op in module.walk()):
        return False
    before = len(interior_transposes(module))
    trial = clone_module(module)
    n = convert_to_nhwc(trial)
    added = len(interior_transposes(trial)) - before
    return n["wrapped"] > 0 and 4 * added <= n["wrapped"]


def convert_to_nhwc(module: Module) -> dict[str, int]:
    """Wrap, push and cancel on every block of ``module``; counts of each kind of change."""
    counts = {"wrapped": 0, "pushed": 0, "cancelled": 0}
    blocks = [module.graph.block] + [r.block for op in module.walk() for r in op.regions]
    for block in blocks:
        for op in list(block):
            if _wrap(op):
                counts["wrapped"] += 1
        changed = True
        while changed:
            changed = False
            for op in list(block):
                if op.parent is not block:
                    continue
                kind = _rewrite(op)
                if kind:
                    counts[kind] += 1
                    changed = True
        _erase_dead(block)
    return counts


def _builder(op: Operation) -> Builder:
    return Builder(op.parent, before=op, provenance=op.provenance, created_by="layout")


def _wrap(op: Operation) -> bool:
    if not op.has_trait(LayoutAttr) or op.attrs.get("layout", "NCHW") != "NCHW":
        return False
    if len(op.results) != 1:
        return False   # max_pool with indices: the indices are NCHW flat positions
    r = _rank(op.operands[0])
    if r is None or r < 3 or _rank(op.results[0]) != r:
        return False
    b = _builder(op)
    ops = list(op.operands)
    ops[0] = b.transpose(ops[0], perm=to_last(r))
    if op.name == "fused_conv" and len(ops) > 3 and ops[3] is not None:
        if _rank(ops[3]) != r:
            return False
        ops[3] = b.transpose(ops[3], perm=to_last(r))
    kw = dict(op.attrs)
    kw["layout"] = "NHWC"
    new = b.create(op.name, *ops, num_results=1, **kw).results[0]
    new.name = op.results[0].name
    replace_op(op, [b.transpose(new, perm=to_first(r))], "layout/wrap")
    return True


def _rewrite(op: Operation) -> str | None:
    if op.name == "transpose":
        return _fold_transpose(op)
    if op.has_trait(Elementwise):
        return _push_elementwise(op)
    if op.name == "concat":
        return _push_concat(op)
    if op.name == "batch_norm":
        return _push_batch_norm(op)
    if op.name == "fused_elementwise":
        return _push_elementwise(op)
    if op.name == "reshape":
        return _push_channel_shuffle(op)
    if op.name == "slice":
        return _push_slice(op)
    return None


def _push_slice(op: Operation) -> str | None:
    """slice(transpose(a, p), starts, ends, axes) -> transpose(slice(a, starts, ends,
    p[axes]), p) with constant axes: ShuffleNetV2's channel split (chunk along C)."""
    tr = _transposed(op.operands[0])
    rank = _rank(op.results[0])
    if tr is None or rank is None or len(tr[1]) != rank:
        return None
    a, perm = tr
    starts = _const(op.operands[1])
    axes_v = op.operand(3)
    axes = _const(axes_v) if axes_v is not None else (
        None if starts is None else np.arange(starts.size))
    if axes is None or axes.dtype.kind not in "iu":
        return None
    new_axes = np.array([perm[int(ax) + rank if ax < 0 else int(ax)] for ax in axes.reshape(-1)],
                        axes.dtype)
    b = _builder(op)
    ops = list(op.operands)
    ops[0] = a
    if len(ops) < 4:
        ops.append(None)
    ops[3] = b.constant(new_axes)
    new = b.create("slice", *ops, num_results=1, **dict(op.attrs)).results[0]
    new.name = op.results[0].name
    op.replace_with([b.transpose(new, perm=perm)])
    return "pushed"


def _static_dims(v: Value | None) -> tuple[int, ...] | None:
    t = v.type if v is not None else None
    if isinstance(t, TensorType) and t.shape is not None and all(isinstance(d, int) for d in t.shape):
        return tuple(t.shape)
    return None


def _push_channel_shuffle(op: Operation) -> str | None:
    """ShuffleNet's channel shuffle on a channels-last value y [N, H, W, C]:
    reshape(transpose(y, to_first), [N, g, C/g, H, W]) -> transpose(0, 2, 1, 3, 4) ->
    reshape [N, C, H, W]  becomes  transpose(reshape(transpose(reshape(y, [N, H, W, g, C/g]),
    (0, 1, 2, 4, 3)), [N, H, W, C]), to_first): the same one data movement, now between
    channels-last values, so the to_first transpose keeps moving down."""
    tr = _transposed(op.operands[0])
    if tr is None or tr[1] != to_first(4) or len(op.results[0].uses) != 1:
        return None
    y = tr[0]
    ys, s5 = _static_dims(y), _static_dims(op.results[0])
    if ys is None or s5 is None or len(ys) != 4 or len(s5) != 5:
        return None
    n, h, w, c = ys
    if (s5[0], s5[3], s5[4]) != (n, h, w) or s5[1] * s5[2] != c:
        return None
    mid = next(iter(op.results[0].uses))[0]
    if mid.name != "transpose" or _perm_of(mid) != (0, 2, 1, 3, 4) or len(mid.results[0].uses) != 1:
        return None
    last = next(iter(mid.results[0].uses))[0]
    if last.name != "reshape" or _static_dims(last.results[0]) != (n, c, h, w):
        return None
    b = _builder(last)
    g, cg = s5[1], s5[2]
    split = b.reshape(y, b.constant(np.array([n, h, w, g, cg], np.int64)))
    shuffled = b.transpose(split, perm=(0, 1, 2, 4, 3))
    merged = b.reshape(shuffled, b.constant(np.array([n, h, w, c], np.int64)))
    replace_op(last, [b.transpose(merged, perm=to_first(4))], "layout/push-channel-shuffle")
    return "pushed"


def _fold_transpose(op: Operation) -> str | None:
    x = op.operands[0]
    perm = _perm_of(op)
    if perm is None:
        return None
    if perm == tuple(range(len(perm))):
        replace_op(op, [x], "layout/fold-transpose")
        return "cancelled"
    inner = _transposed(x)
    if inner is not None and len(inner[1]) == len(perm):
        src, p = inner
        merged = tuple(p[i] for i in perm)
        b = _builder(op)
        replace_op(op, [src if merged == tuple(range(len(merged)))
                         else b.transpose(src, perm=merged)], "layout/fold-transpose")
        return "cancelled"
    # a transpose that keeps every dim larger than 1 in order is a reshape (a view)
    t, rt = x.type, op.results[0].type
    if isinstance(t, TensorType) and isinstance(rt, TensorType) and t.shape is not None and \
            rt.shape is not None and all(isinstance(d, int) for d in rt.shape):
        big = [i for i in perm if t.shape[i] != 1]
        if big == sorted(big):
            b = _builder(op)
            # allowzero: a 0 in the shape is a 0-size dim, not "copy the input's dim"
            y = b.reshape(x, b.constant(np.array(rt.shape, np.int64)),
                          allowzero=1 if 0 in rt.shape else None)
            replace_op(op, [y], "layout/fold-transpose")
            return "cancelled"
    return None


def _permute_const(c: np.ndarray, rank: int, inv: tuple[int, ...]) -> np.ndarray | None:
    if c.ndim > rank:
        return None
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    return np.ascontiguousarray(np.transpose(c, inv))


def _moves_only_ones(v: Value, rank: int, inv: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape of ``transpose(v, inv)`` (v padded to ``rank``) when that transpose moves
    only size-1 dims, so a reshape (a view) does it; else None."""
    s = _static_dims(v)
    if s is None or len(s) > rank:
        return None
    s = (1,) * (rank - len(s)) + s
    big = [i for i in inv if s[i] != 1]
    if big != sorted(big):
        return None
    return tuple(s[i] for i in inv)


def _push_elementwise(op: Operation) -> str | None:
    """op(transpose(a, p), transpose(b, p), const) -> transpose(op(a, b, const'), p)"""
    if len(op.results) != 1 or (op.regions and op.name != "fused_elementwise"):
        return None
    if op.name == "dropout" and len(op.results) != 1:
        return None
    res = op.results[0]
    rank = _rank(res)
    perm = None
    plan = []
    for v in op.operands:
        if v is None:
            plan.append(("none", None))
            continue
        tr = _transposed(v)
        if tr is not None and len(tr[1]) == rank and _rank(tr[0]) == rank:
            if perm is not None and tr[1] != perm:
                return None
            perm = tr[1]
            plan.append(("t", tr[0]))
            continue
        plan.append(("other", v))
    if perm is None or rank is None:
        return None
    inv = inverse(perm)
    b = _builder(op)
    new_ops: list[Value | None] = []
    for kind, v in plan:
        if kind == "none":
            new_ops.append(None)
        elif kind == "t":
            new_ops.append(v)
        else:
            c = _const(v)
            r = _rank(v)
            if c is not None:
                if c.size == 1 and c.ndim <= rank and c.ndim == 0:
                    new_ops.append(v)
                    continue
                pc = _permute_const(c, rank, inv)
                if pc is None:
                    return None
                new_ops.append(b.constant(pc.astype(c.dtype)))
            elif r == 0 or (isinstance(v.type, TensorType) and v.type.shape is not None
                            and all(d == 1 for d in v.type.shape) and r <= rank):
                new_ops.append(v)   # a broadcast scalar is the same in every layout
            elif (vs := _moves_only_ones(v, rank, inv)) is not None:
                # a per-channel value [N, C, 1, 1] (squeeze-excitation's scale, whose
                # to_first transpose became a reshape): the same data as [N, 1, 1, C]
                new_ops.append(b.reshape(v, b.constant(np.array(vs, np.int64))))
            else:
                return None
    try:
        if op.regions:
            region = _retyped_region(b, op, new_ops)
            if region is None:
                return None
            new = b.create(op.name, *new_ops, num_results=1, regions=[region],
                           **dict(op.attrs)).results[0]
        else:
            new = b.create(op.name, *new_ops, num_results=1, **dict(op.attrs)).results[0]
    except Exception:
        return None
    if not isinstance(new.type, TensorType) or _rank(new) != rank:
        return None
    new.name = res.name
    replace_op(op, [b.transpose(new, perm=perm)], "layout/push-elementwise")
    return "pushed"


def _retyped_region(b: Builder, op: Operation, operands: list):
    """fused_elementwise's body rebuilt for new operand types (ops re-inferred), or None
    when the body holds something layout-dependent (a non-scalar constant, a region)."""
    block = op.regions[0].block
    rank = _rank(op.results[0])
    perm = next(tr[1] for tr in map(_transposed, op.operands) if tr is not None)
    for inner in block:
        if inner.regions:
            return None
        if inner.name == "constant" and np.asarray(inner.attrs["value"]).ndim > rank:
            return None
        if not inner.is_terminator and inner.name != "constant" and not inner.has_trait(Elementwise):
            return None

    def body(rb, *args):
        mapping = {id(a): v for a, v in zip(block.args, args)}
        for inner in block:
            if inner.is_terminator:
                continue
            if inner.name == "constant" and np.asarray(inner.attrs["value"]).size != 1:
                c = np.asarray(inner.attrs["value"])   # a constant broadcast over the result
                mapping[id(inner.results[0])] = rb.constant(
                    _permute_const(c, rank, inverse(perm)).astype(c.dtype))
                continue
            ins = [None if v is None else mapping.get(id(v), v) for v in inner.operands]
            new = rb.create(inner.name, *ins, num_results=len(inner.results), **dict(inner.attrs))
            for o, n in zip(inner.results, new.results):
                mapping[id(o)] = n
        return [mapping.get(id(v), v) for v in block.results]

    return b.region([v.type for v in operands], body,
                    arg_names=[a.name for a in block.args])


def _push_concat(op: Operation) -> str | None:
    """concat(transpose(a, p), transpose(b, p), axis=k) -> transpose(concat(a, b, axis=p[k]), p)"""
    rank = _rank(op.results[0])
    if rank is None:
        return None
    perm = None
    srcs = []
    for v in op.operands:
        tr = _transposed(v)
        if tr is None or (perm is not None and tr[1] != perm) or len(tr[1]) != rank:
            return None
        perm = tr[1]
        srcs.append(tr[0])
    if perm is None:
        return None
    ax = op.attr("axis")
    ax = ax + rank if ax < 0 else ax
    b = _builder(op)
    kw = dict(op.attrs)
    kw["axis"] = perm[ax]
    new = b.create("concat", *srcs, num_results=1, **kw).results[0]
    new.name = op.results[0].name
    replace_op(op, [b.transpose(new, perm=perm)], "layout/push-concat")
    return "pushed"


def _push_batch_norm(op: Operation) -> str | None:
    """batch_norm(transpose(x, to_first)) -> transpose(x * a + c, to_first) with constant
    statistics (a, c per channel, channels last), else batch_norm(x, layout=NHWC)."""
    if op.attrs.get("layout", "NCHW") != "NCHW" or len(op.results) != 1:
        return None
    tr = _transposed(op.operands[0])
    rank = _rank(op.results[0])
    if tr is None or rank is None or rank < 3 or tr[1] != to_first(rank):
        return None
    x, perm = tr
    b = _builder(op)
    stats = [_const(v) for v in op.operands[1:]]
    dt = x.type.dtype.numpy
    if all(s is not None and s.dtype.kind == "f" for s in stats):
        scale, bias, mean, var = (np.asarray(s, np.float64).reshape(-1) for s in stats)
        a = scale / np.sqrt(var + float(op.attr("epsilon")))
        c = bias - mean * a
        y = b.add(b.mul(x, b.constant(a.astype(dt))), b.constant(c.astype(dt)))
    else:
        kw = dict(op.attrs)
        kw["layout"] = "NHWC"
        y = b.create("batch_norm", x, *op.operands[1:], num_results=1, **kw).results[0]
    y.name = op.results[0].name
    replace_op(op, [b.transpose(y, perm=perm)], "layout/push-batch-norm")
    return "pushed"


def _erase_dead(block: Block) -> None:
    for op in reversed(list(block)):
        if op.is_terminator:
            continue
        if op.name in ("transpose", "constant", "reshape") and all(not r.uses for r in op.results):
            op.erase()


def interior_transposes(module: Module) -> list[Operation]:
    """Transposes of the top-level graph that neither read a graph input nor produce a graph
    output (what the layout pass should leave none of on a conv net)."""
    g = module.graph
    ins = {id(a) for a in g.inputs}
    outs = {id(v) for v in g.outputs if v is not None}
    return [op for op in g.block if op.name == "transpose"
            and id(op.operands[0]) not in ins and id(op.results[0]) not in outs]


def _register() -> None:
    from .memory import PlanMemory
    from .pipeline import LEVEL_PASSES, register_level_pass, register_pass
    register_pass("layout", ToChannelsLast)
    register_pass("plan-memory", PlanMemory)
    if ToChannelsLast not in LEVEL_PASSES[3]:
        register_level_pass(3, ToChannelsLast)
    if PlanMemory not in LEVEL_PASSES[3]:
        register_level_pass(3, PlanMemory)


_register()

__all__ = ["ToChannelsLast", "convert_to_nhwc", "interior_transposes", "to_last", "to_first",
           "inverse", "wants_nhwc"]
