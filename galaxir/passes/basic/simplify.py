"""No-op removal and algebraic simplification, as declarative patterns.

Each rule is a few lines that read like the identity it applies.  The driver refuses a
replacement whose type differs from the result it replaces, so ``x * ones(2, 3)`` (which
broadcasts) is never turned into ``x``.
"""
from __future__ import annotations

import numpy as np

from ...ir.core import Operation, Value
from ...ir.traits import ShapeOnly, View, ops_with
from ...ir.types import UNKNOWN, DType, TensorType
from ..rewrite import (Const, P, RewritePattern, Rewriter, Var, const_array, pattern)

X = Var("x")


def _static_same_shape(a: Value, b: Value) -> bool:
    """Both shapes fully known (ints or the same symbols) and equal."""
    ta, tb = a.type, b.type
    if not isinstance(ta, TensorType) or not isinstance(tb, TensorType):
        return False
    if ta.shape is None or tb.shape is None or ta.dtype != tb.dtype:
        return False
    return ta.shape == tb.shape and UNKNOWN not in ta.shape


def _rank(v: Value) -> int | None:
    return v.type.rank if isinstance(v.type, TensorType) else None


# -- no-op removal ------------------------------------------------------------------------
@pattern(P.identity(X), name="remove-identity")
def remove_identity(m):
    """identity(x) -> x"""
    return m.x


def _inference_mode(op: Operation) -> bool:
    training = op.operand(2)
    if training is None:
        return True
    arr = const_array(training)
    return arr is not None and not bool(np.asarray(arr).reshape(-1)[0])


@pattern(P.dropout(X, ...), name="remove-dropout")
def remove_dropout(m):
    """dropout(x) in inference mode -> x (and its mask, when used, -> all true)."""
    if not _inference_mode(m.root):
        return m.fail("training_mode may be true")
    outs: list = [m.x]
    for r in m.root.results[1:]:
        if not r.uses:
            outs.append(None)
            continue
        t = r.type
        if not isinstance(t, TensorType) or not t.is_static:
            return m.fail("the mask is used and its shape is not static")
        outs.append(m.b.constant(np.broadcast_to(np.ones((), np.bool_), t.shape)))
    return outs


#: Ops that only rearrange (or broadcast) data (the ``ShapeOnly`` trait): when the result has
#: exactly the operand's shape, they are the identity.
SHAPE_ONLY = tuple(sorted(ops_with(ShapeOnly)))


def _noop_shape_rule(name: str) -> RewritePattern:
    @pattern(P(name, X, ...), name=f"remove-noop-{name}")
    def rule(m):
        if not _static_same_shape(m.root.results[0], m.x):
            return m.fail("the result shape is not statically the operand's shape")
        return m.x
    rule.__doc__ = f"{name}(x, ...) whose result has x's shape -> x"
    return rule


NOOP_SHAPE = [_noop_shape_rule(n) for n in SHAPE_ONLY]


def _perm(op: Operation, rank: int | None) -> tuple[int, ...] | None:
    perm = op.attr("perm")
    if perm is None:
        return None if rank is None else tuple(range(rank - 1, -1, -1))
    return tuple(p + len(perm) if p < 0 else p for p in perm)


@pattern(P.transpose(X), name="remove-noop-transpose")
def remove_noop_transpose(m):
    """transpose(x, perm=identity) -> x"""
    perm = _perm(m.root, _rank(m.x))
    if perm is None or perm != tuple(range(len(perm))):
        return m.fail("perm is not the identity")
    return m.x


@pattern(P.cast(X), name="remove-noop-cast")
def remove_noop_cast(m):
    """cast(x, to=dtype(x)) -> x"""
    t = m.x.type
    if not isinstance(t, TensorType) or m.root.attr("to") != t.dtype:
        return m.fail("the cast changes the dtype")
    return m.x


@pattern(P.pad(X, Const(0, name="pads"), ...), name="remove-noop-pad")
def remove_noop_pad(m):
    """pad(x, pads=0...) -> x"""
    return m.x


