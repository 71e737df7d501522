"""Lowering rules for the typed kernels (kernels_typed.py): comparisons, logic, ``where``,
``cast``, integer (and float64) arithmetic, ``sign`` / ``round`` / ``elu``, ``pow`` by a
constant 2, 3 or 0.5, ``range``, ``shape`` / ``size``, ``gather_elements`` and ``argmax`` /
``argmin`` -- the ops of torch exports' mask and position subgraphs.

Float32 elementwise ops with static shapes never reach these rules: lower.lower_module
gives them to the fused float loops first.  Everything here needs static shapes (the
executable specializes on input shapes) and dtypes kernels_typed.LLVM_DTYPES knows; any
other case returns a reason and the op runs on the numpy reference.

Imported at the end of lower.py: the ``rule`` decorator registers into lower.RULES.
"""
from __future__ import annotations

import numpy as np

from ...ir.ops.tensor import _shape_bounds
from ...ir.types import TensorType
from . import kernels_typed as KT
from .lower import const_of, rule, static_shape


def _typed(op, n_operands: int | None = None):
    """(operand shapes, operand dtype names, result shape, result dtype name), or a reason."""
    if len(op.results) != 1:
        return "more than one result"
    vals = list(op.operands) + [op.results[0]]
    if n_operands is not None and len(op.operands) != n_operands:
        return f"{len(op.operands)} operands (native form takes {n_operands})"
    for v in vals:
        if v is None:
            return "missing operand"
        if not isinstance(v.type, TensorType):
            return f"not a tensor: {v.type}"
        if v.type.dtype.name not in KT.LLVM_DTYPES:
            return f"dtype {v.type.dtype.name} has no typed kernel"
        if static_shape(v.type) is None:
            return "shape not static"
    shapes = [static_shape(v.type) for v in op.operands]
    out = static_shape(op.results[0].type)
    for s in shapes:
        if len(s) > len(out) or any(a != 1 and a != b for a, b in zip(s[::-1], out[::-1])):
            return f"operand shape {s} does not broadcast to the result's {out}"
    return shapes, [v.type.dtype.name for v in op.operands], out, op.results[0].type.dtype.name


def _ew(op, kind: str, n_operands: int | None, attrs=()):
    got = _typed(op, n_operands)
    if isinstance(got, str):
        return got
    shapes, dts, out, odt = got
    kern = KT.TypedElementwise(op=kind, out_shape=out, in_shapes=tuple(shapes),
                               in_dtypes=tuple(dts), out_dtype=odt, attrs=tuple(attrs))
    return kern, list(op.operands)


@rule(*KT.COMPARE)
def lower_compare(op):
    return _ew(op, op.name, 2)


@rule("and", "or", "xor")
def lower_logic(op):
    return _ew(op, op.name, 2)


@rule("not")
def lower_not(op):
    return _ew(op, "not", 1)


@rule("where")
def lower_where(op):
    return _ew(op, "where", 3)


@rule("cast")
def lower_cast(op):
    return _ew(op, "cast", 1)


@rule("add", "sub", "mul", "div")
def lower_arith(op):
    return _ew(op, op.name, 2)


@rule("mod")
def lower_mod(op):
    fmod = int(op.attr("fmod") or 0)
    x = op.operands[0]
    if isinstance(x.type, TensorType) and x.type.dtype.is_float and not fmod:
        return "float mod with fmod=0"
    return _ew(op, "mod", 2, (("fmod", fmod),))


@rule("max", "min")
def lower_minmax(op):
    if len(op.operands) == 1:
        return _ew(op, "cast", 1)   # one operand: a copy
    return _ew(op, op.name, 2)


@rule("neg", "abs", "sign", "round")
def lower_unary(op):
    x = op.operands[0]
    if op.name == "round" and isinstance(x.type, TensorType) and not x.type.dtype.is_float:
        return "integer round (the reference rounds through float64)"
    return _ew(op, op.name, 1)


@rule("elu")
def lower_elu(op):
    alpha = op.attr("alpha")
    return _ew(op, "elu", 1, (("alpha", 1.0 if alpha is None else float(alpha)),))


#: pow by these constant exponents is a multiply or a square root
POW_SPECIAL = {2.0: "pow2", 3.0: "pow3", 0.5: "sqrt"}


@rule("pow")
def lower_pow(op):
    x, e = op.operands[0], op.operands[1]
    c = const_of(e)
    if c is None or np.asarray(c).size != 1:
        return "exponent not a constant scalar"
    kind = POW_SPECIAL.get(float(np.asarray(c).reshape(-1)[0]))
    if kind is None:
        return f"exponent {float(np.asarray(c).reshape(-1)[0])} (native: 2, 3, 0.5)"
    if not isinstance(x.type, TensorType) or not x.type.dtype.is_float:
        return "integer pow"
    if static_shape(op.results[0].type) != static_shape(x.type):
        return "the exponent broadcasts the result"
    got = _typed(op)
    if isinstance(got, str):
        return got
    shapes, dts, out, odt = got
    return KT.TypedElementwise(op=kind, out_shape=out, in_shapes=(shapes[0],),
                               in_dtypes=(dts[0],), out_dtype=odt), [x]


