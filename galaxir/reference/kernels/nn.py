"""Kernels for convolution, pooling and image ops.

Conv is im2col: a strided window view of the padded input, copied once into a
[N, group, C/group * K, P] column matrix, and one batched float32 matmul for all groups.
Pools loop over the kernel's taps (a handful) with whole-tensor numpy ops per tap, never
over output elements.  Resize is separable: one small [out, in] weight matrix per resized
axis.
"""
from __future__ import annotations

import io
import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...errors import ExecutionError, UnsupportedOpError
from ...ir.ops.nn import (conv_transpose_geometry, resize_output_shape, resolve_window,
                           window_out_dim, window_span)
from ..registry import kernel


def _work_dtype(dt: np.dtype) -> np.dtype:
    """The dtype arithmetic runs in: float64 stays, other floats compute in float32."""
    dt = np.dtype(dt)
    if dt == np.float64:
        return dt
    return np.dtype(np.float32)


def _pad(x: np.ndarray, begin, end, value=0) -> np.ndarray:
    """Pad (or crop, for negative pads) the trailing len(begin) dims of x."""
    n = len(begin)
    lead = x.ndim - n
    if any(b < 0 or e < 0 for b, e in zip(begin, end)):
        sl = [slice(None)] * lead + [slice(max(-b, 0), x.shape[lead + i] - max(-e, 0))
                                     for i, (b, e) in enumerate(zip(begin, end))]
        x = x[tuple(sl)]
        begin = [max(b, 0) for b in begin]
        end = [max(e, 0) for e in end]
    if not any(begin) and not any(end):
        return x
    return np.pad(x, [(0, 0)] * lead + list(zip(begin, end)), constant_values=value)


def _windows(xp: np.ndarray, kernel, strides, dilations, out) -> np.ndarray:
    """A read-only view [..., *out, *kernel] of the windows of a padded tensor."""
    n = len(kernel)
    spans = tuple(window_span(k, d) for k, d in zip(kernel, dilations))
    lead = xp.ndim - n
    # Enough input for the output (the pad may leave extra rows at the end).
    need = [(o - 1) * s + sp if o > 0 else sp for o, s, sp in zip(out, strides, spans)]
    sl = [slice(None)] * lead + [slice(0, nd) for nd in need]
    v = sliding_window_view(xp[tuple(sl)], spans, axis=tuple(range(lead, lead + n)))
    sel = [slice(None)] * lead + [slice(None, None, s) for s in strides] + \
          [slice(None, None, d) for d in dilations]
    v = v[tuple(sel)]
    sel2 = [slice(None)] * lead + [slice(0, o) for o in out]
    return v[tuple(sel2)]


def conv_nd(x: np.ndarray, w: np.ndarray, b, strides, dilations, pads, group: int) -> np.ndarray:
    """N-d grouped convolution by im2col and one batched matmul; returns x's dtype."""
    out_dtype = x.dtype
    wt = _work_dtype(x.dtype)
    x = x.astype(wt, copy=False)
    w = w.astype(wt, copy=False)
    n = x.ndim - 2
    N, C = x.shape[:2]
    M = w.shape[0]
    kernel = w.shape[2:]
    if C % group or M % group:
        raise ExecutionError(f"conv: channels {C} and filters {M} must divide by group {group}")
    Cg, Mg = C // group, M // group
    if w.shape[1] != Cg:
        raise ExecutionError(f"conv: weight {list(w.shape)} does not fit input {list(x.shape)} "
                             f"with group={group}")
    xp = _pad(x, pads[:n], pads[n:], 0)
    out = [window_out_dim(xp.shape[2 + i], kernel[i], strides[i], dilations[i], 0, 0)
           for i in range(n)]
    P = int(np.prod(out))
    K = int(np.prod(kernel))
    if Cg == 1 and group > 1:
        # Depthwise: a weighted sum of shifted inputs, no matmul.
        wd = w.reshape(group, Mg, K)
        y = np.zeros((N, group, Mg) + tuple(out), dtype=wt)
        for t, tap in enumerate(itertools.product(*[range(k) for k in kernel])):
            src = tuple(slice(tt * d, tt * d + (o - 1) * s + 1, s)
                        for tt, d, o, s in zip(tap, dilations, out, strides))
            xt = xp[(slice(None), slice(None)) + src][:, :, None]
            y += xt * wd[:, :, t].reshape((1, group, Mg) + (1,) * n)
        y = y.reshape(N, M, *out)
        if b is not None:
            y += b.astype(wt, copy=False).reshape((1, M) + (1,) * n)
        return y.astype(out_dtype, copy=False)
    if all(k == 1 for k in kernel):
        sel = (slice(None), slice(None)) + tuple(slice(0, (o - 1) * s + 1, s) if o else slice(0, 0)
                                                 for o, s in zip(out, strides))
        cols = xp[sel].reshape(N, group, Cg, P)
    else:
        # im2col: one strided copy per kernel tap into [N, C, *kernel, *out].
        cols = np.empty((N, C) + tuple(kernel) + tuple(out), dtype=wt)
        for tap in itertools.product(*[range(k) for k in kernel]):
            src = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                        for t, d, o, s in zip(tap, dilations, out, strides))
            cols[(slice(None), slice(None)) + tap] = xp[(slice(None), slice(None)) + src]
        cols = cols.reshape(N, group, Cg * K, P)
    wm = w.reshape(group, Mg, Cg * K)
    if group == 1:
        y = np.empty((N, M, P), dtype=wt)
        for i in range(N):  # plain 2-d GEMMs: the fastest BLAS path
            np.matmul(wm[0], cols[i, 0], out=y[i])
    else:
        y = np.matmul(wm[None], cols)  # N, group, Mg, P
    y = y.reshape(N, M, *out)
    if b is not None:
        y += b.astype(wt, copy=False).reshape((1, M) + (1,) * n)
    return y.astype(out_dtype, copy=False)