@pattern(P.slice(X, Const(name="starts"), Const(name="ends"), ...), name="remove-noop-slice")
def remove_noop_slice(m):
    """slice(x, ...) with unit steps taking every element -> x"""
    ops = m.root.operands
    steps = ops[4] if len(ops) > 4 else None
    if steps is not None:
        arr = const_array(steps)
        if arr is None or not np.all(np.asarray(arr) == 1):
            return m.fail("steps are not all 1")
    if not _static_same_shape(m.root.results[0], m.x):
        return m.fail("the result shape is not statically the operand's shape")
    return m.x


@pattern(P.any_of("concat", "sum", "max", "min", "mean")(X), name="remove-single-input")
def remove_single_input(m):
    """concat(x), sum(x), max(x), min(x), mean(x) of one operand -> x"""
    return m.x


# -- algebra -------------------------------------------------------------------------------
def _not_bool(v: Value) -> bool:
    return isinstance(v.type, TensorType) and v.type.dtype not in (DType.bool, DType.string)


@pattern(P.mul(Var("x", where=_not_bool), Const(1)), name="mul-one")
def mul_one(m):
    """x * 1 -> x"""
    return m.x


@pattern(P.add(Var("x", where=_not_bool), Const(0)), name="add-zero")
def add_zero(m):
    """x + 0 -> x"""
    return m.x


@pattern(P.sub(Var("x", where=_not_bool), Const(0)), name="sub-zero")
def sub_zero(m):
    """x - 0 -> x"""
    return m.x


@pattern(P.div(Var("x", where=_not_bool), Const(1)), name="div-one")
def div_one(m):
    """x / 1 -> x"""
    return m.x


@pattern(P.pow(Var("x", where=_not_bool), Const(1)), name="pow-one")
def pow_one(m):
    """x ** 1 -> x"""
    return m.x


@pattern(P.neg(P.neg(X)), name="double-neg")
def double_neg(m):
    """-(-x) -> x"""
    return m.x


@pattern(P("not", P("not", X)), name="double-not")
def double_not(m):
    """not(not(x)) -> x"""
    return m.x


@pattern(P.transpose(P.transpose(X).named("inner")), name="transpose-transpose")
def transpose_transpose(m):
    """transpose(transpose(x, p), q) -> x when they cancel, else transpose(x, p o q)"""
    rank = _rank(m.x)
    p = _perm(m.inner, rank)
    q = _perm(m.root, rank if p is None else len(p))
    if p is None or q is None or len(p) != len(q):
        return m.fail("perms unknown (rank unknown)")
    merged = tuple(p[i] for i in q)
    if merged == tuple(range(len(merged))):
        return m.x
    if len(m.inner.results[0].uses) != 1:
        return m.fail("the inner transpose has other uses")
    return m.b.transpose(m.x, perm=merged)


def _exact_cast(src: DType, dst: DType) -> bool:
    """Does casting ``src`` to ``dst`` keep every value exactly (so a later cast sees x)?"""
    if src == dst:
        return True
    if src == DType.bool:
        return dst.is_int or dst.is_float
    ints = {DType.int8: (True, 8), DType.int16: (True, 16), DType.int32: (True, 32),
            DType.int64: (True, 64), DType.uint8: (False, 8), DType.uint16: (False, 16),
            DType.uint32: (False, 32), DType.uint64: (False, 64)}
    mantissa = {DType.float16: 11, DType.float32: 24, DType.float64: 53}
    floats = {DType.float16: 16, DType.bfloat16: 16, DType.float32: 32, DType.float64: 64}
    if src in ints and dst in ints:
        (s_signed, s_bits), (d_signed, d_bits) = ints[src], ints[dst]
        if s_signed == d_signed:
            return d_bits >= s_bits
        return (not s_signed) and d_signed and d_bits > s_bits
    if src in ints and dst in mantissa:
        signed, bits = ints[src]
        return (bits - (1 if signed else 0)) <= mantissa[dst]
    if src in floats and dst in floats:
        if src == DType.bfloat16:
            return dst in (DType.float32, DType.float64)
        if src == DType.float16:
            return dst in (DType.float32, DType.float64)
        return src == DType.float32 and dst == DType.float64
    return False


