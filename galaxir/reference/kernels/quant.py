"""Kernels for the quantization ops (ONNX semantics: round half to even, saturate)."""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np

from ...errors import ExecutionError
from ...ir.opdef import describe
from ..registry import kernel

_FLOAT8 = {np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e4m3fnuz),
           np.dtype(ml_dtypes.float8_e5m2), np.dtype(ml_dtypes.float8_e5m2fnuz)}
_SUBBYTE_INT = {np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4), np.dtype(ml_dtypes.int2),
                np.dtype(ml_dtypes.uint2)}


def expand_param(ctx, v: np.ndarray, shape: tuple, axis: int, block: int) -> np.ndarray:
    """A scale / zero point made broadcastable to ``shape``: per tensor, per axis or blocked."""
    v = np.asarray(v)
    if v.ndim == 0:
        return v
    if v.size == 1 and not block:
        return v.reshape(())
    if not shape:
        raise ExecutionError(f"{ctx.op.name}: a scalar input needs a scalar scale, got shape {v.shape}")
    axis = axis + len(shape) if axis < 0 else axis
    if not block:
        if v.ndim != 1 or v.shape[0] != shape[axis]:
            raise ExecutionError(f"{ctx.op.name}: per-axis scale of shape {v.shape} does not match "
                                 f"axis {axis} of an input of shape {shape}")
        dims = [1] * len(shape)
        dims[axis] = v.shape[0]
        return v.reshape(dims)
    rep = np.repeat(v, block, axis=axis)
    rep = np.take(rep, np.arange(shape[axis]), axis=axis)
    if rep.shape != tuple(shape):
        raise ExecutionError(f"{ctx.op.name}: blocked scale of shape {v.shape} (block_size {block}) "
                             f"does not fit an input of shape {shape}")
    return rep


def _int_range(dt: np.dtype) -> tuple[int, int]:
    if dt in _SUBBYTE_INT:
        info = ml_dtypes.iinfo(dt)
    else:
        info = np.iinfo(dt)
    return int(info.min), int(info.max)


def quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, out: np.dtype,
             saturate: bool = True, precision: np.dtype | None = None) -> np.ndarray:
    """The QuantizeLinear formula on already-broadcastable scale / zero point."""
    if precision is not None:
        q = x.astype(precision) / np.asarray(scale).astype(precision)
    else:
        q = x / scale
    if out.kind in "iu" or out in _SUBBYTE_INT:
        lo, hi = _int_range(out)
        r = np.rint(q).astype(np.float64)
        if zp is not None:
            r = r + np.asarray(zp).astype(np.float64)
        return np.clip(r, lo, hi).astype(out)
    if out in _FLOAT8:
        q = q.astype(np.float32)
        if saturate:
            m = float(ml_dtypes.finfo(out).max)
            q = np.clip(q, -m, m)  # keeps NaN
        return q.astype(out)
    if out == np.dtype(ml_dtypes.float4_e2m1fn):
        q = q.astype(np.float32)
        if zp is not None:
            q = q + np.asarray(zp).astype(np.float32)
        return q.astype(out)
    raise ExecutionError(f"quantize_linear: cannot quantize to {out}")


def check_scale(ctx, scale) -> None:
    """A scale computed at run time must be positive and finite, as constant ones are."""
    s = np.asarray(scale)
    if s.dtype.kind == "f" or s.dtype.kind == "V" or s.dtype.name in ("bfloat16", "float16"):
        a = s.astype(np.float64)
        if a.size and not np.all(np.isfinite(a) & (a > 0)):
            bad = a[~(np.isfinite(a) & (a > 0))]
            raise ExecutionError(f"{describe(ctx.op)}: scale must be positive and finite, got "
                                 f"{bad.ravel()[:4].tolist()}")


@kernel("quantize_linear")
def quantize_linear(ctx, x, scale, zp=None):
    check_scale(ctx, scale)
    axis, block = ctx.attr("axis"), ctx.attr("block_size")
    scale = expand_param(ctx, scale, x.shape, axis, block)
    if zp is not None:
        zp = expand_param(ctx, zp, x.shape, axis, block)
    prec = ctx.attr("precision")
    return quantize(x, scale, zp, ctx.result_dtype(0), bool(ctx.attr("saturate")),
                    prec.numpy if prec is not None else None)


@kernel("dequantize_linear")
def dequantize_linear(ctx, x, scale, zp=None):
    check_scale(ctx, scale)
    axis, block = ctx.attr("axis"), ctx.attr("block_size")
    out = ctx.result_dtype(0)
    work = np.float64 if out == np.float64 else np.float32
    dx = x.astype(work)
    if zp is not None and x.dtype not in _FLOAT8 and x.dtype != np.dtype(ml_dtypes.float4_e2m1fn):
        dx = dx - expand_param(ctx, zp, x.shape, axis, block).astype(work)
    s = expand_param(ctx, scale, x.shape, axis, block)
    return (dx * s).astype(out)


@kernel("dynamic_quantize_linear")
def dynamic_quantize_linear(ctx, x):
    y, scale, zp = dynamic_quantize(x)
    return y, np.array(scale, dtype=ctx.result_dtype(1)), np.array(zp, dtype=np.uint8)


def dynamic_quantize(x):
    """(uint8 x, float32 scale, zero point) as DynamicQuantizeLinear computes them."""
    x = x.astype(np.float32)
    hi = np.float32(max(0.0, float(np.max(x)) if x.size else 0.0))
    lo = np.float32(min(0.0, float(np.min(x)) if x.size else 0.0))
    scale = np.float32((hi - lo) if hi != lo else 1.0) / np.float32(255)
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return y, scale, zp


