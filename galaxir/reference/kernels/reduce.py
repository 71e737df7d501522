"""Kernels for reductions, argmax/argmin, the softmax family, normalizations and the NLL loss.

Floats narrower than float32 (float16, bfloat16, float8) are computed in float32 and cast
back, as ONNX's reference does for statistics (stash_type) and as every runtime does for
accumulation; everything else is computed in its own dtype.
"""
from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ..registry import kernel
from .nn import channels_last


def _compute_dtype(dt: np.dtype) -> np.dtype:
    """The dtype to compute in: float32 for narrow floats, the dtype itself otherwise."""
    if dt.kind == "f" and dt.itemsize >= 4:
        return dt
    if dt.kind in "fV" or dt.name in ("bfloat16",) or dt.name.startswith("float"):
        return np.dtype(np.float32)
    return dt


def _up(x: np.ndarray) -> np.ndarray:
    cd = _compute_dtype(x.dtype)
    return x if cd == x.dtype else x.astype(cd)


def _axes(ctx, x: np.ndarray, axes) -> tuple[int, ...] | None:
    """The normalized axes to reduce, or None for 'no reduction' (noop_with_empty_axes)."""
    ax = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if not ax:
        if ctx.attr("noop_with_empty_axes"):
            return None
        return tuple(range(x.ndim))
    out = []
    for a in ax:
        if not -x.ndim <= a < max(x.ndim, 1):
            raise ExecutionError(f"{ctx.op.name}: axis {a} out of range for rank {x.ndim}")
        out.append(a + x.ndim if a < 0 else a)
    return tuple(out)


def _reduction(fn):
    """Wrap ``fn(x, axes, keepdims)`` into a kernel handling the axes operand and noop."""
    def run(ctx, x, axes=None):
        ax = _axes(ctx, x, axes)
        if ax is None:
            return x
        keep = bool(ctx.attr("keepdims"))
        return np.asarray(fn(x, ax, keep)).astype(x.dtype, copy=False)
    return run


def _sum(x, ax, keep):
    if x.dtype == np.bool_:
        return np.sum(x, axis=ax, keepdims=keep)
    return np.sum(_up(x), axis=ax, keepdims=keep)


def _mean(x, ax, keep):
    return np.mean(_float(x), axis=ax, keepdims=keep)  # ints: cast back truncates


def _extreme_init(dt: np.dtype, largest: bool):
    """The largest (or smallest) value of ``dt``: the identity of min (or max)."""
    if dt == np.bool_:
        return largest
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return info.max if largest else info.min
    return np.inf if largest else -np.inf


def _max(x, ax, keep):
    xx = _up(x)
    return np.max(xx, axis=ax, keepdims=keep, initial=_extreme_init(xx.dtype, False))


def _min(x, ax, keep):
    xx = _up(x)
    return np.min(xx, axis=ax, keepdims=keep, initial=_extreme_init(xx.dtype, True))


def _prod(x, ax, keep):
    return np.prod(_up(x), axis=ax, keepdims=keep)


def _l1(x, ax, keep):
    return np.sum(np.abs(_up(x)), axis=ax, keepdims=keep)


def _float(x):
    xx = _up(x)
    return xx.astype(np.float64) if xx.dtype.kind in "iub" else xx


def _l2(x, ax, keep):
    xx = _float(x)
    return np.sqrt(np.sum(xx * xx, axis=ax, keepdims=keep))


def _sum_square(x, ax, keep):
    xx = _up(x)
    return np.sum(xx * xx, axis=ax, keepdims=keep)


def _log_sum(x, ax, keep):
    with np.errstate(divide="ignore"):
        return np.log(np.sum(_float(x), axis=ax, keepdims=keep))


def _log_sum_exp(x, ax, keep):
    xx = _float(x)
    m = np.max(xx, axis=ax, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, np.zeros((), xx.dtype))
    with np.errstate(divide="ignore"):  # an empty set gives log(0) = -inf, as specified
        s = np.log(np.sum(np.exp(xx - m), axis=ax, keepdims=True)) + m
    return s if keep else np.squeeze(s, axis=ax)


for _name, _fn in {"reduce_sum": _sum, "reduce_mean": _mean, "reduce_max": _max,
                   "reduce_min": _min, "reduce_prod": _prod, "reduce_l1": _l1,
                   "reduce_l2": _l2, "reduce_sum_square": _sum_square,
                   "reduce_log_sum": _log_sum, "reduce_log_sum_exp": _log_sum_exp}.items():
    kernel(_name)(_reduction(_fn))


