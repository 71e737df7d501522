"""Unroll a ``loop`` whose trip count is a constant and whose body never stops it early.

A backend that compiles straight-line code (the cpu backend's native segments) cannot run
a loop op natively: the whole loop, body included, would go to the numpy reference, one
Python-level op per body op per iteration.  Once unrolled, the body's ops are ordinary ops
of the enclosing block (the iteration number becomes a constant per copy, which often
folds further), so the model stays one native segment.  A size bound keeps a long loop a
loop: unrolling stops at ``unroll_max_ops`` new ops (a ``PassContext`` option).
"""
from __future__ import annotations

import numpy as np

from ...ir.builder import create_op
from ...ir.clone import clone_op
from ...ir.core import Operation, Value
from ...ir.types import TensorType, types_compatible
from ..rewrite import RewritePattern, Rewriter, const_array

DEFAULT_MAX_OPS = 512


def _is_true(v: Value | None) -> bool:
    arr = const_array(v)
    return arr is not None and arr.size >= 1 and bool(np.asarray(arr).reshape(-1)[0])


def _through_identities(v: Value | None) -> Value | None:
    while v is not None and v.producer is not None and v.producer.name == "identity":
        v = v.producer.operand(0)
    return v


def _static_trip(op: Operation) -> int | None:
    """The number of iterations when it is known now (constant trip count and condition),
    else None."""
    trip = const_array(op.operand(0))
    if trip is None or trip.size != 1 or trip.dtype.kind not in "iu":
        return None
    n = max(int(np.asarray(trip).reshape(-1)[0]), 0)
    cond = op.operand(1)
    if cond is not None:
        c = const_array(cond)
        if c is None or c.size < 1:
            return None
        if not bool(np.asarray(c).reshape(-1)[0]):
            return 0
    return n


def _empty_stack(t) -> np.ndarray | None:
    """The value of a scan output after zero iterations, when its type says enough."""
    if not isinstance(t, TensorType) or t.shape is None or \
            not all(isinstance(d, int) for d in t.shape[1:]):
        return None
    return np.zeros((0,) + tuple(t.shape[1:]), t.dtype.numpy)


class UnrollConstantLoop(RewritePattern):
    """loop(constant trip, constant true cond) whose body returns its condition unchanged
    -> the body's ops, once per iteration, with scan outputs stacked by unsqueeze+concat."""

    name = "unroll-constant-loop"
    root = "loop"

    def __init__(self, max_ops: int = DEFAULT_MAX_OPS):
        self.max_ops = max_ops

    def match_and_rewrite(self, op: Operation, rw: Rewriter) -> bool:
        trip = _static_trip(op)
        if trip is None or len(op.regions) != 1:
            return False
        body = op.regions[0].block
        n_carried = len(op.operands) - 2
        results = list(body.results)
        if len(body.args) != n_carried + 2 or len(results) < 1 + n_carried or \
                any(v is None for v in results) or any(v is None for v in op.operands[2:]):
            return False
        cond_out = _through_identities(results[0])
        if trip > 0 and cond_out is not body.args[1] and not _is_true(cond_out):
            return False  # the body may stop the loop early: not static
        n_body = sum(1 for inner in body.walk() if not inner.is_terminator)
        if trip * n_body > self.max_ops:
            return False
        scan_types = [r.type for r in op.results[n_carried:]]
        if any(not isinstance(t, TensorType) for t in scan_types):
            return False
        empties = [_empty_stack(t) for t in scan_types] if trip == 0 else []
        if any(e is None for e in empties):
            return False
        new_ops: list[Operation] = []  # built detached: nothing changes unless all fits

        def add(o: Operation) -> Operation:
            new_ops.append(o)
            return o

        def const(arr) -> Value:
            return add(create_op("constant", attrs={"value": np.asarray(arr)})).results[0]

        carried = list(op.operands[2:])
        scans: list[list[Value]] = [[] for _ in scan_types]
        true = const(np.array(True)) if trip else None
        for i in range(trip):
            mapping = {id(body.args[0]): const(np.array(i, np.int64)), id(body.args[1]): true}
            for a, v in zip(body.args[2:], carried):
                mapping[id(a)] = v
            for inner in body:
                if not inner.is_terminator:
                    _reinfer(add(clone_op(inner, mapping)))
            outs = [mapping.get(id(v), v) for v in results]
            carried = outs[1:1 + n_carried]
            for k, v in enumerate(outs[1 + n_carried:]):
                scans[k].append(v)
        values: list[Value] = list(carried)
        if trip == 0:
            values += [const(e) for e in empties]
        else:
            axes = const(np.array([0], np.int64))
            for items in scans:
                rows = [add(create_op("unsqueeze", [v, axes])).results[0] for v in items]
                values.append(rows[0] if len(rows) == 1 else
                              add(create_op("concat", rows, {"axis": 0})).results[0])
        for old, new in zip(op.results, values):
            if not (types_compatible(old.type, new.type) or types_compatible(new.type, old.type)):
                return False
        b = rw.builder(before=op)
        for o in new_ops:
            b.insert(o)
        rw.replace_op(op, values)
        return True


def _reinfer(op: Operation) -> None:
    """Give a copied body op the types its (now known) operands imply: the body's own
    types are relaxed for every iteration (loop-carried dims unknown)."""
    od = op.opdef
    if od is None or op.regions:
        return
    try:
        types = od.infer_types(op)
    except Exception:
        return
    if types is not None and len(types) == len(op.results):
        for r, t in zip(op.results, types):
            r.type = t
