"""Bias, residual and activation epilogues fused into conv / matmul / gemm / add.

Two pattern sets, run as two passes so the bias is always absorbed before an activation
is looked at:

* bias:  ``add(conv(x, w), c[1,M,1,1])`` -> ``conv(x, w, c)``;
  ``add(matmul(x, w), b[N])`` -> ``linear(x, w, b)``; ``add(gemm(a, b), c)`` -> ``gemm(a, b, c)``;
  ``add(conv(x, w, b), z)`` with z of the conv result's shape -> ``fused_conv(x, w, b, z)``
  (the residual of a ResNet block).
* activation: ``act(conv | matmul | linear | gemm | add | fused_*(activation=none))`` -> the
  fused op with ``activation=act``.  Activations: relu, tanh, sigmoid, silu (x * sigmoid(x)),
  hard_swish, mish (the op, or x * tanh(softplus(x)) as torch exports it), gelu (both forms), clip with constant bounds (relu6), leaky_relu, hard_sigmoid.

The producer's result must have no other use (else both the plain and the activated value
are needed and fusing saves nothing).
"""
from __future__ import annotations

import math

import numpy as np

from ...ir.core import Operation, Value
from ...ir.types import UNKNOWN, TensorType
from ..rewrite import Const, P, RewritePattern, Rewriter, Var, const_array, pattern

X, W, B = Var("x"), Var("w"), Var("b")

#: the fused op each plain producer becomes when it takes an activation
FUSED_OF = {"conv": "fused_conv", "matmul": "linear", "gemm": "fused_gemm", "add": "fused_add",
            "sum": "fused_add"}
FUSED = frozenset(FUSED_OF.values())
#: the activations an add takes as fused_add (others are left to the elementwise chains)
ADD_ACTIVATIONS = ("relu", "clip", "leaky_relu")
#: the attributes each producer keeps


def _shape(v: Value):
    t = v.type
    return t.shape if isinstance(t, TensorType) else None


def _one_use(v: Value) -> bool:
    return len(v.uses) == 1


# -- bias ------------------------------------------------------------------------------------------
@pattern(P.add(P.conv(X, W, ..., one_use=True, name_as="conv"), Const(name="c")),
         name="fuse-conv-bias", benefit=2)
def fuse_conv_bias(m):
    """add(conv(x, w, b?), c) with c a per-output-channel constant -> conv(x, w, b + c)"""
    conv = m.conv
    out = _shape(conv.results[0])
    c = m.array("c")
    wshape = _shape(m.w)
    if out is None or wshape is None or not isinstance(wshape[0], int) or c.ndim > len(out):
        return m.fail("ranks unknown or the constant has a higher rank")
    mch = wshape[0]
    if not is_per_channel(c.shape, len(out), mch, conv.attr("layout") or "NCHW"):
        return m.fail(f"the constant {list(c.shape)} is not a per-channel bias of the "
                      f"{conv.attr('layout') or 'NCHW'} conv's {mch} channels")
    if c.dtype != m.w.type.dtype.numpy:
        return m.fail("the constant's dtype differs")
    vec = np.broadcast_to(c.reshape(-1), (mch,))
    old = conv.operand(2)
    if old is not None:
        ob = const_array(old)
        if ob is None:
            return m.fail("the conv already has a non-constant bias")
        vec = ob.reshape(-1) + vec
    bias = m.rewriter.constant(np.ascontiguousarray(vec, dtype=c.dtype))
    return m.b.create(conv.name, m.x, m.w, bias, *conv.operands[3:], **dict(conv.attrs)).results[0]


def is_per_channel(shape: tuple, rank: int, mch: int, layout: str) -> bool:
    """Whether a constant of ``shape`` broadcasts to a rank-``rank`` conv result as one value
    per output channel (axis 1 for NCHW, the last axis for NHWC)."""
    if len(shape) > rank:
        return False
    full = (1,) * (rank - len(shape)) + tuple(shape)
    axis = rank - 1 if layout == "NHWC" else 1
    return full[axis] in (1, mch) and all(d == 1 for i, d in enumerate(full) if i != axis)