# -- integer matmul and conv -------------------------------------------------------------------
def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul through float64 BLAS: exact while |sums| < 2**53 (8/16-bit inputs)."""
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def _sub_zero_point_rows(a: np.ndarray, zp) -> np.ndarray:
    a = a.astype(np.int64)
    if zp is None:
        return a
    zp = np.asarray(zp).astype(np.int64)
    if zp.ndim == 1 and zp.size > 1 and a.ndim >= 2:
        zp = zp.reshape(-1, 1)  # one zero point per row of A
    return a - zp


@kernel("matmul_integer")
def matmul_integer(ctx, a, b, a_zp=None, b_zp=None):
    A = _sub_zero_point_rows(a, a_zp)
    B = b.astype(np.int64) - (np.asarray(b_zp).astype(np.int64) if b_zp is not None else 0)
    return _exact_matmul(A, B).astype(np.int32)


def conv_nd(x: np.ndarray, w: np.ndarray, attrs) -> np.ndarray:
    """ONNX Conv (any number of spatial dims, groups, dilations, pads, auto_pad) by im2col
    and one matmul per group, in float64."""
    n, c = x.shape[:2]
    nsp = x.ndim - 2
    kernel_shape = tuple(w.shape[2:])
    strides = attrs("strides") or (1,) * nsp
    dil = attrs("dilations") or (1,) * nsp
    pads = list(attrs("pads") or (0,) * (2 * nsp))
    auto = attrs("auto_pad")
    group = attrs("group") or 1
    in_sp = x.shape[2:]
    if auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        pads = [0] * (2 * nsp)
        if auto != "VALID":
            for i in range(nsp):
                out = -(-in_sp[i] // strides[i])
                total = max(0, (out - 1) * strides[i] + (kernel_shape[i] - 1) * dil[i] + 1 - in_sp[i])
                small, big = total // 2, total - total // 2
                pads[i], pads[i + nsp] = (small, big) if auto == "SAME_UPPER" else (big, small)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[i], pads[i + nsp]) for i in range(nsp)])
    out_sp = [(xp.shape[2 + i] - ((kernel_shape[i] - 1) * dil[i] + 1)) // strides[i] + 1
              for i in range(nsp)]
    # columns: (N, C, k..., out...)
    cols = np.empty((n, c) + kernel_shape + tuple(out_sp), dtype=np.float64)
    for kidx in itertools.product(*[range(k) for k in kernel_shape]):
        sl = tuple(slice(kidx[i] * dil[i], kidx[i] * dil[i] + (out_sp[i] - 1) * strides[i] + 1, strides[i])
                   for i in range(nsp))
        cols[(slice(None), slice(None)) + kidx] = xp[(slice(None), slice(None)) + sl]
    m = w.shape[0]
    cg, mg = c // group, m // group
    klen = int(np.prod(kernel_shape)) if kernel_shape else 1
    npix = int(np.prod(out_sp)) if out_sp else 1
    cols = cols.reshape(n, group, cg * klen, npix)
    wf = w.astype(np.float64).reshape(group, mg, cg * klen)
    y = np.einsum("gmk,ngkp->ngmp", wf, cols, optimize=True)
    return y.reshape((n, m) + tuple(out_sp))


def _attrs(ctx):
    return lambda name: ctx.attr(name)


@kernel("conv_integer")
def conv_integer(ctx, x, w, x_zp=None, w_zp=None):
    X = x.astype(np.int64) - (np.asarray(x_zp).astype(np.int64) if x_zp is not None else 0)
    W = w.astype(np.int64)
    if w_zp is not None:
        z = np.asarray(w_zp).astype(np.int64)
        W = W - (z.reshape((-1,) + (1,) * (W.ndim - 1)) if z.ndim == 1 and z.size > 1 else z.reshape(()))
    return np.rint(conv_nd(X, W, _attrs(ctx))).astype(np.int32)


def _requantize(acc: np.ndarray, factor, y_zp: np.ndarray, out: np.dtype) -> np.ndarray:
    r = acc.astype(np.float64) * np.asarray(factor).astype(np.float64)
    r = r + np.asarray(y_zp).astype(np.float64)
    lo, hi = _int_range(out)
    return np.clip(np.rint(r), lo, hi).astype(out)


@kernel("qlinear_matmul")
def qlinear_matmul(ctx, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
    A = _sub_zero_point_rows(a, a_zp)
    B = b.astype(np.int64) - np.asarray(b_zp).astype(np.int64)
    acc = _exact_matmul(A, B)
    a_s = np.asarray(a_scale)
    if a_s.ndim == 1 and a_s.size > 1 and a.ndim >= 2:
        a_s = a_s.reshape(-1, 1)
    factor = a_s * np.asarray(b_scale) / np.asarray(y_scale)  # in the scales' own dtype
    return _requantize(acc, factor, y_zp, ctx.result_dtype(0))


@kernel("qlinear_conv")
def qlinear_conv(ctx, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias=None):
    X = x.astype(np.int64) - np.asarray(x_zp).astype(np.int64)
    W = w.astype(np.int64)
    z = np.asarray(w_zp).astype(np.int64)
    per_ch = (-1,) + (1,) * (W.ndim - 1)
    W = W - (z.reshape(per_ch) if z.ndim == 1 and z.size > 1 else z.reshape(()))
    acc = conv_nd(X, W, _attrs(ctx))
    if bias is not None:
        acc = acc + bias.astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
    ws = np.asarray(w_scale)
    if ws.size > 1:
        ws = ws.reshape((1, -1) + (1,) * (x.ndim - 2))
    factor = np.asarray(x_scale) * ws / np.asarray(y_scale)
    return _requantize(acc, factor, y_zp, ctx.result_dtype(0))