def channels_last(fn):
    """Run an NCHW kernel for an op whose ``layout`` attribute is "NHWC": channels moved
    to axis 1 on the way in and back to the last axis on the way out."""
    def wrapped(ctx, x, *rest):
        if (ctx.attr("layout") or "NCHW") != "NHWC":
            return fn(ctx, x, *rest)
        if x.ndim < 2:
            raise ExecutionError(f"{ctx.op.name}: layout NHWC needs rank >= 2, got {x.shape}")
        out = fn(ctx, np.ascontiguousarray(np.moveaxis(x, -1, 1)), *rest)
        back = lambda y: np.ascontiguousarray(np.moveaxis(y, 1, -1))  # noqa: E731
        return tuple(back(y) for y in out) if isinstance(out, tuple) else back(out)
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@kernel("conv")
@channels_last
def conv(ctx, x, w, b=None):
    kernel_shape = ctx.attr("kernel_shape") or w.shape[2:]
    if tuple(kernel_shape) != tuple(w.shape[2:]):
        raise ExecutionError(f"conv: kernel_shape {list(kernel_shape)} does not match weight "
                             f"{list(w.shape)}")
    strides, dil, pads = resolve_window(x.shape[2:], w.shape[2:], ctx.attr("strides"),
                                        ctx.attr("dilations"), ctx.attr("pads"),
                                        ctx.attr("auto_pad") or "NOTSET")
    return conv_nd(x, w, b, strides, dil, pads, ctx.attr("group") or 1)


@kernel("conv_transpose")
def conv_transpose(ctx, x, w, b=None):
    out_dtype = x.dtype
    wt = _work_dtype(x.dtype)
    x = x.astype(wt, copy=False)
    w = w.astype(wt, copy=False)
    n = x.ndim - 2
    kernel = tuple(w.shape[2:])
    g = ctx.attr("group") or 1
    strides, dil, begin, out = conv_transpose_geometry(
        x.shape[2:], kernel, ctx.attr("strides"), ctx.attr("dilations"), ctx.attr("pads"),
        ctx.attr("auto_pad") or "NOTSET", ctx.attr("output_padding"), ctx.attr("output_shape"))
    N, C = x.shape[:2]
    in_sp = x.shape[2:]
    Cg, Mg = C // g, w.shape[1]
    M = Mg * g
    K = int(np.prod(kernel))
    Pin = int(np.prod(in_sp))
    xm = x.reshape(N, g, Cg, Pin)
    wm = w.reshape(g, Cg, Mg * K).transpose(0, 2, 1)  # g, Mg*K, Cg
    cols = np.matmul(wm[None], xm).reshape((N, M) + kernel + tuple(in_sp))
    # Scatter every tap into a buffer that covers the requested output window.
    full = [(i - 1) * s + window_span(k, d) for i, k, s, d in zip(in_sp, kernel, strides, dil)]
    lo = [min(0, bg) for bg in begin]
    size = [max(f, bg + o) - l for f, bg, o, l in zip(full, begin, out, lo)]
    buf = np.zeros((N, M, *size), dtype=wt)
    for tap in itertools.product(*[range(k) for k in kernel]):
        sl = tuple(slice(t * d - l, t * d - l + (i - 1) * s + 1, s)
                   for t, d, l, i, s in zip(tap, dil, lo, in_sp, strides))
        buf[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + tap]
    y = buf[(slice(None), slice(None)) + tuple(slice(bg - l, bg - l + o)
                                               for bg, l, o in zip(begin, lo, out))]
    if b is not None:
        y = y + b.astype(wt, copy=False).reshape((1, M) + (1,) * n)
    return y.astype(out_dtype, copy=False)


