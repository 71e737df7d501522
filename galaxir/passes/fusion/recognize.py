"""Composite ops recognized from their decomposed forms: layer_norm, gelu, attention.

* layer_norm:  ``d = x - mean(x); d / sqrt(mean(d^2) + eps)`` over trailing axes ->
  ``layer_norm(x, 1)``; then ``* gamma`` and ``+ beta`` are absorbed as scale and bias.
* gelu: ``0.5 * x * (1 + erf(x / sqrt(2)))`` -> ``gelu(x)``; ``0.5 * x * (1 + tanh(sqrt(2/pi) *
  (x + 0.044715 * x^3)))`` -> ``gelu(x, approximate="tanh")`` (any order of the products).
* attention: ``softmax(q @ kt * s + mask) @ v`` (scale by Mul or Div, mask optional; a
  scalar factor on q or kt, as torch's exporter of scaled_dot_product_attention writes
  ``(q * sqrt(s)) @ (kt * sqrt(s))``, joins the scale; the exporters' guard
  ``where(isnan(p), 0, p)`` on the probabilities is accepted) -> the ``attention`` op
  (ONNX Attention: one fused kernel on the cpu backend) when q, kt, v are rank 3 or 4 with
  the same batch dims, with ``K = transpose(kt)`` (composed with kt's own transpose, so
  ``q @ transpose(k)`` reads k itself); else ``sdpa(q, kt, v, mask, scale=s)``.  The two
  differ only on a row whose mask is -inf everywhere (attention: zeros, sdpa: NaN, the
  guard: zeros), so without the guard a run-time mask keeps sdpa.

Intermediate values must have no use outside the matched subgraph.
"""
from __future__ import annotations

import math

import numpy as np

from ...ir.core import Operation, Value
from ...ir.types import TensorType
from ..rewrite import (Const, P, RewritePattern, Rewriter, Var, const_array, pattern,
                       splat_value)

X, D = Var("x"), Var("d")


def _shape(v: Value):
    t = v.type
    return t.shape if isinstance(t, TensorType) else None


def _scalar(v: Value | None) -> float | None:
    arr = const_array(v)
    if arr is None or arr.dtype.kind not in "fiu":
        return None
    s = splat_value(arr)
    return None if s is None else float(s)


def _close(a: float | None, b: float, rtol: float = 1e-4) -> bool:
    return a is not None and abs(a - b) <= rtol * abs(b)


# -- layer_norm --------------------------------------------------------------------------------------
_MEAN_X = P.reduce_mean(X, Const(name="ax1"), one_use=True, name_as="mean1")
_CENTER = P.sub(X, _MEAN_X, name_as="center")
_SQUARE = P.any_of("pow", "mul")(D, Var("e"), one_use=True, name_as="square")
_VAR = P.reduce_mean(_SQUARE, Const(name="ax2"), one_use=True, name_as="mean2")
_STD = P.sqrt(P.add(_VAR, Const(name="eps"), one_use=True), one_use=True)


def _trailing_axes(axes: np.ndarray, rank: int) -> int | None:
    """k when ``axes`` are exactly the last k axes of a rank-``rank`` tensor, else None."""
    ax = sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))
    if not ax or ax != list(range(rank - len(ax), rank)):
        return None
    return len(ax)


