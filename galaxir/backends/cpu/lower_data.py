"""Lowering rules for data ops (kernels in kernels_data.py): slice, pad, split, tile and
expand.  Every index the kernels use is derived here from static shapes and constant
operands, following the numpy reference (galaxir/reference/kernels/tensor.py), and
the shape it gives is checked against the op's inferred result shape; anything that does
not agree, or that the reference would reject, falls back with a reason.

Imported at the end of lower.py: the ``rule`` decorator registers into lower.RULES.
Anything a rule cannot handle returns a reason and the op runs on the numpy reference.
"""
from __future__ import annotations

import warnings

import numpy as np

from ...ir.ops.tensor import slice_bounds
from ...ir.types import DType, TensorType
from . import kernels as K
from . import kernels_data as KD
from .lower import const_of, rule, static_shape


def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _movable(x, results, scalar_ok: bool = False):
    """(input shape, result shapes) when ``x`` -> ``results`` can be moved natively: fixed-
    size elements, one dtype, static shapes, an input of rank >= 1 unless ``scalar_ok``;
    otherwise the reason."""
    for v in [x] + list(results):
        if not isinstance(v.type, TensorType):
            return f"not a tensor: {v.type}"
    dt = x.type.dtype
    if dt is DType.string or dt.numpy.hasobject:
        return "string tensor"
    if dt.numpy.itemsize not in KD.ELEM_TYPES:
        return f"dtype {dt.name}"
    for r in results:
        if r.type.dtype != dt:
            return "result dtype differs from the input's"
    xs = static_shape(x.type)
    ys = [static_shape(r.type) for r in results]
    if xs is None or any(y is None for y in ys):
        return "shape not static"
    if not xs and not scalar_ok:
        return "scalar input"
    return xs, ys


def _const_operands(op, first: int, last: int):
    """Constant integer lists of operands first..last (None where absent), or a reason."""
    out = []
    for k in range(first, last + 1):
        v = op.operand(k)
        if v is None:
            out.append(None)
            continue
        c = const_of(v)
        if c is None:
            return f"operand {k} is not constant"
        try:
            out.append(_ints(c))
        except (TypeError, ValueError, OverflowError):
            return f"operand {k} is not integer"
    return out


def _axis(a: int, r: int) -> int | None:
    if not -r <= a < max(r, 1):
        return None
    return a + r if a < 0 else a


@rule("slice")
def lower_slice(op):
    x, y = op.operands[0], op.results[0]
    consts = _const_operands(op, 1, 4)
    if isinstance(consts, str):
        return "starts/ends/axes/steps not constant" if "constant" in consts else consts
    got = _movable(x, [y])
    if isinstance(got, str):
        return got
    xs, (ys,) = got
    r = len(xs)
    starts, ends, axes, steps = consts
    if starts is None or ends is None:
        return "starts/ends missing"
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    sel = [range(d) for d in xs]
    for s, e, a, st in zip(starts, ends, axes, steps):
        ax = _axis(a, r)
        if ax is None:
            return f"axis {a} out of range"
        if st == 0:
            return "slice step is 0"
        s, e, st = slice_bounds(s, e, st, xs[ax])
        # numpy basic indexing: exactly the reference's x[..., slice(s, e, st), ...]
        sel[ax] = range(xs[ax])[slice(s, e if e >= 0 else None, st)]
    shape = tuple(len(rg) for rg in sel)
    if shape != tuple(ys):
        return f"slice gives {list(shape)}, the result type says {list(ys)}"
    xst = K.contiguous_strides(xs)
    item = x.type.dtype.numpy.itemsize
    if K.prod(shape) == 0:
        return KD.StridedCopy(shape=shape, in_strides=(0,) * r, in_offset=0, itemsize=item), [x]
    strides = tuple(st * rg.step for st, rg in zip(xst, sel))
    offset = sum(st * rg.start for st, rg in zip(xst, sel))
    return KD.StridedCopy(shape=shape, in_strides=strides, in_offset=offset, itemsize=item,
                          name="slice"), [x]