@rule("range")
def lower_range(op):
    got = _typed(op, 3)
    if isinstance(got, str):
        return got
    shapes, dts, out, odt = got
    if any(s not in ((), (1,)) for s in shapes) or len(set(dts)) != 1 or dts[0] == "bool":
        return "start/limit/delta must be scalars of one numeric dtype"
    return KT.Range(n=out[0], dtype=odt), list(op.operands)


@rule("shape", "size")
def lower_shape(op):
    x, y = op.operands[0], op.results[0]
    xs, ys = static_shape(x.type), static_shape(y.type)
    if xs is None or ys is None:
        return "shape not static"
    if op.name == "size":
        return KT.ConstFill(values=(int(np.prod(xs, dtype=np.int64)),), name="size"), []
    s, e = _shape_bounds(op, len(xs))
    vals = tuple(int(d) for d in xs[s:e])
    if (len(vals),) != ys:
        return "result length disagrees with the input's shape"
    return KT.ConstFill(values=vals), []


@rule("gather_elements")
def lower_gather_elements(op):
    x, idx, y = op.operands[0], op.operands[1], op.results[0]
    xs, ids, ys = static_shape(x.type), static_shape(idx.type), static_shape(y.type)
    if xs is None or ids is None or ys is None:
        return "shape not static"
    item = x.type.dtype.numpy.itemsize
    if x.type.dtype.numpy.hasobject or item not in (1, 2, 4, 8) or y.type.dtype != x.type.dtype:
        return f"dtype {x.type.dtype.name}"
    if idx.type.dtype.name not in ("int32", "int64"):
        return "indices must be int32 or int64"
    if ids != ys or len(xs) != len(ids) or not xs:
        return "indices and result shapes disagree"
    ax = int(op.attr("axis") or 0)
    ax = ax + len(xs) if ax < 0 else ax
    if not 0 <= ax < len(xs) or any(i != d for a, (i, d) in enumerate(zip(ids, xs)) if a != ax):
        # (ONNX allows smaller index dims; the reference's np.take_along_axis broadcasts them)
        return "indices and data differ off the gather axis"
    if xs[ax] == 0 and np.prod(ids):
        return "gather from an empty axis"
    return KT.GatherElements(out_shape=ys, x_shape=xs, axis=ax, itemsize=item,
                             index_bytes=idx.type.dtype.numpy.itemsize), [x, idx]


@rule("argmax", "argmin")
def lower_arg(op):
    x, y = op.operands[0], op.results[0]
    xs, ys = static_shape(x.type), static_shape(y.type)
    if xs is None or ys is None or not xs:
        return "shape not static"
    if x.type.dtype.name not in KT.LLVM_DTYPES or x.type.dtype.name == "bool":
        return f"dtype {x.type.dtype.name}"
    ax = int(op.attr("axis") or 0)
    ax = ax + len(xs) if ax < 0 else ax
    if not 0 <= ax < len(xs) or xs[ax] == 0:
        return "empty or invalid axis"
    outer, inner = int(np.prod(xs[:ax], dtype=np.int64)), int(np.prod(xs[ax + 1:], dtype=np.int64))
    if int(np.prod(ys, dtype=np.int64)) != outer * inner:
        return "result shape disagrees"
    return KT.ArgReduce(outer=outer, D=xs[ax], inner=inner, dtype=x.type.dtype.name,
                        largest=op.name == "argmax",
                        last=bool(op.attr("select_last_index"))), [x]


@rule("cumsum", "cumprod")
def lower_scan(op):
    """Any typed dtype but bool, with a constant axis (the numpy reference's order of
    additions, so float results agree bit for bit)."""
    x, y = op.operands[0], op.results[0]
    xs, ys = static_shape(x.type), static_shape(y.type)
    if xs is None or ys != xs:
        return "shape not static"
    dt = x.type.dtype.name
    if dt not in KT.LLVM_DTYPES or dt == "bool" or y.type.dtype.name != dt:
        return f"dtype {dt}"
    axis = const_of(op.operands[1])
    if axis is None or np.asarray(axis).size != 1:
        return "axis is not a constant scalar"
    if not xs:
        return "scalar input"
    ax = int(np.asarray(axis).reshape(-1)[0])
    ax = ax + len(xs) if ax < 0 else ax
    if not 0 <= ax < len(xs):
        return "invalid axis"
    outer, inner = int(np.prod(xs[:ax], dtype=np.int64)), int(np.prod(xs[ax + 1:], dtype=np.int64))
    return KT.Scan(outer=outer, D=xs[ax], inner=inner, dtype=dt,
                   op="add" if op.name == "cumsum" else "mul",
                   exclusive=bool(op.attr("exclusive")), reverse=bool(op.attr("reverse"))), [x]