def _bias_broadcasts_over_last(bias: Value, out) -> bool:
    bs = _shape(bias)
    if bs is None or out is None or len(bs) > len(out) or len(out) == 0:
        return False
    if len(bs) == 0:
        return True
    if any(d != 1 for d in bs[:-1]):
        return False
    return bs[-1] == 1 or bs[-1] == out[-1] or out[-1] == UNKNOWN


@pattern(P.add(P.matmul(X, W, one_use=True, name_as="mm"), B), name="fuse-matmul-bias")
def fuse_matmul_bias(m):
    """add(matmul(x, w), b) with b broadcast over the last axis -> linear(x, w, b)"""
    out = _shape(m.mm.results[0])
    if not _bias_broadcasts_over_last(m["b"], out):
        return m.fail("the added value is not a bias along the last axis")
    if m["b"].type.dtype != m.x.type.dtype:
        return m.fail("dtypes differ")
    return m.b.linear(m.x, m.w, m["b"])


@pattern(P.add(P.gemm(X, W, None, one_use=True, name_as="gemm"), B), name="fuse-gemm-bias")
def fuse_gemm_bias(m):
    """add(gemm(a, b), c) -> gemm(a, b, c) (with beta = 1)"""
    g = m.gemm
    out, cs = _shape(g.results[0]), _shape(m["b"])
    if out is None or cs is None or len(cs) > 2 or m["b"].type.dtype != m.x.type.dtype:
        return m.fail("c must be rank <= 2 with the same dtype")
    full = (1,) * (2 - len(cs)) + tuple(cs)
    if any(not (c == 1 or c == o) for c, o in zip(full, out)):
        return m.fail("c does not broadcast to the gemm result without growing it")
    attrs = dict(g.attrs)
    attrs["beta"] = 1.0
    return m.b.gemm(m.x, m.w, m["b"], **attrs)


def _same_static_shape(a: Value, b: Value) -> bool:
    sa, sb = _shape(a), _shape(b)
    return sa is not None and sa == sb and UNKNOWN not in sa and a.type.dtype == b.type.dtype


@pattern(P.any_of("add", "sum")(P.any_of("conv", "fused_conv")(X, W, ..., one_use=True, name_as="conv"),
                                Var("z")),
         name="fuse-conv-residual")
def fuse_conv_residual(m):
    """add(conv(x, w, b), z) with z of the conv result's shape -> fused_conv(x, w, b, z)"""
    conv = m.conv
    if conv.name == "fused_conv" and (conv.operand(3) is not None or conv.attr("activation") != "none"):
        return m.fail("the conv already has a residual or an activation")
    if not _same_static_shape(conv.results[0], m.z) or not _same_static_shape(m.root.results[0], m.z):
        return m.fail("z does not have the conv result's static shape")
    if const_array(m.z) is not None:
        return m.fail("z is a constant (a bias, not a residual)")
    attrs = {k: v for k, v in conv.attrs.items() if k not in ("activation", "activation_params")}
    return m.b.fused_conv(m.x, m.w, conv.operand(2), m.z, **attrs)


BIAS_PATTERNS = [fuse_conv_bias, fuse_matmul_bias, fuse_gemm_bias, fuse_conv_residual]


# -- activations ---------------------------------------------------------------------------------
def _scalar_const(v: Value | None) -> float | None:
    arr = const_array(v)
    if arr is None or arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    return float(arr.reshape(()))