@rule("pad")
def lower_pad(op):
    x, y = op.operands[0], op.results[0]
    mode = op.attr("mode") or "constant"
    if mode not in KD.PAD_MODES:
        return f"pad mode {mode!r}"
    pads = _const_operands(op, 1, 1)
    if isinstance(pads, str) or pads[0] is None:
        return "pads not constant"
    p = pads[0]
    axes_op = _const_operands(op, 3, 3)
    if isinstance(axes_op, str):
        return "axes not constant"
    got = _movable(x, [y])
    if isinstance(got, str):
        return got
    xs, (ys,) = got
    r = len(xs)
    if axes_op[0] is None:
        axes = list(range(r))
    else:
        axes = []
        for a in axes_op[0]:
            ax = _axis(a, r)
            if ax is None:
                return f"axis {a} out of range"
            axes.append(ax)
    if len(p) != 2 * len(axes):
        return f"pads {p} must have 2 entries per axis ({len(axes)} axes)"
    before, after = [0] * r, [0] * r
    for j, a in enumerate(axes):
        before[a], after[a] = p[j], p[j + len(axes)]
    dt = x.type.dtype.numpy
    fill = b""
    if mode == "constant":
        value = op.operand(2)
        cv = None
        if value is not None:
            cv = const_of(value)
            if cv is None:
                return "constant_value not constant"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                c = np.zeros((), dt) if cv is None or np.asarray(cv).size == 0 else \
                    np.asarray(cv).reshape(-1)[0]
                # the reference's np.pad decides how the constant becomes an element
                fill = np.pad(np.zeros(1, dt), (1, 0), mode="constant",
                              constant_values=c)[:1].tobytes()
        except Exception as e:  # noqa: BLE001  (whatever numpy refuses, the reference does too)
            return f"constant_value cannot be stored as {dt}: {type(e).__name__}"
        if len(fill) != dt.itemsize:
            return "constant_value size"
    try:
        axes_plan = KD.pad_axes(xs, before, after, mode)
    except ValueError as e:
        return f"pad: {e}"
    # out shape per original axis (pad_axes merges identity axes, so recompute here)
    shape = []
    for d, bf, af in zip(xs, before, after):
        crop_lo, crop_hi = max(-bf, 0), max(-af, 0)
        shape.append(max(bf, 0) + (d - crop_lo - crop_hi) + max(af, 0))
    if tuple(shape) != tuple(ys):
        return f"pad gives {shape}, the result type says {list(ys)}"
    assert K.prod(ax[1] + ax[2] + ax[3] for ax in axes_plan) == K.prod(ys)
    return KD.Pad(in_shape=tuple(xs), before=tuple(before), after=tuple(after), mode=mode,
                  fill=fill, itemsize=dt.itemsize), [x]


@rule("split")
def lower_split(op):
    x = op.operands[0]
    results = list(op.results)
    sp = _const_operands(op, 1, 1)
    if isinstance(sp, str):
        return "split sizes not constant"
    got = _movable(x, results)
    if isinstance(got, str):
        return got
    xs, ys = got
    r = len(xs)
    ax = _axis(op.attr("axis") or 0, r)
    if ax is None:
        return "axis out of range"
    n = len(results)
    dim = xs[ax]
    if sp[0] is not None:
        sizes = sp[0]
    else:
        chunk = -(-dim // n) if n else 0
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if len(sizes) != n or sum(sizes) != dim or min(sizes, default=0) < 0:
        return f"split sizes {sizes} do not fit dim {dim} into {n} outputs"
    for s, y in zip(sizes, ys):
        if tuple(y) != tuple(xs[:ax]) + (s,) + tuple(xs[ax + 1:]):
            return f"result shape {list(y)} differs from the split's"
    xst = tuple(K.contiguous_strides(xs))
    item = x.type.dtype.numpy.itemsize
    pieces, start = [], 0
    for s, y in zip(sizes, ys):
        pieces.append((tuple(y), xst, start * xst[ax] if s else 0))
        start += s
    return KD.SplitCopy(pieces=tuple(pieces), itemsize=item), [x]


@rule("tile")
def lower_tile(op):
    x, y = op.operands[0], op.results[0]
    got = _movable(x, [y])
    if isinstance(got, str):
        return got
    xs, (ys,) = got
    r = len(xs)
    if len(ys) != r:
        return "rank differs"
    reps = const_of(op.operand(1))
    if reps is not None:
        reps = _ints(reps)
        if len(reps) != r or min(reps) < 0:
            return f"repeats {reps} do not fit rank {r}"
    else:  # the result type (static after specialization) says how many copies
        reps = []
        for d, o in zip(xs, ys):
            if d == 0:
                reps.append(0 if o == 0 else -1)
            elif o % d:
                reps.append(-1)
            else:
                reps.append(o // d)
        if min(reps) < 0:
            return "repeats not constant and not implied by the shapes"
    if tuple(d * k for d, k in zip(xs, reps)) != tuple(ys):
        return f"tile gives {[d * k for d, k in zip(xs, reps)]}, the result type says {list(ys)}"
    item = x.type.dtype.numpy.itemsize
    xst = K.contiguous_strides(xs)
    shape, strides = [], []
    for d, k, st in zip(xs, reps, xst):
        shape += [k, d]                 # out index = rep * d + j reads x index j
        strides += [0, st]
    return KD.StridedCopy(shape=tuple(shape), in_strides=tuple(strides), in_offset=0,
                          itemsize=item, name="tile"), [x]


@rule("expand")
def lower_expand(op):
    x, y = op.operands[0], op.results[0]
    got = _movable(x, [y], scalar_ok=True)
    if isinstance(got, str):
        return got
    xs, (ys,) = got
    if len(xs) > len(ys):
        return "input rank above the result's"
    spec = const_of(op.operand(1))
    if spec is not None:
        try:
            want = tuple(np.broadcast_shapes(tuple(xs), tuple(_ints(spec))))
        except ValueError:
            return "shape does not broadcast"
        if want != tuple(ys):
            return f"expand gives {list(want)}, the result type says {list(ys)}"
    lead = len(ys) - len(xs)
    for d, o in zip(xs, ys[lead:]):
        if d != o and d != 1:
            return f"cannot expand {list(xs)} to {list(ys)}"
    item = x.type.dtype.numpy.itemsize
    strides = K.broadcast_strides(xs, ys)
    return KD.StridedCopy(shape=tuple(ys), in_strides=tuple(strides), in_offset=0,
                          itemsize=item, name="expand"), [x]