@pattern(P.div(D, _STD), name="recognize-layer-norm")
def recognize_layer_norm(m):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) over the last axes -> layer_norm"""
    d = m.d
    center = d.producer
    if center is None or center.name != "sub":
        return m.fail("the numerator is not x - mean(x)")
    binds = list(_CENTER.match_op(center))
    if not binds:
        return m.fail("the numerator is not x - reduce_mean(x, axes)")
    b = binds[0]
    x, mean1 = b["x"], b["mean1"]
    sq = m.square
    if sq.name == "pow":
        if not _close(_scalar(m.e), 2.0, 0):
            return m.fail("the variance does not square the centred value")
    elif m.e is not d:
        return m.fail("the variance does not square the centred value")
    rank = len(_shape(x)) if _shape(x) is not None else None
    if rank is None or not rank:
        return m.fail("unknown rank")
    k1 = _trailing_axes(const_array(b["ax1"]), rank)
    k2 = _trailing_axes(m.array("ax2"), rank)
    if k1 is None or k1 != k2:
        return m.fail("the two means do not reduce the same trailing axes")
    if mean1.attr("keepdims") != 1 or m.mean2.attr("keepdims") != 1:
        return m.fail("the means must keep their dims")
    users = {id(u) for u in d.users}
    if users - {id(m.root), id(sq)}:
        return m.fail("the centred value has other uses")
    eps = _scalar(m.eps)
    if eps is None or eps < 0:
        return m.fail("epsilon is not a scalar constant")
    norm = _shape(x)[rank - k1:]
    if any(not isinstance(n, int) for n in norm):
        return m.fail("the normalized dims are not static")
    dt = x.type.dtype.numpy
    ones = m.rewriter.constant(np.ones(norm, dtype=dt))
    return m.b.layer_norm(x, ones, axis=rank - k1, epsilon=eps)


def _affine_operand(m, v: Value) -> Value | None:
    """v as a layer_norm scale/bias over the normalized dims (reshaped if constant)."""
    ln = m.ln
    x = ln.operand(0)
    xs, vs = _shape(x), _shape(v)
    if xs is None or vs is None or v.type.dtype != x.type.dtype:
        return None
    axis = ln.attr("axis") % len(xs)
    norm = tuple(xs[axis:])
    if len(vs) > len(xs):
        return None
    full = (1,) * (len(xs) - len(vs)) + tuple(vs)
    if any(d != 1 for d in full[:axis]):
        return None
    if any(not (d == 1 or d == n) for d, n in zip(full[axis:], norm)):
        return None
    if tuple(vs) == norm:
        return v
    arr = const_array(v)
    if arr is None or any(not isinstance(n, int) for n in norm):
        return None
    return m.rewriter.constant(np.ascontiguousarray(np.broadcast_to(arr.reshape(full[axis:]), norm)))


@pattern(P.mul(P.layer_norm(Var("x"), Const(1), None, one_use=True, name_as="ln"), Var("g")),
         name="layer-norm-scale")
def layer_norm_scale(m):
    """mul(layer_norm(x, 1), gamma) -> layer_norm(x, gamma)"""
    g = _affine_operand(m, m.g)
    if g is None:
        return m.fail("gamma does not broadcast over the normalized axes only")
    return m.b.layer_norm(m.x, g, **dict(m.ln.attrs))


@pattern(P.add(P.layer_norm(Var("x"), Var("s"), None, one_use=True, name_as="ln"), Var("beta")),
         name="layer-norm-bias")
def layer_norm_bias(m):
    """add(layer_norm(x, s), beta) -> layer_norm(x, s, beta)"""
    beta = _affine_operand(m, m.beta)
    if beta is None:
        return m.fail("beta does not broadcast over the normalized axes only")
    return m.b.layer_norm(m.x, m.s, beta, **dict(m.ln.attrs))


# -- gelu --------------------------------------------------------------------------------------------
def _factors(v: Value, root: bool, out: list, consts: list, ops: list) -> None:
    """Flatten a tree of one-use muls into its factors (constants separately)."""
    p = v.producer
    if p is not None and p.name == "mul" and (root or len(v.uses) == 1):
        ops.append(p)
        for o in p.operands:
            _factors(o, False, out, consts, ops)
        return
    c = _scalar(v)
    if c is not None:
        consts.append(c)
    else:
        out.append(v)


def _one(v: Value | None, name: str) -> Operation | None:
    """The producer of v when it is a ``name`` op and v has exactly one use."""
    if v is None or v.producer is None or v.producer.name != name or len(v.uses) != 1:
        return None
    return v.producer


def _scaled(v: Value, x: Value, want: float) -> bool:
    """v == x * want (as mul by a constant, or div by its reciprocal), v used once."""
    p = v.producer
    if p is None or len(v.uses) != 1:
        return False
    if p.name == "mul":
        a, b = p.operands
        return (a is x and _close(_scalar(b), want)) or (b is x and _close(_scalar(a), want))
    if p.name == "div":
        a, b = p.operands
        c = _scalar(b)
        return a is x and c is not None and c != 0 and _close(1 / c, want)
    return False


def _cube(v: Value, x: Value) -> bool:
    p = v.producer
    if p is None or len(v.uses) != 1:
        return False
    if p.name == "pow":
        return p.operand(0) is x and _close(_scalar(p.operand(1)), 3.0, 0)
    if p.name == "mul":
        a, b = p.operands
        for s, t in ((a, b), (b, a)):
            if s is x:
                q = t.producer
                if q is not None and q.name == "mul" and len(t.uses) == 1 and \
                        q.operand(0) is x and q.operand(1) is x:
                    return True
    return False


def _gelu_gate(g: Value, x: Value) -> str | None:
    """'none' when g = 1 + erf(x / sqrt 2), 'tanh' for the tanh form, else None."""
    add = _one(g, "add")
    if add is None:
        return None
    a, b = add.operands
    inner = b if _close(_scalar(a), 1.0) else a if _close(_scalar(b), 1.0) else None
    if inner is None:
        return None
    erf = _one(inner, "erf")
    if erf is not None:
        return "none" if _scaled(erf.operand(0), x, 1 / math.sqrt(2)) else None
    tanh = _one(inner, "tanh")
    if tanh is None:
        return None
    arg = tanh.operand(0).producer
    if arg is None or arg.name != "mul" or len(tanh.operand(0).uses) != 1:
        return None
    for c, s in (arg.operands, arg.operands[::-1]):
        if _close(_scalar(c), math.sqrt(2 / math.pi)):
            sum_ = _one(s, "add")
            if sum_ is None:
                continue
            for u, w in (sum_.operands, sum_.operands[::-1]):
                if u is x:
                    wp = _one(w, "mul")
                    if wp is None:
                        continue
                    for k, cube in (wp.operands, wp.operands[::-1]):
                        if _close(_scalar(k), 0.044715) and _cube(cube, x):
                            return "tanh"
    return None


class RecognizeGelu(RewritePattern):
    """0.5 * x * (1 + erf(x / sqrt(2))) (and the tanh form), products in any order -> gelu"""

    name = "recognize-gelu"
    root = "mul"

    def _match(self, op: Operation):
        factors: list[Value] = []
        consts: list[float] = []
        _factors(op.results[0], True, factors, consts, [])
        if len(factors) != 2 or not consts:
            return None, "not a product of x, a gate and constants"
        if not _close(float(np.prod(consts)), 0.5):
            return None, "the constant factor is not 0.5"
        for x, g in (factors, factors[::-1]):
            approx = _gelu_gate(g, x)
            if approx is not None:
                if not isinstance(x.type, TensorType) or x.type.dtype.numpy.kind != "f":
                    return None, "x is not a float tensor"
                return (x, approx), None
        return None, "no factor is 1 + erf(x/sqrt(2)) or the tanh form"

    def match_and_rewrite(self, op: Operation, rewriter: Rewriter) -> bool:
        got, _ = self._match(op)
        if got is None:
            return False
        x, approx = got
        if x.type != op.results[0].type:
            return False  # a constant factor broadcasts x to a bigger shape
        new = rewriter.create("gelu", x, before=op, approximate=approx)
        rewriter.replace_op(op, new.results)
        return True

    def explain(self, op: Operation) -> str:
        got, why = self._match(op)
        return "matches" if got is not None else why


# -- attention ---------------------------------------------------------------------------------------
def _peel_scalar_factor(v: Value) -> tuple[Value, float] | None:
    """(x, c) when ``v`` is a once-used ``x * c`` or ``x / c`` with a scalar constant c."""
    p = v.producer
    if p is None or p.name not in ("mul", "div") or len(v.uses) != 1:
        return None
    a, b = p.operands
    c = _scalar(b)
    if c is None and p.name == "mul":
        c, a = _scalar(a), b
    if c is None or (p.name == "div" and c == 0):
        return None
    return a, (c if p.name == "mul" else 1.0 / c)


def _nan_guard(probs: Value) -> Value | None:
    """The softmax result ``p`` when ``probs`` is ``where(isnan(p), 0, p)`` and p, isnan(p)
    are used only there (the guard torch's exporters put after a masked softmax)."""
    w = probs.producer
    if w is None or w.name != "where" or len(probs.uses) != 1:
        return None
    cond, zero, p = w.operands
    isn = cond.producer
    if isn is None or isn.name != "isnan" or isn.operand(0) is not p or len(cond.uses) != 1:
        return None
    if _scalar(zero) != 0.0 or len(p.uses) != 2:
        return None
    return p


def _mask_never_dead(mask: Value) -> bool:
    """No row of ``mask`` can be -inf everywhere (where attention and sdpa differ): a
    constant with a finite entry in every row, or ``where(c, a, b)`` of finite constants
    (transformers' eager masks use the dtype's finite minimum)."""
    arr = const_array(mask)
    if arr is not None:
        return arr.ndim >= 1 and bool(np.isfinite(arr).any(axis=-1).all())
    p = mask.producer
    if p is not None and p.name == "where":
        branches = [const_array(x) for x in p.operands[1:]]
        return all(b is not None and b.dtype.kind == "f" and bool(np.isfinite(b).all())
                   for b in branches)
    return False


def _same_dims(shapes) -> bool:
    """The leading dims agree where known (a symbolic or unknown dim is checked again when
    the attention op is specialized and lowered)."""
    for dims in zip(*shapes):
        known = {d for d in dims if isinstance(d, int)}
        if len(known) > 1:
            return False
    return True


class RecognizeAttention(RewritePattern):
    """matmul(softmax(matmul(q, kt) [*|/ c] [+ mask], axis=-1), v) -> attention or sdpa"""

    name = "recognize-attention"
    root = "matmul"

    def _match(self, op: Operation):
        probs, v = op.operands
        guard = False
        sm = _one(probs, "softmax")
        if sm is None:
            p = _nan_guard(probs)
            sm = p.producer if p is not None and p.producer is not None and \
                p.producer.name == "softmax" else None
            guard = sm is not None
        if sm is None:
            return None, "the left operand is not a once-used softmax"
        s = sm.operand(0)
        rank = len(_shape(s)) if _shape(s) is not None else None
        if rank is None or rank < 2 or sm.attr("axis") % rank != rank - 1:
            return None, "the softmax is not over the last axis"
        mask = None
        p = s.producer
        if p is not None and p.name == "add" and len(s.uses) == 1:
            a, b = p.operands
            for cand, other in ((a, b), (b, a)):
                q = cand.producer
                if q is not None and q.name in ("mul", "div", "matmul") and len(cand.uses) == 1:
                    s, mask = cand, other
                    break
            else:
                return None, "the softmax input is an add without a score operand"
        scale = 1.0
        p = s.producer
        if p is not None and p.name in ("mul", "div") and len(s.uses) == 1:
            got = _peel_scalar_factor(s)
            if got is None:
                return None, "the scores are scaled by a non-constant"
            s, scale = got
        mm = _one(s, "matmul")
        if mm is None:
            return None, "the scores are not a once-used matmul"
        q, kt = mm.operands
        for _ in range(2):      # torch: (q * sqrt(s)) @ (kt * sqrt(s))
            got = _peel_scalar_factor(q)
            if got is not None:
                q, c = got
                scale *= c
            got = _peel_scalar_factor(kt)
            if got is not None:
                kt, c = got
                scale *= c
        if mask is not None and (not isinstance(mask.type, TensorType) or
                                 mask.type.dtype != q.type.dtype):
            return None, "the mask is not an additive mask of the scores' dtype"
        return (q, kt, v, mask, scale, guard), None

    @staticmethod
    def _fused_form_ok(q, kt, v, mask, guard) -> bool:
        """Can the chain become the attention op (see the module docstring)?"""
        shapes = [_shape(x) for x in (q, kt, v)]
        if any(sh is None for sh in shapes) or len({len(sh) for sh in shapes}) != 1 \
                or len(shapes[0]) not in (3, 4):
            return False
        if not _same_dims([sh[:-2] for sh in shapes]):
            return False
        if mask is not None and len(shapes[0]) == 3 and (
                _shape(mask) is None or len(_shape(mask)) > 2):
            return False    # a rank-3 mask would broadcast over attention's head axis
        if mask is None or guard:
            return True
        return _mask_never_dead(mask)

    def _attention(self, rewriter, op, q, kt, v, mask, scale):
        """The attention op for the chain rooted at ``op`` (K = kt transposed back)."""
        rank = len(_shape(q))
        swap = list(range(rank - 2)) + [rank - 1, rank - 2]
        src, perm = kt, swap
        t = kt.producer
        if t is not None and t.name == "transpose" and t.attr("perm") is not None:
            src = t.operand(0)
            perm = [int(t.attr("perm")[i]) for i in swap]
        k = src if perm == list(range(rank)) else \
            rewriter.create("transpose", src, before=op, perm=perm).results[0]
        kw = dict(scale=float(scale))
        if rank == 3:
            kw.update(q_num_heads=1, kv_num_heads=1)
        return rewriter.create("attention", q, k, v, mask, before=op, **kw)

    def match_and_rewrite(self, op: Operation, rewriter: Rewriter) -> bool:
        got, _ = self._match(op)
        if got is None:
            return False
        q, kt, v, mask, scale, guard = got
        if self._fused_form_ok(q, kt, v, mask, guard):
            new = self._attention(rewriter, op, q, kt, v, mask, scale)
        elif guard:
            return False
        else:
            new = rewriter.create("sdpa", q, kt, v, mask, before=op, scale=float(scale))
        want, have = op.results[0].type, new.results[0].type
        if isinstance(want, TensorType) and isinstance(have, TensorType) and \
                want.shape is not None and have.shape is not None and \
                (len(want.shape) != len(have.shape) or any(
                    isinstance(a, int) and isinstance(b, int) and a != b
                    for a, b in zip(want.shape, have.shape))):
            rewriter.erase_op(new)
            return False
        rewriter.replace_op(op, new.results[:1])
        return True

    def explain(self, op: Operation) -> str:
        got, why = self._match(op)
        return "matches" if got is not None else why


PATTERNS = [recognize_layer_norm, layer_norm_scale, layer_norm_bias, RecognizeGelu(),
            RecognizeAttention()]