def _bilinear_gather(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of img[N, C, H, W] at (ys, xs) of shape [N, *S]: [N, C, *S].

    Out-of-range corners read zero; positions beyond one pixel outside read zero.
    """
    N, C, H, W = img.shape
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    out = np.zeros((N, C) + ys.shape[1:], dtype=img.dtype)
    nidx = np.arange(N).reshape((N,) + (1,) * (ys.ndim - 1))
    for dy in (0, 1):
        for dx in (0, 1):
            yi = y0 + dy
            xi = x0 + dx
            wgt = (1 - np.abs(ys - yi)) * (1 - np.abs(xs - xi))
            ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
            yc = np.clip(yi, 0, H - 1).astype(np.intp)
            xc = np.clip(xi, 0, W - 1).astype(np.intp)
            vals = img[nidx, :, yc, xc]  # N, *S, C
            vals = np.moveaxis(vals, -1, 1)
            out += vals * np.expand_dims(np.where(ok, wgt, 0).astype(img.dtype), 1)
    return out


@kernel("deform_conv")
def deform_conv(ctx, x, w, offset, b=None, mask=None):
    out_dtype = x.dtype
    wt = _work_dtype(x.dtype)
    x, w, offset = (a.astype(wt, copy=False) for a in (x, w, offset))
    if x.ndim != 4:
        raise UnsupportedOpError(f"deform_conv: only 2-d inputs are supported, got rank {x.ndim}")
    N, C, H, W = x.shape
    M = w.shape[0]
    kh, kw = w.shape[2:]
    strides, dil, pads = resolve_window(x.shape[2:], (kh, kw), ctx.attr("strides"),
                                        ctx.attr("dilations"), ctx.attr("pads"))
    g = ctx.attr("group") or 1
    og = ctx.attr("offset_group") or 1
    oh, ow = offset.shape[2:]
    K = kh * kw
    off = offset.reshape(N, og, K, 2, oh, ow)
    msk = None if mask is None else mask.astype(wt, copy=False).reshape(N, og, K, oh, ow)
    base_y = (np.arange(oh) * strides[0] - pads[0]).reshape(oh, 1)
    base_x = (np.arange(ow) * strides[1] - pads[1]).reshape(1, ow)
    Cog = C // og
    cols = np.empty((N, C, K, oh, ow), dtype=wt)
    for k in range(K):
        ty, tx = divmod(k, kw)
        for gi in range(og):
            ys = base_y + ty * dil[0] + off[:, gi, k, 0]
            xs = base_x + tx * dil[1] + off[:, gi, k, 1]
            s = _bilinear_gather(x[:, gi * Cog:(gi + 1) * Cog], ys, xs)
            if msk is not None:
                s = s * msk[:, gi, k][:, None]
            cols[:, gi * Cog:(gi + 1) * Cog, k] = s
    Cg, Mg = C // g, M // g
    cols = cols.reshape(N, g, Cg * K, oh * ow)
    y = np.matmul(w.reshape(g, Mg, Cg * K)[None], cols).reshape(N, M, oh, ow)
    if b is not None:
        y = y + b.astype(wt).reshape(1, M, 1, 1)
    return y.astype(out_dtype, copy=False)


@kernel("causal_conv_with_state")
def causal_conv_with_state(ctx, x, w, b=None, past=None):
    N, C, L = x.shape
    k = w.shape[2]
    if past is None:
        past = np.zeros((N, C, k - 1), dtype=x.dtype)
    padded = np.concatenate([past.astype(x.dtype, copy=False), x], axis=2)
    wt = _work_dtype(x.dtype)
    pw = padded.astype(wt, copy=False)
    ww = w.astype(wt, copy=False).reshape(C, k)
    y = np.zeros((N, C, L), dtype=wt)
    for t in range(k):
        y += pw[:, :, t:t + L] * ww[:, t][None, :, None]
    if b is not None:
        y += b.astype(wt, copy=False)[None, :, None]
    y = y.astype(x.dtype)
    if ctx.attr("activation") in ("silu", "swish"):
        yf = y.astype(np.float32)
        y = (yf / (1 + np.exp(-yf))).astype(x.dtype)
    state = padded[:, :, padded.shape[2] - (k - 1):]
    return y, state


# -- pooling ----------------------------------------------------------------------------------
def _pool_geometry(ctx, x):
    n = x.ndim - 2
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, dil, pads = resolve_window(x.shape[2:], kernel, ctx.attr("strides"),
                                        ctx.attr("dilations"), ctx.attr("pads"),
                                        ctx.attr("auto_pad") or "NOTSET")
    ceil = bool(ctx.attr("ceil_mode"))
    out = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[n + i], ceil)
           for i in range(n)]
    return kernel, strides, dil, pads, out


def _tap_slices(kernel, strides, dil, out):
    """For each kernel tap, the slice of the padded input it reads for every output."""
    for tap in itertools.product(*[range(k) for k in kernel]):
        yield tap, tuple(slice(t * d, t * d + (o - 1) * s + 1, s) if o > 0 else slice(0, 0)
                         for t, d, o, s in zip(tap, dil, out, strides))


def _padded_for_pool(x, kernel, strides, dil, pads, out, value):
    """x padded so every tap of every output window is in range; plus the begin offsets."""
    n = len(kernel)
    begin = list(pads[:n])
    end = []
    for i in range(n):
        need = (out[i] - 1) * strides[i] + window_span(kernel[i], dil[i]) if out[i] > 0 else 0
        end.append(max(need - x.shape[2 + i] - begin[i], 0))
    # Negative begin pads crop; keep them as an offset instead.
    lo = [min(b, 0) for b in begin]
    xp = _pad(x, [max(b, 0) for b in begin], end, value)
    return xp, [max(b, 0) for b in begin], lo


def _valid_counts(size, k, s, d, pb, pe, out, include_pad: bool) -> np.ndarray:
    """How many taps of each output window land inside the input (or inside input+pads)."""
    o = np.arange(out).reshape(-1, 1)
    pos = o * s - pb + np.arange(k).reshape(1, -1) * d
    lo, hi = (-pb, size + pe) if include_pad else (0, size)
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


@kernel("average_pool")
@channels_last
def average_pool(ctx, x):
    kernel, strides, dil, pads, out = _pool_geometry(ctx, x)
    n = len(kernel)
    wt = _work_dtype(x.dtype)
    xw = x.astype(wt, copy=False)
    xp, pb, lo = _padded_for_pool(xw, kernel, strides, dil, pads, out, 0)
    acc = np.zeros(x.shape[:2] + tuple(out), dtype=wt)
    for _, sl in _tap_slices(kernel, strides, dil, out):
        acc += xp[(slice(None), slice(None)) + sl]
    include = bool(ctx.attr("count_include_pad"))
    div = np.ones((), dtype=wt)
    for i in range(n):
        c = _valid_counts(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[n + i],
                          out[i], include)
        div = np.multiply.outer(div, c.astype(wt)) if div.ndim else c.astype(wt)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = acc / div
    return y.astype(x.dtype, copy=False)


@kernel("lp_pool")
def lp_pool(ctx, x):
    kernel, strides, dil, pads, out = _pool_geometry(ctx, x)
    p = ctx.attr("p")
    wt = _work_dtype(x.dtype)
    xw = np.abs(x.astype(wt, copy=False))
    xp, pb, _ = _padded_for_pool(xw, kernel, strides, dil, pads, out, 0)
    acc = np.zeros(x.shape[:2] + tuple(out), dtype=wt)
    for _, sl in _tap_slices(kernel, strides, dil, out):
        acc += xp[(slice(None), slice(None)) + sl] ** p
    return (acc ** (1.0 / p)).astype(x.dtype, copy=False)


def _lowest(dt: np.dtype):
    dt = np.dtype(dt)
    if dt.kind == "f":
        return -np.inf
    if dt.kind in "iu":
        return np.iinfo(dt).min
    if dt.kind == "b":
        return False
    return np.finfo(np.float32).min


@kernel("max_pool")
@channels_last
def max_pool(ctx, x):
    kernel, strides, dil, pads, out = _pool_geometry(ctx, x)
    n = len(kernel)
    want_idx = ctx.num_results > 1
    xw = x if x.dtype.kind in "iub" or x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    xp, pb, _ = _padded_for_pool(xw, kernel, strides, dil, pads, out, _lowest(xw.dtype))
    best = None
    arg = None
    for t, (tap, sl) in enumerate(_tap_slices(kernel, strides, dil, out)):
        v = xp[(slice(None), slice(None)) + sl]
        if best is None:
            best = v.copy()
            if want_idx:
                arg = np.zeros(best.shape, dtype=np.int64)
            continue
        if want_idx:
            better = v > best
            arg[better] = t
            np.maximum(best, v, out=best, where=better)
        else:
            np.maximum(best, v, out=best)
    y = best.astype(x.dtype, copy=False)
    if not want_idx:
        return (y,)
    # Flat index of each maximum in the input tensor (row- or column-major spatially).
    taps = np.unravel_index(arg, kernel)
    in_sp = x.shape[2:]
    spatial = []
    for i in range(n):
        o = np.arange(out[i]).reshape((-1,) + (1,) * (n - 1 - i))
        pos = o * strides[i] - pads[i] + taps[i] * dil[i]
        spatial.append(np.clip(pos, 0, in_sp[i] - 1))
    if ctx.attr("storage_order") == 1:
        flat = np.zeros_like(arg)
        mul = 1
        for i in range(n):
            flat = flat + spatial[i] * mul
            mul *= in_sp[i]
    else:
        flat = np.ravel_multi_index(tuple(np.broadcast_arrays(*spatial)), in_sp) if n else arg
    plane = int(np.prod(in_sp))
    nc = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *(1,) * n)
    return y, (flat + nc * plane).astype(np.int64)


@kernel("global_average_pool")
@channels_last
def global_average_pool(ctx, x):
    axes = tuple(range(2, x.ndim))
    wt = _work_dtype(x.dtype)
    return np.mean(x, axis=axes, keepdims=True, dtype=wt).astype(x.dtype, copy=False)


@kernel("global_max_pool")
@channels_last
def global_max_pool(ctx, x):
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@kernel("global_lp_pool")
def global_lp_pool(ctx, x):
    p = ctx.attr("p")
    wt = _work_dtype(x.dtype)
    s = np.sum(np.abs(x.astype(wt, copy=False)) ** p, axis=tuple(range(2, x.ndim)), keepdims=True)
    return (s ** (1.0 / p)).astype(x.dtype, copy=False)


@kernel("max_unpool")
def max_unpool(ctx, x, indices, output_shape=None):
    n = x.ndim - 2
    ks = ctx.attr("kernel_shape")
    strides = ctx.attr("strides") or (1,) * n
    pads = ctx.attr("pads") or (0,) * (2 * n)
    inferred = tuple(x.shape[:2]) + tuple((x.shape[2 + i] - 1) * strides[i] + ks[i] - pads[i] - pads[n + i]
                                          for i in range(n))
    y = np.zeros(int(np.prod(inferred)), dtype=x.dtype)
    y[indices.reshape(-1).astype(np.intp)] = x.reshape(-1)
    y = y.reshape(inferred)
    if output_shape is None:
        return y
    # Indices address the inferred shape; a given output_shape only pads it at the end.
    shape = tuple(int(v) for v in np.asarray(output_shape).reshape(-1))
    res = np.zeros(shape, dtype=x.dtype)
    common = tuple(slice(0, min(a, b)) for a, b in zip(inferred, shape))
    res[common] = y[common]
    return res


# -- resize -----------------------------------------------------------------------------------
def _keys_cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _source_coords(coord: str, out_len: int, in_len: int, scale: float, roi_pair):
    """Source coordinate of every output index along one axis (ONNX Resize formulas)."""
    y = np.arange(out_len, dtype=np.float64)
    out_w = scale * in_len
    extrap = None
    if coord == "align_corners":
        x = np.zeros(out_len) if out_w == 1 else y * (in_len - 1) / (out_w - 1)
    elif coord == "asymmetric":
        x = y / scale
    elif coord == "tf_crop_and_resize":
        r0, r1 = roi_pair
        if out_w == 1:
            x = np.full(out_len, (r1 - r0) * (in_len - 1) / 2)
        else:
            x = y * (r1 - r0) * (in_len - 1) / (out_w - 1)
        x = x + r0 * (in_len - 1)
        extrap = (x < 0) | (x > in_len - 1)
    elif coord == "pytorch_half_pixel":
        x = np.full(out_len, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif coord == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif coord == "half_pixel_symmetric":
        adjustment = out_len / out_w
        offset = in_len / 2 * (1 - adjustment)
        x = offset + (y + 0.5) / scale - 0.5
    elif coord == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    else:
        raise ExecutionError(f"resize: unknown coordinate_transformation_mode {coord!r}")
    return x, extrap


def resize_taps(node, in_len: int, out_len: int, scale: float, roi_pair):
    """One resized axis as a gather: (source indices [out_len, K], clamped to the axis;
    their weights [out_len, K], None for nearest; the extrapolation mask [out_len] of
    tf_crop_and_resize, or None).  ``node`` is anything with ``.attr(name)``: the kernel
    context here, the op in the cpu backend, which builds its gather tables from these
    same numbers."""
    mode = node.attr("mode")
    x, extrap = _source_coords(node.attr("coordinate_transformation_mode"), out_len, in_len,
                               scale, roi_pair)
    if mode == "nearest":
        nm = node.attr("nearest_mode")
        if nm == "round_prefer_floor":
            idx = np.ceil(x - 0.5)
        elif nm == "round_prefer_ceil":
            idx = np.floor(x + 0.5)
        elif nm == "floor":
            idx = np.floor(x)
        else:
            idx = np.ceil(x)
        return np.clip(idx, 0, in_len - 1).astype(np.intp).reshape(-1, 1), None, extrap
    s = min(scale, 1.0) if node.attr("antialias") else 1.0
    support = 1.0 if mode == "linear" else 2.0
    start = int(math.floor(-support / s)) + 1
    taps = np.arange(start, 1 - start + 1 + 1)
    base = np.floor(x).reshape(-1, 1)
    idx = base + taps.reshape(1, -1)
    t = (idx - x.reshape(-1, 1)) * s
    if mode == "linear":
        wgt = np.clip(1 - np.abs(t), 0, 1)
    else:
        wgt = _keys_cubic(t, node.attr("cubic_coeff_a"))
    if node.attr("exclude_outside"):
        wgt = np.where((idx < 0) | (idx >= in_len), 0.0, wgt)
    tot = wgt.sum(axis=1, keepdims=True)
    wgt = wgt / np.where(tot == 0, 1.0, tot)
    return np.clip(idx, 0, in_len - 1).astype(np.intp), wgt, extrap


def _resize_axis(data, axis, out_len, scale, ctx, roi_pair):
    in_len = data.shape[axis]
    idx, wgt, extrap = resize_taps(ctx, in_len, out_len, scale, roi_pair)
    if wgt is None:
        res = np.take(data, idx[:, 0], axis=axis)
    else:
        mat = np.zeros((out_len, in_len))
        rows = np.broadcast_to(np.arange(out_len).reshape(-1, 1), idx.shape)
        np.add.at(mat, (rows, idx), wgt)
        wt = np.float64 if data.dtype == np.float64 or data.size < (1 << 20) else np.float32
        moved = np.moveaxis(data.astype(wt, copy=False), axis, -1)
        res = np.moveaxis(moved @ mat.T.astype(wt), -1, axis)
    if extrap is not None and extrap.any():
        shape = [1] * data.ndim
        shape[axis] = out_len
        res = np.where(extrap.reshape(shape), ctx.attr("extrapolation_value"), res)
    return res


def _cast_like(y: np.ndarray, dt: np.dtype) -> np.ndarray:
    dt = np.dtype(dt)
    if y.dtype == dt:
        return y
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(y), info.min, info.max).astype(dt)
    return y.astype(dt)


@kernel("resize")
def resize(ctx, x, roi=None, scales=None, sizes=None):
    r = x.ndim
    axes = ctx.attr("axes")
    axes = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    if sizes is not None and np.asarray(sizes).size:
        out, scale = resize_output_shape(x.shape, None, [int(v) for v in sizes.reshape(-1)], axes,
                                         ctx.attr("keep_aspect_ratio_policy") or "stretch")
    elif scales is not None and np.asarray(scales).size:
        out, scale = resize_output_shape(x.shape, [float(v) for v in scales.reshape(-1)], None, axes)
    else:
        raise ExecutionError("resize: needs non-empty scales or sizes")
    full_roi = None
    if ctx.attr("coordinate_transformation_mode") == "tf_crop_and_resize":
        if roi is None or np.asarray(roi).size == 0:
            raise ExecutionError("resize: tf_crop_and_resize needs roi")
        roi = np.asarray(roi, dtype=np.float64).reshape(-1)
        full_roi = [0.0] * r + [1.0] * r
        na = len(axes)
        for i, a in enumerate(axes):
            full_roi[a] = roi[i]
            full_roi[r + a] = roi[na + i]
    y = x
    for a in axes:
        pair = None if full_roi is None else (full_roi[a], full_roi[r + a])
        if out[a] == y.shape[a] and math.isclose(scale[a], 1.0) and \
                (pair is None or (math.isclose(pair[0], 0.0) and math.isclose(pair[1], 1.0))):
            continue
        y = _resize_axis(y, a, out[a], scale[a], ctx, pair)
    return _cast_like(np.asarray(y), x.dtype)


# -- sampling ---------------------------------------------------------------------------------
def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    rng = hi - lo
    if rng <= 0:
        return np.full_like(x, lo)
    below = x < lo
    above = x > hi
    d = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    k = np.floor(d / rng)
    rem = d - k * rng
    even = (k % 2) == 0
    from_lo = np.where(even, lo + rem, hi - rem)
    from_hi = np.where(even, hi - rem, lo + rem)
    return np.where(below, from_lo, np.where(above, from_hi, x))


@kernel("grid_sample")
def grid_sample(ctx, x, grid):
    mode = ctx.attr("mode")
    pad_mode = ctx.attr("padding_mode")
    align = bool(ctx.attr("align_corners"))
    n = x.ndim - 2
    N, C = x.shape[:2]
    dims = x.shape[2:]
    wt = _work_dtype(x.dtype)
    xs = x.astype(wt, copy=False)
    g = grid.astype(np.float64)
    coords = []
    for i in range(n):  # grid's last axis lists (x, y, z): the reverse of the spatial dims
        v = g[..., n - 1 - i]
        size = dims[i]
        c = (v + 1) / 2 * (size - 1) if align else ((v + 1) * size - 1) / 2
        coords.append(c.astype(np.float32).astype(np.float64))
    borders = [(0.0, s - 1.0) if align else (-0.5, s - 0.5) for s in dims]
    if mode == "nearest":
        coords = [np.rint(c) for c in coords]
    for i in range(n):
        lo, hi = borders[i]
        if pad_mode == "border":
            coords[i] = np.clip(coords[i], 0, dims[i] - 1)
        elif pad_mode == "reflection":
            coords[i] = _reflect(coords[i], lo, hi)
    if mode == "nearest":
        tap_sets = [[(np.trunc(c) if pad_mode == "reflection" else c, np.ones_like(c))] for c in coords]
    else:
        tap_sets = []
        for c in coords:
            f = np.floor(c)
            r = c - f
            if mode == "linear":
                tap_sets.append([(f, 1 - r), (f + 1, r)])
            else:
                tap_sets.append([(f + k, _keys_cubic(r - k, -0.75)) for k in (-1, 0, 1, 2)])
    nidx = np.arange(N).reshape((N,) + (1,) * (g.ndim - 2))
    out = np.zeros((N,) + g.shape[1:-1] + (C,), dtype=np.float64)
    for combo in itertools.product(*tap_sets):
        weight = np.ones(g.shape[:-1])
        idx = []
        ok = np.ones(g.shape[:-1], dtype=bool)
        for i, (pos, w) in enumerate(combo):
            weight = weight * w
            if pad_mode == "zeros":
                ok &= (pos >= 0) & (pos < dims[i])
                p = pos
            elif pad_mode == "border":
                p = np.clip(pos, 0, dims[i] - 1)
            else:
                p = np.trunc(_reflect(pos, *borders[i]))
            idx.append(np.clip(p, 0, dims[i] - 1).astype(np.intp))
        vals = np.moveaxis(xs, 1, -1)[(nidx, *idx)]  # N, *out, C
        out += vals * np.where(ok, weight, 0.0)[..., None]
    return np.moveaxis(out, -1, 1).astype(x.dtype)


@kernel("affine_grid")
def affine_grid(ctx, theta, size):
    size = [int(v) for v in np.asarray(size).reshape(-1)]
    align = bool(ctx.attr("align_corners"))
    N = size[0]
    sp = size[2:]
    n = len(sp)
    lins = []
    for s in sp:
        if align:
            v = np.linspace(-1.0, 1.0, s) if s > 1 else np.zeros(1)
        else:
            v = (np.arange(s, dtype=np.float64) * 2 + 1) / s - 1
        lins.append(v)
    mesh = np.meshgrid(*lins, indexing="ij")  # spatial order (D, H, W)
    # Homogeneous coordinates in (x, y, z, 1) order: x runs along the last spatial dim.
    base = np.stack([m for m in mesh[::-1]] + [np.ones_like(mesh[0])], axis=-1)
    th = theta.astype(np.float64).reshape(N, n, n + 1)
    grid = np.einsum("...k,njk->n...j", base, th)
    return grid.astype(theta.dtype)


@kernel("roi_align")
def roi_align(ctx, x, rois, batch_indices):
    oh, ow = ctx.attr("output_height"), ctx.attr("output_width")
    ratio = ctx.attr("sampling_ratio")
    scale = ctx.attr("spatial_scale")
    half = ctx.attr("coordinate_transformation_mode") == "half_pixel"
    is_max = ctx.attr("mode") == "max"
    N, C, H, W = x.shape
    R = rois.shape[0]
    wt = _work_dtype(x.dtype)
    xf = x.astype(wt, copy=False)
    out = np.zeros((R, C, oh, ow), dtype=wt)
    off = 0.5 if half else 0.0
    for r in range(R):
        x0, y0, x1, y1 = (float(v) * scale - off for v in rois[r, :4])
        rw, rh = x1 - x0, y1 - y0
        if not half:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = ratio if ratio > 0 else int(math.ceil(rh / oh))
        gw = ratio if ratio > 0 else int(math.ceil(rw / ow))
        count = max(gh * gw, 1)
        ys = y0 + np.arange(oh).reshape(-1, 1) * bh + (np.arange(gh).reshape(1, -1) + 0.5) * bh / gh
        xs = x0 + np.arange(ow).reshape(-1, 1) * bw + (np.arange(gw).reshape(1, -1) + 0.5) * bw / gw
        ys = ys.reshape(-1)  # oh*gh
        xs = xs.reshape(-1)  # ow*gw

        def axis_weights(c, size):
            valid = (c >= -1.0) & (c <= size)
            c = np.maximum(c, 0)
            low = np.floor(c).astype(np.intp)
            top = low >= size - 1
            low = np.where(top, size - 1, low)
            high = np.where(top, size - 1, low + 1)
            c = np.where(top, low, c)
            lc = c - low
            return valid, low, high, 1 - lc, lc

        vy, yl, yh, hy, ly = axis_weights(ys, H)
        vx, xl, xh, hx, lx = axis_weights(xs, W)
        img = xf[int(batch_indices[r])]  # C, H, W
        corners = []
        for yi, wy in ((yl, hy), (yh, ly)):
            for xi, wx in ((xl, hx), (xh, lx)):
                wgt = wy[:, None] * wx[None, :] * (vy[:, None] & vx[None, :])
                corners.append(img[:, yi[:, None], xi[None, :]] * wgt.astype(wt))  # C, oh*gh, ow*gw
        if is_max:
            v = np.maximum.reduce(corners)
            v = v.reshape(C, oh, gh, ow, gw).max(axis=(2, 4))
        else:
            v = sum(corners).reshape(C, oh, gh, ow, gw).sum(axis=(2, 4)) / count
        out[r] = v
    return out.astype(x.dtype, copy=False)


@kernel("non_max_suppression")
def non_max_suppression(ctx, boxes, scores, max_out=None, iou_thr=None, score_thr=None):
    max_out = 0 if max_out is None or np.asarray(max_out).size == 0 else int(np.asarray(max_out).reshape(-1)[0])
    iou_thr = 0.0 if iou_thr is None or np.asarray(iou_thr).size == 0 else float(np.asarray(iou_thr).reshape(-1)[0])
    score_thr = None if score_thr is None or np.asarray(score_thr).size == 0 else float(np.asarray(score_thr).reshape(-1)[0])
    b = boxes.astype(np.float64)
    if ctx.attr("center_point_box"):
        xc, yc, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        y1, x1, y2, x2 = yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2
    else:
        y1 = np.minimum(b[..., 0], b[..., 2])
        y2 = np.maximum(b[..., 0], b[..., 2])
        x1 = np.minimum(b[..., 1], b[..., 3])
        x2 = np.maximum(b[..., 1], b[..., 3])
    area = (y2 - y1) * (x2 - x1)
    rows = []
    if max_out > 0:
        for bi in range(scores.shape[0]):
            for ci in range(scores.shape[1]):
                sc = scores[bi, ci].astype(np.float64)
                cand = np.arange(sc.shape[0])
                if score_thr is not None:
                    cand = cand[sc[cand] > score_thr]
                cand = cand[np.argsort(-sc[cand], kind="stable")]
                keep: list[int] = []
                for i in cand:
                    if len(keep) >= max_out:
                        break
                    if keep:
                        k = np.asarray(keep)
                        iy1 = np.maximum(y1[bi, i], y1[bi, k])
                        ix1 = np.maximum(x1[bi, i], x1[bi, k])
                        iy2 = np.minimum(y2[bi, i], y2[bi, k])
                        ix2 = np.minimum(x2[bi, i], x2[bi, k])
                        inter = np.clip(iy2 - iy1, 0, None) * np.clip(ix2 - ix1, 0, None)
                        union = area[bi, i] + area[bi, k] - inter
                        with np.errstate(divide="ignore", invalid="ignore"):
                            iou = np.where(union > 0, inter / union, 0.0)
                        if np.any(iou > iou_thr):
                            continue
                    keep.append(int(i))
                rows.extend([bi, ci, k] for k in keep)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


@kernel("image_decoder")
def image_decoder(ctx, encoded):
    try:
        import PIL.Image
    except ImportError:
        raise UnsupportedOpError("image_decoder needs the Pillow package on the numpy backend "
                                 "(pip install pillow)") from None
    fmt = ctx.attr("pixel_format")
    try:
        img = PIL.Image.open(io.BytesIO(np.asarray(encoded, dtype=np.uint8).tobytes()))
        if fmt == "Grayscale":
            return np.asarray(img.convert("L"), dtype=np.uint8)[:, :, None]
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise ExecutionError(f"image_decoder: cannot decode the image: {e}") from e
    return arr[:, :, ::-1].copy() if fmt == "BGR" else arr
