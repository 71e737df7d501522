"""Symbolic shape folding: shape operands computed at run time from ``shape(x)`` become
constants written in terms of the operands' own (symbolic) dims.

Torch exports build every reshape target as ``concat(unsqueeze(gather(shape(x), 0)), ...)``;
shape inference already reads such chains as dims (ir/ops/tensor.value_of: symbols such
as ``batch``, products such as ``batch*seq``).  When every entry of a target is a number or
a dim the data operand already has, the target can be a constant: ONNX's reshape copies a
dim with 0 and infers one with -1, and expand keeps a dim it is given 1 for.  So
``reshape(x: f32[B,S,256], concat(shape(x)[0:2], [4, 64]))`` becomes
``reshape(x, [0, 0, 4, 64])`` with the static-rank result ``f32[B,S,4,64]``, and the shape
arithmetic behind it is left dead (DCE removes it): nothing runs on shapes at run time.

A rewrite is made only when the new operand gives the very type the op already has (the
result is re-inferred and compared), so a target that merely looks alike is never changed.
"""
from __future__ import annotations

import numpy as np

from ...errors import GalaxirError
from ...ir.core import Operation
from ...ir.ops.tensor import value_of
from ...ir.types import UNKNOWN, TensorType
from ..rewrite import RewritePattern, Rewriter


def _dims(op: Operation, i: int):
    """Operand ``i`` as a list of dims (ints, symbols, products), or None when it is a
    constant already, has an unknown entry, or is not a 1-D int64 tensor."""
    v = op.operand(i)
    if v is None or v.constant_value() is not None or not isinstance(v.type, TensorType):
        return None
    if v.type.dtype.name != "int64" or v.type.rank != 1:
        return None
    got = value_of(v)
    if got is None or any(d == UNKNOWN for d in got[0]):
        return None
    return list(got[0])


def _shape_target(op: Operation):
    """(dims of operand 1, shape of operand 0) for a reshape/expand whose target is computed
    from shapes and whose input has a known rank; None otherwise."""
    dims = _dims(op, 1)
    x = op.operand(0)
    if dims is None or not isinstance(x.type, TensorType) or x.type.shape is None:
        return None
    return dims, list(x.type.shape)


def _retarget(op: Operation, rw: Rewriter, i: int, spec: list[int]) -> bool:
    """Give ``op`` the constant ``spec`` as operand ``i`` when that infers the type it has."""
    old = op.operand(i)
    before = [r.type for r in op.results]
    c = rw.constant(np.asarray(spec, np.int64), before=op)
    op.set_operand(i, c)
    try:
        after = op.opdef.infer_types(op)
    except GalaxirError:
        after = None
    if after is None or list(after) != before:
        op.set_operand(i, old)
        rw.erase_op(c.producer)
        return False
    op.set_operand(i, old)
    rw.set_operand(op, i, c)
    return True


class SymbolicReshape(RewritePattern):
    """reshape(x, <dims computed from shapes>) -> reshape(x, [0 | n | -1, ...])"""

    name = "symbolic-reshape"
    root = "reshape"
    benefit = 2

    def match_and_rewrite(self, op: Operation, rw: Rewriter) -> bool:
        got = _shape_target(op)
        if got is None:
            return False
        dims, xshape = got
        allowzero = bool(op.attr("allowzero"))
        spec: list[int] = []
        inferred = None
        for j, d in enumerate(dims):
            if isinstance(d, int):
                if d == 0 and allowzero is False and j >= len(xshape):
                    return False
                spec.append(d)
            elif not allowzero and j < len(xshape) and xshape[j] == d:
                spec.append(0)          # copies x's dim j
            elif inferred is None and -1 not in dims:
                inferred = j
                spec.append(-1)         # the one dim left is inferred from the element count
            else:
                return False
        return _retarget(op, rw, 1, spec)


class SymbolicExpand(RewritePattern):
    """expand(x, <dims computed from shapes>) -> expand(x, [1 | n, ...]) where x has the dim"""

    name = "symbolic-expand"
    root = "expand"
    benefit = 2

    def match_and_rewrite(self, op: Operation, rw: Rewriter) -> bool:
        got = _shape_target(op)
        if got is None:
            return False
        dims, xs = got
        lead = len(dims) - len(xs)
        spec: list[int] = []
        for j, d in enumerate(dims):
            if isinstance(d, int):
                spec.append(d)
                continue
            k = j - lead
            if k < 0 or xs[k] != d:
                return False     # a symbolic size x does not have: stays a run-time value
            spec.append(1)       # x's own dim is kept
        return _retarget(op, rw, 1, spec)


class SymbolicConstantOfShape(RewritePattern):
    """constant_of_shape(<dims all numbers>) -> constant_of_shape([n, ...])"""

    name = "symbolic-constant-of-shape"
    root = ("constant_of_shape", "tile")
    benefit = 2

    def match_and_rewrite(self, op: Operation, rw: Rewriter) -> bool:
        i = 0 if op.name == "constant_of_shape" else 1
        dims = _dims(op, i)
        if dims is None or not all(isinstance(d, int) for d in dims):
            return False
        return _retarget(op, rw, i, dims)


SYMBOLIC_PATTERNS = [SymbolicReshape(), SymbolicExpand(), SymbolicConstantOfShape()]