def _arg(ctx, x, largest: bool):
    axis = ctx.attr("axis")
    axis = axis + x.ndim if axis < 0 else axis
    fn = np.argmax if largest else np.argmin
    xx = _up(x)
    if ctx.attr("select_last_index"):
        flipped = np.flip(xx, axis=axis)
        idx = x.shape[axis] - 1 - fn(flipped, axis=axis, keepdims=True)
    else:
        idx = fn(xx, axis=axis, keepdims=True)
    if not ctx.attr("keepdims"):
        idx = np.squeeze(idx, axis=axis)
    return idx.astype(np.int64, copy=False)


@kernel("argmax")
def argmax(ctx, x):
    return _arg(ctx, x, True)


@kernel("argmin")
def argmin(ctx, x):
    return _arg(ctx, x, False)


# -- softmax family ----------------------------------------------------------------------------
def softmax_np(x: np.ndarray, axis: int) -> np.ndarray:
    xx = _up(x)
    e = np.exp(xx - np.max(xx, axis=axis, keepdims=True))
    e /= np.sum(e, axis=axis, keepdims=True)
    return e.astype(x.dtype, copy=False)


def log_softmax_np(x: np.ndarray, axis: int) -> np.ndarray:
    xx = _up(x)
    s = xx - np.max(xx, axis=axis, keepdims=True)
    s -= np.log(np.sum(np.exp(s), axis=axis, keepdims=True))
    return s.astype(x.dtype, copy=False)


@kernel("softmax")
def softmax(ctx, x):
    return softmax_np(x, ctx.attr("axis"))


@kernel("log_softmax")
def log_softmax(ctx, x):
    return log_softmax_np(x, ctx.attr("axis"))


@kernel("hardmax")
def hardmax(ctx, x):
    axis = ctx.attr("axis")
    axis = axis + x.ndim if axis < 0 else axis
    out = np.zeros(x.shape, dtype=x.dtype)
    if x.size:
        idx = np.argmax(_up(x), axis=axis, keepdims=True)
        np.put_along_axis(out, idx, np.ones((), x.dtype), axis=axis)
    return out


# -- normalizations ------------------------------------------------------------------------------
def _standardize(x: np.ndarray, axes: tuple[int, ...], eps: float):
    """(x - mean) * inv_std over ``axes`` (kept dims), with mean and inv_std."""
    mean = np.mean(x, axis=axes, keepdims=True)
    d = x - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + x.dtype.type(eps))
    d *= inv
    return d, mean, inv


def _trailing(x: np.ndarray, axis: int) -> tuple[int, ...]:
    axis = axis + x.ndim if axis < 0 else axis
    return tuple(range(axis, x.ndim))


def _channel(v: np.ndarray, rank: int, dtype) -> np.ndarray:
    v = np.asarray(v).astype(dtype, copy=False)
    return v.reshape((-1,) + (1,) * (rank - 2)) if rank > 2 else v


@kernel("layer_norm")
def layer_norm(ctx, x, scale, bias=None):
    xx = _up(x)
    y, _, _ = _standardize(xx, _trailing(x, ctx.attr("axis")), ctx.attr("epsilon"))
    y *= scale.astype(xx.dtype, copy=False)
    if bias is not None:
        y += bias.astype(xx.dtype, copy=False)
    return y.astype(x.dtype, copy=False)


@kernel("rms_norm")
def rms_norm(ctx, x, scale):
    xx = _up(x)
    ms = np.mean(xx * xx, axis=_trailing(x, ctx.attr("axis")), keepdims=True)
    y = xx / np.sqrt(ms + xx.dtype.type(ctx.attr("epsilon")))
    y *= scale.astype(xx.dtype, copy=False)
    return y.astype(x.dtype, copy=False)


@kernel("group_norm")
def group_norm(ctx, x, scale, bias):
    g = ctx.attr("num_groups")
    n, c = x.shape[:2]
    if g <= 0 or c % g:
        raise ExecutionError(f"group_norm: {c} channels do not split into {g} groups")
    xx = _up(x)
    y, _, _ = _standardize(xx.reshape(n, g, -1), (2,), ctx.attr("epsilon"))
    y = y.reshape(x.shape)
    y *= _channel(scale, x.ndim, xx.dtype)
    y += _channel(bias, x.ndim, xx.dtype)
    return y.astype(x.dtype, copy=False)


