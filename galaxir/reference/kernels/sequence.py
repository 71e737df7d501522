"""Kernels for sequence ops (a sequence is a Python list of arrays) and optional ops
(an optional is None or its value)."""
from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ...ir.opdef import describe
from ...ir.types import SequenceType
from ..registry import kernel


def _position(ctx, pos, n: int, inserting: bool = False) -> int:
    p = int(np.asarray(pos).reshape(-1)[0])
    hi = n if inserting else n - 1
    if not -n <= p <= hi:
        raise ExecutionError(f"{describe(ctx.op)}: position {p} is out of range for a sequence "
                             f"of {n} tensors (allowed {-n}..{hi})")
    return p + n if p < 0 else p


@kernel("sequence_empty")
def sequence_empty(ctx):
    return []


@kernel("sequence_construct")
def sequence_construct(ctx, *tensors):
    return list(tensors)


@kernel("sequence_insert")
def sequence_insert(ctx, seq, tensor, position=None):
    out = list(seq)
    p = len(out) if position is None else _position(ctx, position, len(out), inserting=True)
    out.insert(p, tensor)
    return out


@kernel("sequence_erase")
def sequence_erase(ctx, seq, position=None):
    out = list(seq)
    if not out:
        raise ExecutionError(f"{describe(ctx.op)}: cannot erase from an empty sequence")
    p = len(out) - 1 if position is None else _position(ctx, position, len(out))
    del out[p]
    return out


@kernel("sequence_at")
def sequence_at(ctx, seq, position):
    return seq[_position(ctx, position, len(seq))]


@kernel("sequence_length")
def sequence_length(ctx, seq):
    return np.array(len(seq), dtype=np.int64)


@kernel("split_to_sequence")
def split_to_sequence(ctx, x, split=None):
    axis = ctx.attr("axis", 0)
    axis = axis + x.ndim if axis < 0 else axis
    n = x.shape[axis]
    if split is None:
        parts = np.split(x, n, axis=axis) if n else []
        if not ctx.attr("keepdims", 1):
            parts = [np.squeeze(p, axis=axis) for p in parts]
        return parts
    split = np.asarray(split)
    if split.ndim == 0:
        size = int(split)
        if size <= 0:
            raise ExecutionError(f"{describe(ctx.op)}: split size must be positive, got {size}")
        bounds = list(range(size, n, size))
    else:
        sizes = [int(s) for s in split.reshape(-1)]
        if sum(sizes) != n or any(s < 0 for s in sizes):
            raise ExecutionError(f"{describe(ctx.op)}: split sizes {sizes} do not add up to the "
                                 f"axis length {n}")
        bounds = list(np.cumsum(sizes)[:-1])
    return list(np.split(x, bounds, axis=axis))


@kernel("concat_from_sequence")
def concat_from_sequence(ctx, seq):
    axis = ctx.attr("axis")
    if not seq:
        raise ExecutionError(f"{describe(ctx.op)}: cannot concatenate an empty sequence")
    if ctx.attr("new_axis", 0):
        rank = seq[0].ndim + 1
        return np.stack(seq, axis=axis + rank if axis < 0 else axis)
    return np.concatenate(seq, axis=axis)


@kernel("sequence_map")
def sequence_map(ctx, *inputs):
    types = [v.type for v in ctx.op.operands]
    is_seq = [isinstance(t, SequenceType) or isinstance(x, list) for t, x in zip(types, inputs)]
    n = len(inputs[0])
    for x, s in zip(inputs, is_seq):
        if s and len(x) != n:
            raise ExecutionError(f"{describe(ctx.op)}: sequences of different lengths "
                                 f"({n} and {len(x)})")
    outs: list[list] = [[] for _ in ctx.op.results]
    for i in range(n):
        res = ctx.run_region(0, [x[i] if s else x for x, s in zip(inputs, is_seq)])
        for acc, r in zip(outs, res):
            acc.append(r)
    return tuple(outs)


@kernel("optional")
def optional(ctx, x=None):
    return x


@kernel("optional_get_element")
def optional_get_element(ctx, x):
    if x is None:
        raise ExecutionError(f"{describe(ctx.op)}: the optional is empty")
    return x


@kernel("optional_has_element")
def optional_has_element(ctx, x=None):
    return np.array(x is not None)
