"""Lowering rules for resize ops (kernels in kernels_resize.py).

Imported at the end of lower.py: the ``rule`` decorator registers into lower.RULES.
Anything a rule cannot handle returns a reason and the op runs on the numpy reference.

``resize`` (ONNX Resize; Upsample imports as it) with constant scales or sizes (and roi
for tf_crop_and_resize) becomes ``kernels_resize.Resize``: for every resized axis, the
source indices and weights of each output coordinate are computed here, at lowering time,
with the numpy reference's own code path (``_source_coords``, the same weight formulas,
normalization and index clamping as ``_resize_axis`` in
galaxir/reference/kernels/nn.py), so the kernel only gathers and blends.  Every
mode, coordinate transformation, nearest mode, exclude_outside, antialias,
extrapolation_value, axes and keep_aspect_ratio_policy is covered that way; nearest is a
pure gather for any element type, linear and cubic blend float32 in double.
"""
from __future__ import annotations

import math

import numpy as np

from ...ir.ops.nn import resize_output_shape
from ...ir.types import DType
from . import kernels as K
from .codegen import INT_OF_SIZE
from .kernels_resize import Resize, ResizeDim
from .lower import ConstArray, const_of, rule, static_shape

#: most taps one output element may blend (the product over the resized axes); more (a
#: strong antialiased downscale) runs on the reference
MAX_TAPS = 64


class _Unsupported(Exception):
    """A case the native kernel does not take (the message is the fallback reason)."""


def _axis_table(op, in_len: int, out_len: int, scale: float, roi_pair):
    """(indices [out_len, K] clamped to the axis, weights [out_len, K] or None for a pure
    gather, extrapolation mask [out_len] or None) of one resized axis: the reference's
    own ``resize_taps``, with the taps that clamp onto the same index merged."""
    from ...reference.kernels.nn import resize_taps
    mode, nm = op.attr("mode"), op.attr("nearest_mode")
    if mode not in ("nearest", "linear", "cubic"):
        raise _Unsupported(f"mode {mode!r}")
    if mode == "nearest" and nm not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        raise _Unsupported(f"nearest_mode {nm!r}")
    if not scale > 0:
        raise _Unsupported("non-positive scale")
    ci, wgt, extrap = resize_taps(op, in_len, out_len, scale, roi_pair)
    if extrap is not None and not extrap.any():
        extrap = None
    if wgt is None:
        return ci.astype(np.int64), None, extrap
    if wgt.shape[1] > 4 * MAX_TAPS:
        raise _Unsupported(f"{wgt.shape[1]} taps per output coordinate")
    if not np.isfinite(wgt).all():
        raise _Unsupported("non-finite source coordinates")
    ci = ci.astype(np.int64)
    # The reference adds the weights of taps clamped onto the same index into one matrix
    # entry (np.add.at, in tap order) and multiplies by the whole row: merge them the
    # same way (clamped indices never decrease along a row), then drop the zero entries.
    n, T = ci.shape
    rows = np.arange(n)
    acc_w = np.zeros((n, T))
    acc_i = np.zeros((n, T), np.int64)
    slot = np.full(n, -1)
    for k in range(T):
        slot = slot + (1 if k == 0 else (ci[:, k] != ci[:, k - 1]).astype(slot.dtype))
        acc_w[rows, slot] = acc_w[rows, slot] + wgt[:, k]
        acc_i[rows, slot] = ci[:, k]
    keep = (np.arange(T).reshape(1, -1) <= slot.reshape(-1, 1)) & (acc_w != 0)
    kk = max(1, int(keep.sum(axis=1).max()) if n else 1)
    pick = np.argsort(~keep, axis=1, kind="stable")[:, :kk]
    w = np.take_along_axis(np.where(keep, acc_w, 0.0), pick, axis=1)
    i = np.take_along_axis(acc_i, pick, axis=1)     # a padding tap reads a valid index
    if kk == 1 and (w == 1.0).all():
        w = None
    return i, w, extrap