def activation_of(op: Operation) -> tuple[Value, str, tuple[float, ...]] | None:
    """(input, activation name, params) when ``op`` is an activation an epilogue can carry."""
    name = op.name
    if name in ("relu", "tanh", "sigmoid", "hard_swish", "mish"):
        return op.operand(0), name, ()
    if name == "swish" and float(op.attr("alpha")) == 1.0:
        return op.operand(0), "silu", ()
    if name == "gelu":
        return op.operand(0), "gelu_tanh" if op.attr("approximate") == "tanh" else "gelu", ()
    if name == "leaky_relu":
        return op.operand(0), "leaky_relu", (float(op.attr("alpha")),)
    if name == "hard_sigmoid":
        return op.operand(0), "hard_sigmoid", (float(op.attr("alpha")), float(op.attr("beta")))
    if name == "clip":
        lo_v, hi_v = op.operand(1), op.operand(2)
        lo = -math.inf if lo_v is None else _scalar_const(lo_v)
        hi = math.inf if hi_v is None else _scalar_const(hi_v)
        if lo is None or hi is None:
            return None
        if lo == 0.0 and hi == math.inf:
            return op.operand(0), "relu", ()
        return op.operand(0), "clip", (lo, hi)
    if name == "mul" and len(op.operands) == 2:  # silu: x * sigmoid(x)
        for a, s in (op.operands, op.operands[::-1]):
            sp = s.producer if s is not None else None
            if sp is not None and sp.name == "sigmoid" and sp.operand(0) is a and _one_use(s):
                return a, "silu", ()
        for a, t in (op.operands, op.operands[::-1]):  # mish: x * tanh(softplus(x))
            tp = t.producer if t is not None else None
            sp = tp.operand(0) if tp is not None and tp.name == "tanh" else None
            spp = sp.producer if sp is not None else None
            if spp is not None and spp.name == "softplus" and spp.operand(0) is a \
                    and _one_use(t) and _one_use(sp):
                return a, "mish", ()
    return None


class FuseActivation(RewritePattern):
    """act(p(...)) -> fused p with ``activation=act``, for p in conv, matmul, gemm, add and
    their fused forms that carry no activation yet."""

    name = "fuse-activation"
    root = ("relu", "tanh", "sigmoid", "hard_swish", "gelu", "leaky_relu", "hard_sigmoid",
            "clip", "mul", "mish", "swish")

    def _candidate(self, op: Operation):
        act = activation_of(op)
        if act is None:
            return None, "not an activation with constant parameters"
        x, name, params = act
        p = x.producer if x is not None else None
        if p is None or p.parent is not op.parent:
            return None, "the input is not produced by an op in the same block"
        want_uses = 2 if op.name == "mul" else 1   # x * gate(x) reads x twice
        if len(x.uses) != want_uses or len(p.results) != 1:
            return None, f"the producer's result has {len(x.uses)} uses"
        if p.name in FUSED:
            if p.attr("activation") != "none":
                return None, "the producer already has an activation"
        elif p.name not in FUSED_OF:
            return None, f"{p.name} takes no activation epilogue"
        if p.name in ("add", "sum"):
            if len(p.operands) != 2 or not _is_float(x):
                return None, "not a float add of two operands"
            if name not in ADD_ACTIVATIONS:
                return None, f"add takes only {', '.join(ADD_ACTIVATIONS)} (the rest fuse as chains)"
        return (p, name, params), None

    def match_and_rewrite(self, op: Operation, rewriter: Rewriter) -> bool:
        got, _ = self._candidate(op)
        if got is None:
            return False
        p, name, params = got
        fused = FUSED_OF.get(p.name, p.name)
        attrs = dict(p.attrs)
        attrs["activation"] = name
        attrs["activation_params"] = tuple(params)
        new = rewriter.create(fused, *p.operands, before=op, **attrs)
        rewriter.replace_op(op, new.results)
        return True

    def explain(self, op: Operation) -> str:
        got, why = self._candidate(op)
        return "matches" if got is not None else why


def _is_float(v: Value) -> bool:
    return isinstance(v.type, TensorType) and v.type.dtype.numpy.kind == "f"


ACTIVATION_PATTERNS = [FuseActivation()]
