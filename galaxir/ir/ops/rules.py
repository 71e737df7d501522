"""Shared type-inference helpers: broadcasting with symbolic dims, constant operands, and
small rule builders op definitions reuse."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...errors import ShapeInferenceError
from ..opdef import describe
from ..types import UNKNOWN, AnyType, Dim, DType, TensorType, Type

if TYPE_CHECKING:
    from ..core import Operation


def fail(op: "Operation", msg: str) -> ShapeInferenceError:
    return ShapeInferenceError(f"{describe(op)}: {msg}")


def tensor_operand(op: "Operation", i: int) -> TensorType:
    v = op.operand(i)
    if v is None:
        raise fail(op, f"operand {i} is missing")
    if not isinstance(v.type, TensorType):
        raise fail(op, f"operand {i} must be a tensor, got {v.type}")
    return v.type


def const_value(op: "Operation", i: int) -> np.ndarray | None:
    """The value of operand ``i`` when a ``constant`` op produces it, else None."""
    v = op.operand(i)
    return None if v is None else v.constant_value()


def broadcast_dims(a: Dim, b: Dim) -> Dim:
    if a == 1:
        return b
    if b == 1:
        return a
    if a == b:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise ValueError(f"dims {a} and {b} do not broadcast")
    if a == UNKNOWN:
        return b if isinstance(b, int) else UNKNOWN
    if b == UNKNOWN:
        return a if isinstance(a, int) else UNKNOWN
    if isinstance(a, int):  # symbol b must equal a (or be 1 at run time)
        return a
    if isinstance(b, int):
        return b
    return UNKNOWN  # two different symbols


def broadcast_shapes(*shapes: Sequence[Dim] | None) -> tuple[Dim, ...] | None:
    """Numpy-style multidirectional broadcast; None (unknown rank) is contagious."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = [1] * (rank - len(s)) + list(s)
        out = [broadcast_dims(x, y) for x, y in zip(out, padded)]
    return tuple(out)


def broadcast_types(op: "Operation", idxs: Sequence[int] | None = None,
                    dtype: DType | None = None) -> TensorType:
    idxs = range(len(op.operands)) if idxs is None else idxs
    types = [tensor_operand(op, i) for i in idxs]
    try:
        shape = broadcast_shapes(*[t.shape for t in types])
    except ValueError as e:
        raise fail(op, f"operand shapes {', '.join(str(t) for t in types)} do not broadcast: {e}") from None
    return TensorType(dtype or types[0].dtype, shape)


def normalize_axis(op: "Operation", axis: int, rank: int | None) -> int:
    if rank is None:
        return axis
    if not -rank <= axis < max(rank, 1):
        raise fail(op, f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    if a == 0 or b == 0:
        return 0
    return UNKNOWN


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    return UNKNOWN


def same_as(i: int = 0):
    """Rule: one result of the same type as operand ``i``."""
    def rule(op: "Operation") -> list[Type]:
        return [tensor_operand(op, i)]
    return rule


def same_shape_dtype(dtype: DType):
    """Rule: one result shaped like operand 0 with a fixed dtype (e.g. bool for isnan)."""
    def rule(op: "Operation") -> list[Type]:
        return [tensor_operand(op, 0).with_dtype(dtype)]
    return rule


def broadcast_rule(dtype: DType | None = None):
    """Rule: one result, the broadcast of all operands (dtype of operand 0 unless given)."""
    def rule(op: "Operation") -> list[Type]:
        return [broadcast_types(op, dtype=dtype)]
    return rule


def unknown_shape(dtype_from: int | DType = 0, rank: int | None = None):
    """Rule for data-dependent shapes: dtype known, dims unknown."""
    def rule(op: "Operation") -> list[Type]:
        dt = dtype_from if isinstance(dtype_from, DType) else tensor_operand(op, dtype_from).dtype
        return [TensorType(dt, None if rank is None else (UNKNOWN,) * rank)]
    return rule


def any_results(op: "Operation") -> list[Type]:
    return [AnyType() for _ in op.results]


def shape_from_const(op: "Operation", i: int) -> tuple[Dim, ...] | None:
    """A shape given by constant operand ``i`` (1-D int64), else None."""
    c = const_value(op, i)
    if c is None:
        return None
    return tuple(int(x) for x in np.asarray(c).reshape(-1))