def _operands(op, xs):
    """(out shape, per-dim scale, axes, full roi or None) as the reference derives them."""
    r = len(xs)
    axes = op.attr("axes")
    axes = list(range(r)) if axes is None else [int(a) + r if int(a) < 0 else int(a) for a in axes]
    if any(a < 0 or a >= r for a in axes) or len(set(axes)) != len(axes):
        raise _Unsupported(f"axes {op.attr('axes')}")
    roi_v, scales_v, sizes_v = op.operand(1), op.operand(2), op.operand(3)
    sizes = scales = None
    if sizes_v is not None:
        c = const_of(sizes_v)
        if c is None:
            raise _Unsupported("sizes not constant")
        if np.asarray(c).size:
            sizes = [int(v) for v in np.asarray(c).reshape(-1)]
    if sizes is None:
        c = None if scales_v is None else const_of(scales_v)
        if scales_v is not None and c is None:
            raise _Unsupported("scales not constant")
        if c is None or np.asarray(c).size == 0:
            raise _Unsupported("needs non-empty scales or sizes")
        scales = [float(v) for v in np.asarray(c).reshape(-1)]
    if sizes is not None:
        out, scale = resize_output_shape(xs, None, sizes, axes,
                                         op.attr("keep_aspect_ratio_policy") or "stretch")
    else:
        out, scale = resize_output_shape(xs, scales, None, axes)
    full_roi = None
    if op.attr("coordinate_transformation_mode") == "tf_crop_and_resize":
        c = None if roi_v is None else const_of(roi_v)
        if c is None or np.asarray(c).size == 0:
            raise _Unsupported("tf_crop_and_resize needs a constant roi")
        roi = np.asarray(c, dtype=np.float64).reshape(-1)
        na = len(axes)
        if roi.size < 2 * na:
            raise _Unsupported("roi shorter than 2 * len(axes)")
        full_roi = [0.0] * r + [1.0] * r
        for i, a in enumerate(axes):
            full_roi[a] = float(roi[i])
            full_roi[r + a] = float(roi[na + i])
    return tuple(out), scale, axes, full_roi


def build_resize(op):
    """(kernel, [x, tables...]) for a resize op; raises _Unsupported."""
    x, y = op.operands[0], op.results[0]
    xs, ys = static_shape(x.type), static_shape(y.type)
    if xs is None:
        raise _Unsupported("shape not static")
    dt = x.type.dtype
    if y.type.dtype is not dt:
        raise _Unsupported("result dtype differs from the input's")
    if dt is DType.string or dt.numpy.itemsize not in INT_OF_SIZE:
        raise _Unsupported(f"dtype {dt.name}")
    if len(xs) == 0:
        raise _Unsupported("scalar input")
    mode = op.attr("mode")
    if mode != "nearest" and dt is not DType.float32:
        raise _Unsupported(f"dtype {dt.name} ({mode} blends float32 only)")
    out, scale, axes, full_roi = _operands(op, xs)
    if ys is None:
        raise _Unsupported("result shape not static")
    if out != ys:
        raise _Unsupported(f"computed output shape {list(out)} is not the result's {list(ys)}")
    if K.prod(xs) == 0 or K.prod(ys) == 0:
        raise _Unsupported("zero-size tensor")
    r = len(xs)
    in_st = K.contiguous_strides(xs)
    per_axis = {}           # axis -> (indices, weights, extrap)
    for a in axes:
        pair = None if full_roi is None else (full_roi[a], full_roi[r + a])
        if out[a] == xs[a] and math.isclose(scale[a], 1.0) and \
                (pair is None or (math.isclose(pair[0], 0.0) and math.isclose(pair[1], 1.0))):
            continue        # the reference leaves this axis alone
        idx, w, ex = _axis_table(op, xs[a], out[a], scale[a], pair)
        if (w is None and ex is None and idx.shape[1] == 1 and out[a] == xs[a]
                and (idx[:, 0] == np.arange(xs[a])).all()):
            continue        # an identity mapping
        per_axis[a] = (idx, w, ex)
    if any(ex is not None for _, _, ex in per_axis.values()) and dt is not DType.float32:
        raise _Unsupported(f"extrapolation on dtype {dt.name}")
    n_taps = K.prod(t[0].shape[1] for t in per_axis.values())
    if n_taps > MAX_TAPS:
        raise _Unsupported(f"{n_taps} taps per output element (at most {MAX_TAPS})")

    dims: list[ResizeDim] = []
    dim_of_axis: dict[int, int] = {}
    tables = []
    name = x.name or "resize"
    for a in range(r):
        if a not in per_axis:
            if xs[a] == 1:
                continue
            if dims and dims[-1].kind == "plain":
                prev = dims[-1]
                dims[-1] = ResizeDim("plain", prev.extent * xs[a], stride=in_st[a])
            else:
                dims.append(ResizeDim("plain", xs[a], stride=in_st[a]))
            continue
        idx, w, ex = per_axis[a]
        dim_of_axis[a] = len(dims)
        dims.append(ResizeDim("table", out[a], taps=idx.shape[1], weighted=w is not None,
                              extrap=ex is not None))
        tables.append(ConstArray((idx * in_st[a]).astype(np.int64), f"{name}.resize{a}.off"))
        if w is not None:
            tables.append(ConstArray(w.astype(np.float64), f"{name}.resize{a}.w"))
        if ex is not None:
            tables.append(ConstArray(ex.astype(np.uint8), f"{name}.resize{a}.extrap"))
    if not dims:
        dims.append(ResizeDim("plain", 1, stride=0))
    order = tuple(dim_of_axis[a] for a in axes if a in dim_of_axis)
    kern = Resize(dims=tuple(dims), order=order, itemsize=dt.numpy.itemsize,
                  extrapolation_value=float(op.attr("extrapolation_value") or 0.0))
    return kern, [x] + tables


@rule("resize")
def lower_resize(op):
    try:
        return build_resize(op)
    except _Unsupported as e:
        return str(e)
