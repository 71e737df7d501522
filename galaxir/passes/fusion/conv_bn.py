"""Conv + BatchNormalization folded into the conv's weights and bias.

    batch_norm(conv(x, W, b), scale, shift, mean, var)
      -> conv(x, W * f, (b - mean) * f + shift)     with f = scale / sqrt(var + eps)

Only when the weights, the conv bias (if any) and all four statistics are constants and the
conv result feeds nothing but the batch_norm (otherwise the unnormalized conv would still be
needed and nothing is saved).  The arithmetic runs in float64 and is rounded once to the
weights' dtype.
"""
from __future__ import annotations

import numpy as np

from ..rewrite import Const, P, Var, const_array, pattern

X = Var("x")


def _per_channel(arr: np.ndarray, m: int) -> np.ndarray | None:
    """``arr`` as a float64 vector of length m (a [m] or a size-1 array), else None."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        return None
    if a.size == m:
        return a.reshape(m).astype(np.float64)
    if a.size == 1:
        return np.full(m, float(a.reshape(())), np.float64)
    return None


@pattern(P.batch_norm(P.conv(X, Const(name="w"), ..., one_use=True, name_as="conv"),
                      Const(name="scale"), Const(name="shift"), Const(name="mean"),
                      Const(name="var")),
         name="fold-conv-batchnorm")
def fold_conv_batchnorm(m):
    """batch_norm(conv(x, W, b)) with constant W, b and statistics -> conv(x, W', b')"""
    conv = m.conv
    w = m.array("w")
    if w.dtype.kind != "f" or w.ndim < 3:
        return m.fail("the weights are not a floating-point conv kernel")
    bias_v = conv.operand(2)
    bias = None
    if bias_v is not None:
        bias = const_array(bias_v)
        if bias is None:
            return m.fail("the conv bias is not a constant")
    mch = w.shape[0]
    stats = [_per_channel(m.array(n), mch) for n in ("scale", "shift", "mean", "var")]
    if any(s is None for s in stats):
        return m.fail(f"the statistics are not per-channel vectors of length {mch}")
    scale, shift, mean, var = stats
    f = scale / np.sqrt(var + float(m.root.attr("epsilon")))
    w2 = (w.astype(np.float64) * f.reshape((mch,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    b0 = np.zeros(mch) if bias is None else _per_channel(bias, mch)
    if b0 is None:
        return m.fail("the conv bias is not a per-channel vector")
    b2 = ((b0 - mean) * f + shift).astype(w.dtype)
    rw = m.rewriter
    return m.b.conv(m.x, rw.constant(w2), rw.constant(b2), **dict(conv.attrs))


@pattern(P.mul(P.conv(X, Const(name="w"), ..., one_use=True, name_as="conv"), Const(name="c")),
         name="fold-conv-scale")
def fold_conv_scale(m):
    """mul(conv(x, W, b), c) with constant W, b and a per-output-channel c -> conv(x, W*c, b*c)

    (TensorFlow/Keras graphs write inference batch norm as this multiply and an add.)"""
    from .epilogue import is_per_channel
    conv = m.conv
    w, c = m.array("w"), m.array("c")
    out = conv.results[0].type.shape
    if w.dtype.kind != "f" or w.ndim < 3 or out is None or c.dtype != w.dtype:
        return m.fail("not a floating-point conv of known rank scaled in its own dtype")
    mch = w.shape[0]
    if not is_per_channel(c.shape, len(out), mch, conv.attr("layout") or "NCHW"):
        return m.fail(f"the constant {list(c.shape)} is not one factor per output channel")
    f = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (mch,))
    bias_v = conv.operand(2)
    bias = None
    if bias_v is not None:
        bias = const_array(bias_v)
        if bias is None:
            return m.fail("the conv bias is not a constant")
    w2 = (w.astype(np.float64) * f.reshape((mch,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    rw = m.rewriter
    b2 = None if bias is None else rw.constant(
        (np.broadcast_to(bias.reshape(-1), (mch,)) * f).astype(w.dtype))
    return m.b.conv(m.x, rw.constant(w2), b2, **dict(conv.attrs))


PATTERNS = [fold_conv_batchnorm, fold_conv_scale]
