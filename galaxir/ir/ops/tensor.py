"""Tensor manipulation and shape ops: reshape, transpose, concat, split, slicing, gathers
and scatters, shape arithmetic (shape, size, range, constant_of_shape), padding, sorting
(top_k, unique), scans (cumsum, cumprod) and the layout shuffles (depth_to_space, ...).

Semantics are those of the newest ONNX opset of each op.  Type inference keeps symbolic
dims wherever the result can be proved: a reshape ``[0, -1]`` of ``f32[N,512,1,1]`` is
``f32[N,512]`` because the symbols cancel in the element-count division.

Shape operands are read through :func:`shape_value`, which knows constants and also the
usual "shape arithmetic" chains models build at run time (``shape -> gather -> unsqueeze
-> concat``), so ``reshape(x, concat(shape(x)[0:1], [-1]))`` still infers ``[N, ...]``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..opdef import BOOL, INDEX, INT64, attr, define
from ..traits import ShapeOnly, SizeFromValues, View
from ..types import UNKNOWN, Dim, DType, TensorType, Type
from .rules import broadcast_shapes, const_value, fail, normalize_axis, tensor_operand

if TYPE_CHECKING:
    from ..core import Operation, Value

INT64_MAX = 2 ** 63 - 1


# -- symbolic dim arithmetic ------------------------------------------------------------------
def _product(dims: Sequence[Dim]) -> tuple[int, Counter] | None:
    """A product of dims as (integer coefficient, symbol multiset); None if any is unknown."""
    coef, syms = 1, Counter()
    for d in dims:
        if isinstance(d, int):
            coef *= d
        elif d == UNKNOWN:
            return None
        else:
            syms[d] += 1
    return coef, syms


def _as_dim(coef: int, syms: Counter) -> Dim:
    syms = +syms
    if not syms:
        return coef
    if coef == 0:
        return 0
    if coef == 1 and len(syms) == 1 and next(iter(syms.values())) == 1:
        return next(iter(syms))
    return UNKNOWN


def dim_product(dims: Sequence[Dim]) -> Dim:
    """The product of dims: an int, a single symbol (``N * 1``), or unknown."""
    p = _product(dims)
    if p is None:
        return 0 if any(d == 0 for d in dims) else UNKNOWN
    return _as_dim(*p)


def dim_divide(num: Sequence[Dim], den: Sequence[Dim]) -> Dim:
    """prod(num) / prod(den) when the symbols cancel and the integers divide, else unknown."""
    n, d = _product(num), _product(den)
    if n is None or d is None or d[0] == 0:
        return UNKNOWN
    if n[0] == 0:
        return 0
    rest = n[1].copy()
    rest.subtract(d[1])
    if any(v < 0 for v in rest.values()) or n[0] % d[0]:
        return UNKNOWN
    return _as_dim(n[0] // d[0], rest)


def dim_sum(dims: Sequence[Dim]) -> Dim:
    total, sym = 0, None
    for d in dims:
        if isinstance(d, int):
            total += d
        elif d == UNKNOWN or sym is not None:
            return UNKNOWN
        else:
            sym = d
    if sym is None:
        return total
    return sym if total == 0 else UNKNOWN


def merge_dims(dims: Sequence[Dim]) -> Dim:
    """Dims that must be equal at run time: the most precise of them (int > symbol > ?)."""
    best: Dim = UNKNOWN
    for d in dims:
        if isinstance(d, int):
            return d
        if best == UNKNOWN:
            best = d
    return best


def _nonneg(op, dims) -> tuple[Dim, ...]:
    for d in dims:
        if isinstance(d, int) and d < 0:
            raise fail(op, f"inferred a negative dim {d} (shape {list(dims)})")
    return tuple(dims)


# -- shape values: constants and symbolic shape arithmetic ------------------------------------
def _int_list(arr) -> list[int] | None:
    a = np.asarray(arr)
    if a.dtype.kind not in "iub":
        return None
    return [int(x) for x in a.reshape(-1)]


def value_of(v: "Value | None", depth: int = 0) -> tuple[list[Dim], bool] | None:
    """The elements of a small integer tensor ``v`` as dims (ints or symbols, ``?`` where
    unknown) plus whether it is a scalar; None when even its length is unknown.

    ``depth`` counts visited producers; past a fixed budget the walk gives up (unknown), so
    shared subexpressions cannot make it exponential."""
    if v is None or depth > 96:
        return None
    t = v.type
    if not isinstance(t, TensorType) or t.shape is None or len(t.shape) > 1:
        return None
    scalar = len(t.shape) == 0
    op = v.producer
    if op is not None:
        got = _value_from_producer(op, v, depth + 8)
        if got is not None:
            return got, scalar
    n = 1 if scalar else t.shape[0]
    if not isinstance(n, int):
        return None
    return [UNKNOWN] * n, scalar


def _value_from_producer(op: "Operation", v: "Value", depth: int) -> list[Dim] | None:
    name = op.name
    if name == "constant":
        return _int_list(op.attrs["value"])
    if name == "shape":
        t = op.operand_types[0]
        if not isinstance(t, TensorType) or t.shape is None:
            return None
        s, e = _shape_bounds(op, len(t.shape))
        return list(t.shape[s:e])
    if name == "size":
        t = op.operand_types[0]
        if isinstance(t, TensorType) and t.shape is not None:
            return [dim_product(t.shape)]
        return None
    if name in ("identity", "cast") or (name == "reshape" and _rank(v) == 1) or \
            (name in ("squeeze", "unsqueeze") and _rank(v) in (0, 1)):
        src = value_of(op.operand(0), depth)
        if src is None:
            return None
        if name == "cast" and v.type.dtype not in (DType.int64, DType.int32):
            return None
        return src[0]
    if name == "concat":
        out: list[Dim] = []
        for x in op.operands:
            got = value_of(x, depth)
            if got is None:
                return None
            out.extend(got[0])
        return out
    if name == "gather":
        src, idx = value_of(op.operand(0), depth), const_value(op, 1)
        if src is None or idx is None or not src[0]:
            return None
        vals, n = src[0], len(src[0])
        try:
            return [vals[int(i) + n if int(i) < 0 else int(i)] for i in np.asarray(idx).reshape(-1)]
        except IndexError:
            return None
    if name == "slice":
        src = value_of(op.operand(0), depth)
        params = [const_value(op, i) for i in range(1, 5)]
        if src is None or params[0] is None or params[1] is None:
            return None
        if (op.operand(3) is not None and params[2] is None) or (op.operand(4) is not None and params[3] is None):
            return None
        step = 1 if params[3] is None else int(np.asarray(params[3]).reshape(-1)[0])
        s, e, st = slice_bounds(int(np.asarray(params[0]).reshape(-1)[0]),
                                int(np.asarray(params[1]).reshape(-1)[0]), step, len(src[0]))
        return src[0][slice(s, e if e >= 0 else None, st)]
    if name in ("add", "sub", "mul", "div", "max", "min"):
        a, b = value_of(op.operand(0), depth), value_of(op.operand(1), depth)
        if a is None or b is None:
            return None
        av, bv = a[0], b[0]
        n = max(len(av), len(bv))
        if len(av) not in (1, n) or len(bv) not in (1, n):
            return None
        av, bv = av * (n // len(av)), bv * (n // len(bv))
        return [_dim_arith(name, x, y) for x, y in zip(av, bv)]
    return None


def _dim_arith(name: str, x: Dim, y: Dim) -> Dim:
    if isinstance(x, int) and isinstance(y, int):
        if name == "add":
            return x + y
        if name == "sub":
            return x - y
        if name == "mul":
            return x * y
        if name == "div":
            return int(x / y) if y else UNKNOWN
        return max(x, y) if name == "max" else min(x, y)
    if name == "mul":
        return dim_product([x, y]) if UNKNOWN not in (x, y) else UNKNOWN
    if name == "div" and y == 1:
        return x
    if name in ("add", "sub") and y == 0:
        return x
    if name == "add" and x == 0:
        return y
    return UNKNOWN


def _rank(v: "Value") -> int | None:
    t = v.type
    return t.rank if isinstance(t, TensorType) else None


def shape_value(op: "Operation", i: int) -> list[Dim] | None:
    """Operand ``i`` read as a 1-D list of dims (see :func:`value_of`), or None."""
    got = value_of(op.operand(i))
    return None if got is None else got[0]


def const_ints(op: "Operation", i: int) -> list[int] | None:
    c = const_value(op, i)
    return None if c is None else _int_list(c)


def const_scalar(op: "Operation", i: int):
    c = const_value(op, i)
    if c is None or np.asarray(c).size != 1:
        return None
    return np.asarray(c).reshape(-1)[0]


def _operand_len(op: "Operation", i: int) -> int | None:
    """The static length of 1-D operand ``i``."""
    t = op.operand_types[i]
    if isinstance(t, TensorType) and t.shape is not None:
        if len(t.shape) == 0:
            return 1
        if len(t.shape) == 1 and isinstance(t.shape[0], int):
            return t.shape[0]
    return None


def _data(op: "Operation", i: int = 0) -> TensorType:
    return tensor_operand(op, i)


# -- reshape-like ------------------------------------------------------------------------------
def _reshape(op) -> list[Type]:
    x = _data(op)
    spec = shape_value(op, 1)
    if spec is None:
        n = _operand_len(op, 1)
        return [x.with_shape(None if n is None else (UNKNOWN,) * n)]
    allowzero = op.attr("allowzero")
    out: list[Dim] = []
    infer_at = None
    for j, d in enumerate(spec):
        if d == -1:
            if infer_at is not None:
                raise fail(op, f"shape {spec} has more than one -1")
            infer_at = j
            out.append(UNKNOWN)
        elif d == 0 and not allowzero:
            if x.shape is None:
                out.append(UNKNOWN)
            elif j >= len(x.shape):
                raise fail(op, f"shape {spec}: 0 at position {j} copies a dim the input {x} lacks")
            else:
                out.append(x.shape[j])
        elif isinstance(d, int) and d < 0:
            raise fail(op, f"shape {spec} has an invalid entry {d}")
        else:
            out.append(d)
    if infer_at is not None and x.shape is not None:
        others = [d for j, d in enumerate(out) if j != infer_at]
        out[infer_at] = dim_divide(x.shape, others)
        if isinstance(out[infer_at], int) and x.is_static and all(isinstance(d, int) for d in others):
            total, rest = math.prod(x.shape), math.prod(others)
            if rest == 0 or total % rest:
                raise fail(op, f"cannot reshape {x} to {spec}: {total} elements do not divide by {rest}")
    elif x.is_static and all(isinstance(d, int) for d in out):
        if math.prod(out) != math.prod(x.shape):
            raise fail(op, f"cannot reshape {x} ({math.prod(x.shape)} elements) to {out}")
    return [x.with_shape(out)]


define("reshape", traits=[View("reshape"), ShapeOnly()],
       operands=["data", "shape"], attrs={"allowzero": attr("int", 0)}, infer=_reshape,
       types={"shape": INT64},
       doc="ONNX Reshape-14: 0 copies the input dim (unless allowzero), -1 is inferred.")


def _transpose(op) -> list[Type]:
    x = _data(op)
    perm = op.attr("perm")
    if x.shape is None:
        return [x.with_shape(None if perm is None else (UNKNOWN,) * len(perm))]
    r = len(x.shape)
    perm = tuple(range(r))[::-1] if perm is None else tuple(p + r if p < 0 else p for p in perm)
    if sorted(perm) != list(range(r)):
        raise fail(op, f"perm {list(perm)} is not a permutation of {r} axes")
    return [x.with_shape([x.shape[p] for p in perm])]


define("transpose", operands=["data"], attrs={"perm": attr("ints")}, infer=_transpose)


def _concat(op) -> list[Type]:
    types = [_data(op, i) for i in range(len(op.operands))]
    if not types:
        raise fail(op, "needs at least one operand")
    ranks = {t.rank for t in types if t.rank is not None}
    if len(ranks) > 1:
        raise fail(op, f"operands have different ranks: {', '.join(str(t) for t in types)}")
    if not ranks:
        return [types[0].with_shape(None)]
    r = ranks.pop()
    axis = normalize_axis(op, op.attr("axis"), r)
    known = [t.shape for t in types if t.shape is not None]
    out = []
    for k in range(r):
        if k == axis:
            out.append(dim_sum([s[k] for s in known]) if len(known) == len(types) else UNKNOWN)
        else:
            dims = [s[k] for s in known]
            ints = {d for d in dims if isinstance(d, int)}
            if len(ints) > 1:
                raise fail(op, f"operands differ in dim {k}: {', '.join(str(t) for t in types)}")
            out.append(merge_dims(dims))
    return [types[0].with_shape(out)]


define("concat", operands=["inputs*"], attrs={"axis": attr("int", required=True)}, infer=_concat,
       types={"inputs": "T"})


def _split(op) -> list[Type]:
    x = _data(op)
    n = len(op.results)
    if x.shape is None:
        return [x] * n
    r = len(x.shape)
    axis = normalize_axis(op, op.attr("axis"), r)
    dim = x.shape[axis]
    sizes: list[Dim]
    if op.operand(1) is not None:
        sp = const_ints(op, 1)
        if sp is None:
            sizes = [UNKNOWN] * n
        else:
            if len(sp) != n:
                raise fail(op, f"split sizes {sp} give {len(sp)} pieces, op has {n} results")
            if isinstance(dim, int) and sum(sp) != dim:
                raise fail(op, f"split sizes {sp} do not add up to dim {dim} of {x}")
            sizes = list(sp)
    elif isinstance(dim, int):
        num = op.attr("num_outputs") or n
        if num != n:
            raise fail(op, f"num_outputs={num} but the op has {n} results")
        chunk = -(-dim // n)
        if op.attr("num_outputs") is None and dim % n:
            raise fail(op, f"dim {dim} of {x} does not split into {n} equal parts")
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
        if sizes[-1] < 0:  # cannot run; left to the kernel (it may sit in an untaken branch)
            sizes = [UNKNOWN] * n
    else:
        sizes = [UNKNOWN] * n
    return [x.with_shape(x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in sizes]


define("split", operands=["input", "split?"], attrs={"axis": attr("int", 0), "num_outputs": attr("int")},
       num_results=None, infer=_split, types={"split": INT64},
       doc="Split along axis by the sizes in 'split', else into num results (last one smaller).")


def _squeeze(op) -> list[Type]:
    x = _data(op)
    if op.operand(1) is None:
        if x.shape is None or any(not isinstance(d, int) for d in x.shape):
            return [x.with_shape(None)]
        return [x.with_shape([d for d in x.shape if d != 1])]
    axes = const_ints(op, 1)
    if x.shape is None:
        return [x]
    r = len(x.shape)
    if axes is None:
        n = _operand_len(op, 1)
        return [x.with_shape(None if n is None else (UNKNOWN,) * (r - n))]
    axes = {normalize_axis(op, a, r) for a in axes}
    for a in axes:
        if isinstance(x.shape[a], int) and x.shape[a] != 1:
            raise fail(op, f"cannot squeeze axis {a} of {x}: its size is not 1")
    return [x.with_shape([d for k, d in enumerate(x.shape) if k not in axes])]


define("squeeze", traits=[View("reshape"), ShapeOnly()],
       operands=["data", "axes?"], infer=_squeeze, types={"axes": INT64})


def _unsqueeze(op) -> list[Type]:
    x = _data(op)
    axes = const_ints(op, 1)
    n = len(axes) if axes is not None else _operand_len(op, 1)
    if x.shape is None or n is None:
        return [x.with_shape(None)]
    r = len(x.shape) + n
    if axes is None:
        return [x.with_shape((UNKNOWN,) * r)]
    axes = sorted({normalize_axis(op, a, r) for a in axes})
    if len(axes) != n:
        raise fail(op, f"axes {const_ints(op, 1)} repeat an axis")
    out, it = [], iter(x.shape)
    for k in range(r):
        out.append(1 if k in axes else next(it))
    return [x.with_shape(out)]


define("unsqueeze", traits=[View("reshape"), ShapeOnly()],
       operands=["data", "axes"], infer=_unsqueeze, types={"axes": INT64})


def _flatten(op) -> list[Type]:
    x = _data(op)
    if x.shape is None:
        return [x.with_shape((UNKNOWN, UNKNOWN))]
    r = len(x.shape)
    axis = op.attr("axis")
    if not -r <= axis <= r:
        raise fail(op, f"axis {axis} is out of range for {x}")
    axis = axis + r if axis < 0 else axis
    return [x.with_shape((dim_product(x.shape[:axis]), dim_product(x.shape[axis:])))]


define("flatten", traits=[View("reshape"), ShapeOnly()],
       operands=["input"], attrs={"axis": attr("int", 1)}, infer=_flatten)


def _expand(op) -> list[Type]:
    x = _data(op)
    spec = shape_value(op, 1)
    if spec is None:
        return [x.with_shape(None)]
    if x.shape is None:
        return [x.with_shape((UNKNOWN,) * len(spec))]
    spec = [UNKNOWN if isinstance(d, int) and d < 0 else d for d in spec]
    try:
        shape = broadcast_shapes(x.shape, spec)
    except ValueError as e:
        raise fail(op, f"cannot expand {x} to {spec}: {e}") from None
    return [x.with_shape(shape)]


define("expand", traits=[SizeFromValues(), ShapeOnly()],
       operands=["input", "shape"], infer=_expand, types={"shape": INT64})


def _tile(op) -> list[Type]:
    x = _data(op)
    reps = shape_value(op, 1)
    if x.shape is None:
        return [x]
    if reps is None:
        return [x.with_shape((UNKNOWN,) * len(x.shape))]
    if len(reps) != len(x.shape):
        raise fail(op, f"repeats has {len(reps)} entries, input {x} has rank {len(x.shape)}")
    return [x.with_shape(_nonneg(op, [dim_product([d, k]) if k != UNKNOWN else UNKNOWN
                                      for d, k in zip(x.shape, reps)]))]


define("tile", traits=[SizeFromValues(), ShapeOnly()],
       operands=["input", "repeats"], infer=_tile, types={"repeats": INT64})


def slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int, int]:
    """ONNX Slice clamping for one axis: (start, end, step) valid for ``dim`` (end may be -1
    with a negative step, meaning "through index 0")."""
    if step == 0:
        raise ValueError("slice step cannot be 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
    else:
        start = min(max(start, 0), dim - 1)
        end = min(max(end, -1), dim - 1)
    return start, end, step


def slice_len(start: int, end: int, step: int) -> int:
    if step > 0:
        return max(0, -(-(end - start) // step))
    return max(0, -(-(start - end) // -step))


def _slice(op) -> list[Type]:
    x = _data(op)
    if x.shape is None:
        return [x]
    r = len(x.shape)
    starts, ends = const_ints(op, 1), const_ints(op, 2)
    axes = list(range(r)) if op.operand(3) is None else const_ints(op, 3)
    steps = None if op.operand(4) is not None else [1] * r
    if op.operand(4) is not None:
        steps = const_ints(op, 4)
    if axes is None:
        return [x.with_shape((UNKNOWN,) * r)]
    n = len(starts) if starts is not None else _operand_len(op, 1)
    if op.operand(3) is None and n is not None:
        axes = axes[:n]
    axes = [normalize_axis(op, a, r) for a in axes]
    if len(set(axes)) != len(axes):
        raise fail(op, f"axes {axes} repeat an axis")
    out = list(x.shape)
    for j, a in enumerate(axes):
        if starts is None or ends is None or steps is None:
            out[a] = UNKNOWN
            continue
        if not (len(starts) == len(ends) == len(axes)) or len(steps) < len(axes):
            raise fail(op, f"starts {starts}, ends {ends}, axes {axes}, steps {steps} differ in length")
        s, e, st = starts[j], ends[j], steps[j]
        if st == 0:
            raise fail(op, "a slice step is 0")
        d = x.shape[a]
        if isinstance(d, int):
            out[a] = slice_len(*slice_bounds(s, e, st, d))
        elif st == 1 and s == 0 and e >= INT64_MAX // 2:
            out[a] = d
        elif st > 0 and 0 <= s <= e < INT64_MAX // 2 and e - s == 0:
            out[a] = 0
        else:
            out[a] = UNKNOWN
    return [x.with_shape(out)]


_TIND = ("Tind", INDEX)
define("slice", operands=["data", "starts", "ends", "axes?", "steps?"], infer=_slice,
       types={"starts": _TIND, "ends": _TIND, "axes": _TIND, "steps": _TIND})


# -- gathers and scatters ----------------------------------------------------------------------
def _gather(op) -> list[Type]:
    x, idx = _data(op), _data(op, 1)
    if x.shape is None or idx.shape is None:
        return [x.with_shape(None)]
    axis = normalize_axis(op, op.attr("axis"), len(x.shape))
    return [x.with_shape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


define("gather", operands=["data", "indices"], attrs={"axis": attr("int", 0)}, infer=_gather,
       types={"indices": INDEX})


def _gather_elements(op) -> list[Type]:
    x, idx = _data(op), _data(op, 1)
    if x.shape is not None:
        normalize_axis(op, op.attr("axis"), len(x.shape))
        if idx.shape is not None and len(idx.shape) != len(x.shape):
            raise fail(op, f"indices {idx} must have the rank of data {x}")
    return [x.with_shape(idx.shape)]


define("gather_elements", operands=["data", "indices"], attrs={"axis": attr("int", 0)},
       infer=_gather_elements, types={"indices": INDEX})


def _gather_nd(op) -> list[Type]:
    x, idx = _data(op), _data(op, 1)
    b = op.attr("batch_dims")
    if x.shape is None or not idx.shape or not isinstance(idx.shape[-1], int):
        return [x.with_shape(None)]
    k = idx.shape[-1]
    if b + k > len(x.shape):
        raise fail(op, f"indices {idx} address {k} dims after {b} batch dims of {x}")
    return [x.with_shape(idx.shape[:-1] + x.shape[b + k:])]


define("gather_nd", operands=["data", "indices"], attrs={"batch_dims": attr("int", 0)}, infer=_gather_nd,
       types={"indices": INT64})

define("scatter_elements", operands=["data", "indices", "updates"],
       attrs={"axis": attr("int", 0), "reduction": attr("str", "none")}, infer=lambda op: [_data(op)],
       types={"data": "T", "indices": INDEX, "updates": "T"})
define("scatter_nd", operands=["data", "indices", "updates"],
       attrs={"reduction": attr("str", "none")}, infer=lambda op: [_data(op)],
       types={"data": "T", "indices": INT64, "updates": "T"})
define("tensor_scatter", operands=["past_cache", "update", "write_indices?"],
       attrs={"mode": attr("str", "linear"), "axis": attr("int", -2)}, infer=lambda op: [_data(op)],
       types={"past_cache": "T", "update": "T", "write_indices": INT64},
       doc="ONNX TensorScatter-24: writes 'update' into the cache along axis at write_indices.")


# -- shape arithmetic ----------------------------------------------------------------------------
def _shape_bounds(op, r: int) -> tuple[int, int]:
    start, end = op.attr("start", 0), op.attr("end")
    end = r if end is None else end
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    return start, max(start, end)


def _shape(op) -> list[Type]:
    x = op.operand_types[0]
    if not isinstance(x, TensorType) or x.shape is None:
        return [TensorType(DType.int64, (UNKNOWN,))]
    s, e = _shape_bounds(op, len(x.shape))
    return [TensorType(DType.int64, (e - s,))]


define("shape", operands=["data"], attrs={"start": attr("int", 0), "end": attr("int")}, infer=_shape)
define("size", operands=["data"], infer=lambda op: [TensorType(DType.int64, ())])


def _constant_of_shape(op) -> list[Type]:
    v = op.attr("value")
    dt = DType.float32 if v is None else DType.from_numpy(v.dtype)
    spec = shape_value(op, 0)
    if spec is None:
        return [TensorType(dt, None)]
    return [TensorType(dt, _nonneg(op, spec))]


define("constant_of_shape", traits=[SizeFromValues()],
       operands=["input"], attrs={"value": attr("tensor")}, infer=_constant_of_shape,
       types={"input": INT64})


def range_length(start, limit, delta) -> int:
    return max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)


def _range(op) -> list[Type]:
    t = _data(op)
    vals = [const_scalar(op, i) for i in range(3)]
    if any(v is None for v in vals):
        limit = value_of(op.operand(1))
        if vals[0] is not None and vals[2] is not None and float(vals[0]) == 0 and float(vals[2]) == 1 \
                and limit is not None and len(limit[0]) == 1 and isinstance(limit[0][0], str):
            return [t.with_shape((limit[0][0],))]  # range(0, dim) has dim elements
        return [t.with_shape((UNKNOWN,))]
    if vals[2] == 0:
        raise fail(op, "delta is 0")
    if all(np.asarray(v).dtype.kind in "iu" for v in vals):
        s, l, d = (int(v) for v in vals)
        n = max(-(-(l - s) // d), 0)
    else:
        n = range_length(*vals)
    return [t.with_shape((n,))]


define("range", traits=[SizeFromValues()],
       operands=["start", "limit", "delta"], infer=_range,
       types={"start": "T", "limit": "T", "delta": "T"})


def _pad(op) -> list[Type]:
    x = _data(op)
    if x.shape is None:
        return [x]
    r = len(x.shape)
    pads = const_ints(op, 1)
    axes = list(range(r)) if op.operand(3) is None else const_ints(op, 3)
    if pads is None or axes is None:
        return [x.with_shape((UNKNOWN,) * r)]
    axes = [normalize_axis(op, a, r) for a in axes]
    if len(pads) != 2 * len(axes):
        raise fail(op, f"pads {pads} must have 2 entries per padded axis ({len(axes)} axes)")
    out = list(x.shape)
    for j, a in enumerate(axes):
        out[a] = dim_sum([x.shape[a], pads[j] + pads[j + len(axes)]])
    return [x.with_shape(_nonneg(op, out))]


define("pad", traits=[SizeFromValues()],
       operands=["data", "pads", "constant_value?", "axes?"],
       attrs={"mode": attr("str", "constant")}, infer=_pad,
       types={"data": "T", "pads": INT64, "constant_value": "T", "axes": INDEX})


def _compress(op) -> list[Type]:
    x = _data(op)
    axis = op.attr("axis")
    if axis is None:
        return [x.with_shape((UNKNOWN,))]
    if x.shape is None:
        return [x]
    axis = normalize_axis(op, axis, len(x.shape))
    cond = const_value(op, 1)
    n = int(np.count_nonzero(np.asarray(cond).reshape(-1)[: x.shape[axis]])) \
        if cond is not None and isinstance(x.shape[axis], int) else UNKNOWN
    return [x.with_shape(x.shape[:axis] + (n,) + x.shape[axis + 1:])]


define("compress", traits=[SizeFromValues()],
       operands=["input", "condition"], attrs={"axis": attr("int")}, infer=_compress,
       types={"condition": BOOL})


def _non_zero(op) -> list[Type]:
    x = _data(op)
    return [TensorType(DType.int64, (UNKNOWN if x.shape is None else max(len(x.shape), 1), UNKNOWN))]


define("non_zero", traits=[SizeFromValues()],
       operands=["x"], infer=_non_zero)


def _one_hot(op) -> list[Type]:
    idx, values = _data(op), _data(op, 2)
    depth = const_scalar(op, 1)
    depth = UNKNOWN if depth is None else int(depth)
    if idx.shape is None:
        return [values.with_shape(None)]
    r = len(idx.shape) + 1
    axis = normalize_axis(op, op.attr("axis"), r)
    return [values.with_shape(idx.shape[:axis] + (depth,) + idx.shape[axis:])]


define("one_hot", traits=[SizeFromValues()],
       operands=["indices", "depth", "values"], attrs={"axis": attr("int", -1)}, infer=_one_hot)


def _eye_like(op) -> list[Type]:
    x = _data(op)
    if x.shape is not None and len(x.shape) != 2:
        raise fail(op, f"input must be 2-D, got {x}")
    return [TensorType(op.attr("dtype") or x.dtype, x.shape)]


define("eye_like", traits=[SizeFromValues()],
       operands=["input"], attrs={"dtype": attr("dtype"), "k": attr("int", 0)}, infer=_eye_like)
define("trilu", operands=["input", "k?"], attrs={"upper": attr("int", 1)}, infer=lambda op: [_data(op)],
       types={"k": INT64})


def _depth_to_space(op) -> list[Type]:
    x = _data(op)
    b = op.attr("blocksize")
    if x.shape is None:
        return [x.with_shape((UNKNOWN,) * 4)]
    if len(x.shape) != 4:
        raise fail(op, f"input must be 4-D, got {x}")
    n, c, h, w = x.shape
    if isinstance(c, int) and c % (b * b):
        raise fail(op, f"channels {c} do not divide by blocksize^2 = {b * b}")
    return [x.with_shape((n, dim_divide([c], [b * b]), dim_product([h, b]), dim_product([w, b])))]


define("depth_to_space", operands=["input"],
       attrs={"blocksize": attr("int", required=True), "mode": attr("str", "DCR")}, infer=_depth_to_space)


def _space_to_depth(op) -> list[Type]:
    x = _data(op)
    b = op.attr("blocksize")
    if x.shape is None:
        return [x.with_shape((UNKNOWN,) * 4)]
    if len(x.shape) != 4:
        raise fail(op, f"input must be 4-D, got {x}")
    n, c, h, w = x.shape
    for d in (h, w):
        if isinstance(d, int) and d % b:
            raise fail(op, f"spatial dims of {x} do not divide by blocksize {b}")
    return [x.with_shape((n, dim_product([c, b * b]), dim_divide([h], [b]), dim_divide([w], [b])))]


define("space_to_depth", operands=["input"],
       attrs={"blocksize": attr("int", required=True), "mode": attr("str", "DCR")},
       infer=_space_to_depth)


def _center_crop_pad(op) -> list[Type]:
    x = _data(op)
    if x.shape is None:
        return [x]
    r = len(x.shape)
    axes = op.attr("axes")
    axes = list(range(r)) if axes is None else [normalize_axis(op, a, r) for a in axes]
    spec = shape_value(op, 1)
    out = list(x.shape)
    for j, a in enumerate(axes):
        out[a] = UNKNOWN if spec is None else spec[j]
    return [x.with_shape(_nonneg(op, out))]


define("center_crop_pad", operands=["input_data", "shape"], attrs={"axes": attr("ints")},
       infer=_center_crop_pad, types={"shape": INDEX})
define("reverse_sequence", operands=["input", "sequence_lens"],
       attrs={"batch_axis": attr("int", 1), "time_axis": attr("int", 0)}, infer=lambda op: [_data(op)],
       types={"sequence_lens": INT64})


def _unique(op) -> list[Type]:
    x = _data(op)
    axis = op.attr("axis")
    i64 = DType.int64
    if axis is None or x.shape is None:
        y = x.with_shape((UNKNOWN,)) if axis is None else x.with_shape(None)
        n = dim_product(x.shape) if axis is None and x.shape is not None else UNKNOWN
    else:
        a = normalize_axis(op, axis, len(x.shape))
        y = x.with_shape(x.shape[:a] + (UNKNOWN,) + x.shape[a + 1:])
        n = x.shape[a]
    return [y, TensorType(i64, (UNKNOWN,)), TensorType(i64, (n,)), TensorType(i64, (UNKNOWN,))]


define("unique", traits=[SizeFromValues()],
       operands=["X"], attrs={"sorted": attr("int", 1), "axis": attr("int")}, num_results=4,
       infer=_unique, doc="Results: unique values, first-occurrence indices, inverse indices, counts.")


def _top_k(op) -> list[Type]:
    x = _data(op)
    k = const_scalar(op, 1)
    if x.shape is None:
        return [x, TensorType(DType.int64, None)]
    axis = normalize_axis(op, op.attr("axis"), len(x.shape))
    d = UNKNOWN if k is None else int(k)
    if isinstance(d, int) and isinstance(x.shape[axis], int) and d > x.shape[axis]:
        raise fail(op, f"k={d} exceeds dim {x.shape[axis]} of {x}")
    shape = x.shape[:axis] + (d,) + x.shape[axis + 1:]
    return [x.with_shape(shape), TensorType(DType.int64, shape)]


define("top_k", operands=["X", "K"], attrs={"axis": attr("int", -1), "largest": attr("int", 1),
                                            "sorted": attr("int", 1)}, num_results=2, infer=_top_k,
       types={"K": INT64})

for _name in ("cumsum", "cumprod"):
    define(_name, operands=["x", "axis"], attrs={"exclusive": attr("int", 0), "reverse": attr("int", 0)},
           infer=lambda op: [_data(op)], types={"axis": INDEX})


def _col2im(op) -> list[Type]:
    x = _data(op)
    image = shape_value(op, 1)
    block = const_ints(op, 2)
    n_sp = len(image) if image is not None else _operand_len(op, 1)
    if x.shape is None or n_sp is None:
        return [x.with_shape(None)]
    if len(x.shape) != 3:
        raise fail(op, f"input must be 3-D [N, C*prod(block), L], got {x}")
    c = UNKNOWN if block is None else dim_divide([x.shape[1]], [math.prod(block)])
    image = [UNKNOWN] * n_sp if image is None else image
    return [x.with_shape((x.shape[0], c, *image))]


define("col2im", operands=["input", "image_shape", "block_shape"],
       attrs={"dilations": attr("ints"), "pads": attr("ints"), "strides": attr("ints")}, infer=_col2im,
       types={"image_shape": INT64, "block_shape": INT64})