@kernel("instance_norm")
def instance_norm(ctx, x, scale, bias):
    xx = _up(x)
    y, _, _ = _standardize(xx, tuple(range(2, x.ndim)), ctx.attr("epsilon"))
    y *= _channel(scale, x.ndim, xx.dtype)
    y += _channel(bias, x.ndim, xx.dtype)
    return y.astype(x.dtype, copy=False)


@kernel("batch_norm")
def batch_norm(ctx, x, scale, bias, mean, var):
    """Fold the statistics into one per-channel multiply-add (two passes over x)."""
    cd = _compute_dtype(x.dtype)
    var = np.asarray(var).astype(cd, copy=False)
    inv = np.asarray(scale).astype(cd, copy=False) / np.sqrt(var + cd.type(ctx.attr("epsilon")))
    shift = np.asarray(bias).astype(cd, copy=False) - np.asarray(mean).astype(cd, copy=False) * inv
    if (ctx.attr("layout") or "NCHW") == "NHWC":  # channels last: [C] broadcasts as it is
        y = x.astype(cd, copy=False) * inv.reshape(-1)
        y += shift.reshape(-1)
        return y.astype(x.dtype, copy=False)
    y = x.astype(cd, copy=False) * _channel(inv, x.ndim, cd)
    y += _channel(shift, x.ndim, cd)
    return y.astype(x.dtype, copy=False)


@kernel("lp_norm")
def lp_norm(ctx, x):
    xx = _up(x)
    axis = ctx.attr("axis")
    p = ctx.attr("p")
    if p == 1:
        norm = np.sum(np.abs(xx), axis=axis, keepdims=True)
    elif p == 2:
        norm = np.sqrt(np.sum(xx * xx, axis=axis, keepdims=True))
    else:
        raise ExecutionError(f"lp_norm: p must be 1 or 2, got {p}")
    zero = norm == 0
    y = np.where(zero, np.zeros((), xx.dtype), xx / np.where(zero, np.ones((), xx.dtype), norm))
    return y.astype(x.dtype, copy=False)


@kernel("mean_variance_norm")
def mean_variance_norm(ctx, x):
    xx = _up(x)
    axes = tuple(a + x.ndim if a < 0 else a for a in ctx.attr("axes"))
    mean = np.mean(xx, axis=axes, keepdims=True)
    var = np.mean(xx * xx, axis=axes, keepdims=True) - mean * mean
    std = np.sqrt(np.maximum(var, np.zeros((), xx.dtype)))
    return ((xx - mean) / (std + xx.dtype.type(1e-9))).astype(x.dtype, copy=False)


@kernel("lrn")
@channels_last
def lrn(ctx, x):
    """Sum of squares over a channel window [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    size = ctx.attr("size")
    xx = _up(x)
    c = x.shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = xx * xx
    csum = np.cumsum(sq, axis=1)
    pad = [(0, 0)] * x.ndim
    pad[1] = (1, 0)
    csum = np.pad(csum, pad)  # csum[:, k] = sum of sq[:, :k]
    ends = np.minimum(np.arange(c) + hi + 1, c)
    starts = np.maximum(np.arange(c) - lo, 0)
    window = np.take(csum, ends, axis=1) - np.take(csum, starts, axis=1)
    alpha, beta, bias = ctx.attr("alpha"), ctx.attr("beta"), ctx.attr("bias")
    y = xx / (xx.dtype.type(bias) + xx.dtype.type(alpha / size) * window) ** xx.dtype.type(beta)
    return y.astype(x.dtype, copy=False)


# -- losses ------------------------------------------------------------------------------------
@kernel("negative_log_likelihood_loss")
def nll_loss(ctx, x, target, weight=None):
    ii = ctx.attr("ignore_index")
    xx = _up(x)
    target = target.astype(np.int64, copy=False)
    mask = np.ones(target.shape, dtype=bool) if ii is None else target != ii
    safe = np.where(mask, target, 0)
    c = x.shape[1]
    if np.any((safe < 0) | (safe >= c)):
        raise ExecutionError(f"negative_log_likelihood_loss: target values must be in [0, {c}) "
                             "or equal ignore_index")
    picked = np.take_along_axis(xx, np.expand_dims(safe, 1), axis=1).squeeze(1)
    w = np.ones((), xx.dtype) if weight is None else np.asarray(weight).astype(xx.dtype)[safe]
    w = np.where(mask, w, np.zeros((), xx.dtype))
    loss = -picked * w
    red = ctx.attr("reduction")
    if red == "sum":
        loss = np.sum(loss)
    elif red == "mean":
        loss = np.sum(loss) / np.sum(np.broadcast_to(w, loss.shape))
    return np.asarray(loss).astype(x.dtype, copy=False)