@pattern(P.cast(P.cast(X).named("inner")), name="cast-cast")
def cast_cast(m):
    """cast(cast(x, T1), T2) -> cast(x, T2) (or x) when the first cast is exact"""
    t = m.x.type
    if not isinstance(t, TensorType):
        return None
    mid, dst = m.inner.attr("to"), m.root.attr("to")
    if mid is None or dst is None or not _exact_cast(t.dtype, mid):
        return m.fail("the inner cast may round")
    if dst == t.dtype:
        return m.x
    return m.b.cast(m.x, to=dst)


#: the ops declared ``View("reshape")``: they all keep the element order
VIEW_OPS = tuple(sorted(ops_with(View, lambda t: t.kind == "reshape")))


@pattern(P.any_of(*VIEW_OPS)(P.any_of(*VIEW_OPS)(X, ...).named("inner"), ...),
         name="reshape-reshape")
def reshape_reshape(m):
    """view(view(x)) -> x when the shape comes back, else one reshape of x
    (reshape, squeeze, unsqueeze and flatten all keep the element order)"""
    out = m.root.results[0]
    if _static_same_shape(out, m.x):
        return m.x
    if len(m.inner.results[0].uses) != 1:
        return m.fail("the inner op has other uses")
    t = out.type
    if isinstance(t, TensorType) and t.is_static:
        return m.b.reshape(m.x, m.b.constant(np.asarray(t.shape, dtype=np.int64)))
    if m.root.name == "reshape":
        shape = const_array(m.root.operand(1))
        if shape is not None and (m.root.attr("allowzero", 0) or not np.any(shape == 0)):
            kw = {"allowzero": m.root.attrs["allowzero"]} if "allowzero" in m.root.attrs else {}
            return m.b.reshape(m.x, m.root.operand(1), **kw)
    return m.fail("the final shape is not known statically")


def _axes(op: Operation, rank: int | None) -> tuple[int, ...] | None:
    v = op.operand(1)
    if v is None:
        return None
    arr = const_array(v)
    if arr is None or rank is None:
        return None
    return tuple(sorted(int(a) + rank if a < 0 else int(a) for a in np.asarray(arr).reshape(-1)))


@pattern(P.squeeze(P.unsqueeze(X, Var()).named("inner"), Var()), name="squeeze-unsqueeze")
def squeeze_unsqueeze(m):
    """squeeze(unsqueeze(x, axes), axes) -> x"""
    r = _rank(m.x)
    if r is None:
        return None
    added = const_array(m.inner.operand(1))
    if added is None:
        return m.fail("unsqueeze axes are not constant")
    a = _axes(m.inner, r + added.size)
    b = _axes(m.root, _rank(m.inner.results[0]))
    if a is None or b is None or a != b:
        return m.fail("the axes differ or are not constant")
    return m.x


# -- control flow ----------------------------------------------------------------------------
class InlineConstantIf(RewritePattern):
    """if(constant cond) -> the taken branch's ops, inlined before the if."""

    name = "inline-constant-if"
    root = "if"

    def match_and_rewrite(self, op: Operation, rw: Rewriter) -> bool:
        cond = const_array(op.operand(0))
        if cond is None or cond.size < 1 or len(op.regions) != 2:
            return False
        region = op.regions[0 if bool(np.asarray(cond).reshape(-1)[0]) else 1]
        if region.block.args:
            return False
        results = region.block.results
        for old, new in zip(op.results, results):
            if new is None or not _region_type_ok(old, new):
                return False
        values = rw.inline_region_before(region, op)
        rw.replace_op(op, values)
        return True


def _region_type_ok(old: Value, new: Value) -> bool:
    from ...ir.types import types_compatible
    return types_compatible(old.type, new.type)


NOOP_PATTERNS = [remove_identity, remove_dropout, *NOOP_SHAPE, remove_noop_transpose,
                 remove_noop_cast, remove_noop_pad, remove_noop_slice, remove_single_input]
ALGEBRA_PATTERNS = [mul_one, add_zero, sub_zero, div_one, pow_one, double_neg, double_not,
                    transpose_transpose, cast_cast, reshape_reshape, squeeze_unsqueeze]
CONTROL_PATTERNS = [InlineConstantIf()]
