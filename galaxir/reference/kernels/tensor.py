"""Kernels for the tensor manipulation and shape ops (ONNX semantics, vectorized numpy)."""
from __future__ import annotations

import math

import numpy as np

from ...errors import ExecutionError
from ...ir.ops.tensor import range_length, slice_bounds
from ...ir.opdef import describe
from ..registry import kernel


def _err(ctx, msg: str) -> ExecutionError:
    return ExecutionError(f"{describe(ctx.op)}: {msg}")


def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _axis(ctx, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise _err(ctx, f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _norm_indices(ctx, idx: np.ndarray, dim: int) -> np.ndarray:
    idx = np.asarray(idx).astype(np.int64, copy=False)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise _err(ctx, f"index out of range [{-dim}, {dim - 1}]: "
                        f"min {int(idx.min())}, max {int(idx.max())}")
    return np.where(idx < 0, idx + dim, idx)


@kernel("reshape")
def reshape(ctx, x, shape):
    spec = _ints(shape)
    if not ctx.attr("allowzero"):
        spec = [x.shape[i] if d == 0 else d for i, d in enumerate(spec)]
    try:
        return x.reshape(spec)
    except ValueError as e:
        raise _err(ctx, f"cannot reshape {list(x.shape)} to {_ints(shape)}: {e}") from None


@kernel("transpose")
def transpose(ctx, x):
    perm = ctx.attr("perm")
    return np.transpose(x, None if perm is None else tuple(perm))


@kernel("concat")
def concat(ctx, *xs):
    axis = _axis(ctx, ctx.attr("axis"), xs[0].ndim)
    return np.concatenate(xs, axis=axis)


@kernel("split")
def split(ctx, x, sizes=None):
    axis = _axis(ctx, ctx.attr("axis"), x.ndim)
    n = ctx.num_results
    dim = x.shape[axis]
    if sizes is not None:
        sz = _ints(sizes)
    else:
        chunk = -(-dim // n)
        sz = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if len(sz) != n or sum(sz) != dim or min(sz, default=0) < 0:
        raise _err(ctx, f"split sizes {sz} do not fit dim {dim} into {n} outputs")
    return tuple(np.split(x, np.cumsum(sz)[:-1], axis=axis))


@kernel("squeeze")
def squeeze(ctx, x, axes=None):
    if axes is None:
        return np.squeeze(x)
    ax = tuple(_axis(ctx, a, x.ndim) for a in _ints(axes))
    return np.squeeze(x, axis=ax)


@kernel("unsqueeze")
def unsqueeze(ctx, x, axes):
    ax = _ints(axes)
    r = x.ndim + len(ax)
    return np.expand_dims(x, tuple(sorted(_axis(ctx, a, r) for a in ax)))


@kernel("flatten")
def flatten(ctx, x):
    axis = ctx.attr("axis")
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("expand")
def expand(ctx, x, shape):
    try:
        out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    except ValueError:
        raise _err(ctx, f"cannot expand {list(x.shape)} to {_ints(shape)}") from None
    return np.broadcast_to(x, out).copy()


@kernel("tile")
def tile(ctx, x, repeats):
    return np.tile(x, _ints(repeats))


@kernel("slice")
def slice_(ctx, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(ctx, a, x.ndim)
        if st == 0:
            raise _err(ctx, "slice step is 0")
        s, e, st = slice_bounds(s, e, st, x.shape[a])
        index[a] = slice(s, e if e >= 0 else None, st)
    return x[tuple(index)]


@kernel("gather")
def gather(ctx, x, idx):
    axis = _axis(ctx, ctx.attr("axis"), x.ndim)
    return np.take(x, _norm_indices(ctx, idx, x.shape[axis]), axis=axis)


@kernel("gather_elements")
def gather_elements(ctx, x, idx):
    axis = _axis(ctx, ctx.attr("axis"), x.ndim)
    return np.take_along_axis(x, _norm_indices(ctx, idx, x.shape[axis]), axis=axis)


@kernel("gather_nd")
def gather_nd(ctx, x, idx):
    b = ctx.attr("batch_dims")
    idx = np.asarray(idx).astype(np.int64)
    k = idx.shape[-1]
    batch = x.shape[:b]
    nb = math.prod(batch)
    xr = x.reshape((nb,) + x.shape[b:])
    ir = idx.reshape(nb, -1, k)
    dims = np.array(x.shape[b:b + k], dtype=np.int64)
    if ir.size and ((ir < -dims).any() or (ir >= dims).any()):
        raise _err(ctx, "an index is out of range")
    ir = np.where(ir < 0, ir + dims, ir)
    coords = tuple(ir[..., j] for j in range(k))
    out = xr[(np.arange(nb)[:, None],) + coords]
    return out.reshape(idx.shape[:-1] + x.shape[b + k:])


_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(ctx, out, coords, updates):
    red = ctx.attr("reduction")
    if red == "none":
        out[coords] = updates
    elif red in _REDUCE:
        _REDUCE[red].at(out, coords, updates)
    else:
        raise _err(ctx, f"unknown reduction {red!r}")
    return out


@kernel("scatter_elements")
def scatter_elements(ctx, x, idx, updates):
    axis = _axis(ctx, ctx.attr("axis"), x.ndim)
    idx = _norm_indices(ctx, idx, x.shape[axis])
    coords = list(np.indices(idx.shape, sparse=True))
    coords[axis] = idx
    return _scatter(ctx, x.copy(), tuple(coords), updates)


@kernel("scatter_nd")
def scatter_nd(ctx, x, idx, updates):
    idx = np.asarray(idx).astype(np.int64)
    k = idx.shape[-1]
    dims = np.array(x.shape[:k], dtype=np.int64)
    if idx.size and ((idx < -dims).any() or (idx >= dims).any()):
        raise _err(ctx, "an index is out of range")
    idx = np.where(idx < 0, idx + dims, idx)
    flat = idx.reshape(-1, k)
    coords = tuple(flat[:, j] for j in range(k))
    upd = np.asarray(updates).reshape((flat.shape[0],) + x.shape[k:])
    return _scatter(ctx, x.copy(), coords, upd)


@kernel("tensor_scatter")
def tensor_scatter(ctx, past, update, write_indices=None):
    axis = _axis(ctx, ctx.attr("axis"), past.ndim)
    if axis == 0:
        raise _err(ctx, "axis must not be the batch axis 0")
    max_len, seq = past.shape[axis], update.shape[axis]
    batch = past.shape[0]
    wi = np.zeros(batch, np.int64) if write_indices is None else np.asarray(write_indices).astype(np.int64)
    pos = wi.reshape(batch, 1) + np.arange(seq, dtype=np.int64).reshape(1, seq)
    if ctx.attr("mode") == "circular":
        pos = pos % max_len
    elif pos.size and (pos.max() >= max_len or pos.min() < 0):
        raise _err(ctx, f"write position {int(pos.max())} is past the cache length {max_len}")
    shape = [1] * past.ndim
    shape[0], shape[axis] = batch, seq
    pos = np.broadcast_to(pos.reshape(shape), update.shape)
    out = past.copy()
    np.put_along_axis(out, pos, update, axis=axis)
    return out


@kernel("shape")
def shape(ctx, x):
    r = x.ndim
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return np.array(x.shape[slice(start, r if end is None else end)], dtype=np.int64)


@kernel("size")
def size(ctx, x):
    return np.array(np.asarray(x).size, dtype=np.int64)


@kernel("constant_of_shape")
def constant_of_shape(ctx, shape):
    v = ctx.attr("value")
    v = np.zeros(1, np.float32) if v is None else np.asarray(v)
    return np.full(tuple(_ints(shape)), v.reshape(-1)[0], dtype=v.dtype)


@kernel("range")
def range_(ctx, start, limit, delta):
    s, l, d = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    if d == 0:
        raise _err(ctx, "delta is 0")
    dt = s.dtype
    if dt.kind in "iu":
        n = max(-(-(int(l) - int(s)) // int(d)), 0)
        return (int(s) + np.arange(n, dtype=np.int64) * int(d)).astype(dt)
    n = range_length(s, l, d)
    # ONNX accumulates start + i * delta in the input dtype
    return (s + np.arange(n).astype(dt) * d).astype(dt)


@kernel("pad")
def pad(ctx, x, pads, value=None, axes=None):
    r = x.ndim
    p = _ints(pads)
    axes = list(range(r)) if axes is None else [_axis(ctx, a, r) for a in _ints(axes)]
    if len(p) != 2 * len(axes):
        raise _err(ctx, f"pads {p} must have 2 entries per axis ({len(axes)} axes)")
    before, after = [0] * r, [0] * r
    for j, a in enumerate(axes):
        before[a], after[a] = p[j], p[j + len(axes)]
    # negative pads crop first
    crop = tuple(slice(max(-b, 0), x.shape[k] - max(-e, 0)) for k, (b, e) in enumerate(zip(before, after)))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(before, after)]
    mode = ctx.attr("mode")
    if mode == "constant":
        cv = np.zeros((), x.dtype) if value is None or np.asarray(value).size == 0 else \
            np.asarray(value).reshape(-1)[0]
        return np.pad(x, widths, mode="constant", constant_values=cv)
    if mode in ("reflect", "edge", "wrap"):
        return np.pad(x, widths, mode=mode)
    raise _err(ctx, f"unknown pad mode {mode!r}")


@kernel("compress")
def compress(ctx, x, cond):
    axis = ctx.attr("axis")
    c = np.asarray(cond).reshape(-1).astype(bool)
    if axis is None:
        return np.compress(c, x.reshape(-1))
    return np.compress(c, x, axis=_axis(ctx, axis, x.ndim))


@kernel("non_zero")
def non_zero(ctx, x):
    return np.array(np.nonzero(np.atleast_1d(x)), dtype=np.int64).reshape(max(x.ndim, 1), -1)


@kernel("one_hot")
def one_hot(ctx, idx, depth, values):
    d = int(np.asarray(depth).reshape(-1)[0])
    idx = np.asarray(idx).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    off, on = np.asarray(values).reshape(-1)[:2]
    hot = idx[..., None] == np.arange(d, dtype=np.int64)
    out = np.where(hot, on, off).astype(values.dtype)
    axis = _axis(ctx, ctx.attr("axis"), idx.ndim + 1)
    return np.moveaxis(out, -1, axis)


@kernel("eye_like")
def eye_like(ctx, x):
    return np.eye(x.shape[0], x.shape[1], k=ctx.attr("k"), dtype=ctx.result_dtype())


@kernel("trilu")
def trilu(ctx, x, k=None):
    k = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    return np.triu(x, k) if ctx.attr("upper") else np.tril(x, k)


@kernel("depth_to_space")
def depth_to_space(ctx, x):
    b = ctx.attr("blocksize")
    n, c, h, w = x.shape
    if ctx.attr("mode") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@kernel("space_to_depth")
def space_to_depth(ctx, x):
    b = ctx.attr("blocksize")
    n, c, h, w = x.shape
    perm = (0, 3, 5, 1, 2, 4) if ctx.attr("mode") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(perm)
    return y.reshape(n, c * b * b, h // b, w // b)


@kernel("center_crop_pad")
def center_crop_pad(ctx, x, shape):
    axes = ctx.attr("axes")
    axes = list(range(x.ndim)) if axes is None else [_axis(ctx, a, x.ndim) for a in axes]
    target = _ints(shape)
    crop = [slice(None)] * x.ndim
    widths = [(0, 0)] * x.ndim
    for a, t in zip(axes, target):
        d = x.shape[a]
        if d > t:
            s = (d - t) // 2
            crop[a] = slice(s, s + t)
        elif d < t:
            widths[a] = ((t - d) // 2, t - d - (t - d) // 2)
    return np.pad(x[tuple(crop)], widths)


@kernel("reverse_sequence")
def reverse_sequence(ctx, x, lens):
    ba, ta = ctx.attr("batch_axis"), ctx.attr("time_axis")
    lens = np.asarray(lens).astype(np.int64)
    t = np.arange(x.shape[ta], dtype=np.int64)
    src = np.where(t[None, :] < lens[:, None], lens[:, None] - 1 - t[None, :], t[None, :])  # [B, T]
    shape = [1] * x.ndim
    shape[ba], shape[ta] = x.shape[ba], x.shape[ta]
    src = src if ba < ta else src.T
    idx = np.broadcast_to(src.reshape(shape), x.shape)
    return np.take_along_axis(x, idx, axis=ta)


@kernel("unique")
def unique(ctx, x):
    axis = ctx.attr("axis")
    if axis is not None:
        axis = _axis(ctx, axis, x.ndim)
    src = x if axis is not None else x.reshape(-1)
    work = src
    if src.dtype.kind not in "biufcO" and src.dtype.kind != "U":
        work = src.astype(np.float32)  # ml_dtypes (bfloat16 ...): exact in float32
    _, first, inverse, counts = np.unique(work, return_index=True, return_inverse=True,
                                          return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not ctx.attr("sorted"):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    y = np.take(src, first, axis=0 if axis is None else axis)  # values in the input dtype
    i64 = np.int64
    return y, first.astype(i64), inverse.astype(i64), counts.astype(i64)


@kernel("top_k")
def top_k(ctx, x, k):
    kk = int(np.asarray(k).reshape(-1)[0])
    axis = _axis(ctx, ctx.attr("axis"), x.ndim)
    n = x.shape[axis]
    if not 0 <= kk <= n:
        raise _err(ctx, f"k={kk} is out of range for dim {n}")
    work = x if x.dtype.kind in "biuf" else x.astype(np.float32)  # ml_dtypes sort as float32
    if ctx.attr("largest"):
        # stable descending with ties by lower index: sort the reversed axis ascending
        flipped = np.flip(work, axis)
        order = np.flip(np.argsort(flipped, axis=axis, kind="stable"), axis)
        order = (n - 1) - order
    else:
        order = np.argsort(work, axis=axis, kind="stable")
    idx = np.take(order, np.arange(kk), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def _scan(ctx, x, axis, ufunc, identity):
    a = _axis(ctx, int(np.asarray(axis).reshape(-1)[0]), x.ndim)
    y = np.flip(x, a) if ctx.attr("reverse") else x
    out = ufunc.accumulate(y, axis=a, dtype=x.dtype)
    if ctx.attr("exclusive"):
        pad = np.full_like(np.take(out, [0], axis=a), identity)
        out = np.concatenate([pad, np.take(out, np.arange(out.shape[a] - 1), axis=a)], axis=a)
    return np.flip(out, a) if ctx.attr("reverse") else out


@kernel("cumsum")
def cumsum(ctx, x, axis):
    return _scan(ctx, x, axis, np.add, 0)


@kernel("cumprod")
def cumprod(ctx, x, axis):
    return _scan(ctx, x, axis, np.multiply, 1)


@kernel("col2im")
def col2im(ctx, x, image_shape, block_shape):
    image, block = _ints(image_shape), _ints(block_shape)
    nd = len(image)
    dil = list(ctx.attr("dilations") or [1] * nd)
    strides = list(ctx.attr("strides") or [1] * nd)
    pads = list(ctx.attr("pads") or [0] * (2 * nd))
    n, ck, length = x.shape
    kprod = math.prod(block)
    if ck % kprod:
        raise _err(ctx, f"input dim 1 ({ck}) is not a multiple of prod(block_shape) = {kprod}")
    c = ck // kprod
    padded = [image[i] + pads[i] + pads[i + nd] for i in range(nd)]
    nblocks = [(padded[i] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    if math.prod(nblocks) != length:
        raise _err(ctx, f"input has {length} blocks, the image/block/strides give {math.prod(nblocks)}")
    # flat position in the padded image of every (block offset, block location)
    koff = np.indices(block).reshape(nd, -1)  # [nd, K]
    loc = np.indices(nblocks).reshape(nd, -1)  # [nd, L]
    pos = np.zeros((kprod, length), dtype=np.int64)
    for i in range(nd):
        coord = koff[i][:, None] * dil[i] + loc[i][None, :] * strides[i]
        pos = pos * padded[i] + coord
    acc_dtype = x.dtype
    out = np.zeros((n, c, math.prod(padded)), dtype=acc_dtype)
    cols = x.reshape(n, c, kprod, length)
    for kk in range(kprod):  # within one block offset the positions are distinct
        out[:, :, pos[kk]] += cols[:, :, kk, :]
    out = out.reshape((n, c, *padded))
    crop = tuple(slice(pads[i], pads[i] + image[i]) for i in range(nd))
    return out[(slice(None), slice(None)) + crop]
