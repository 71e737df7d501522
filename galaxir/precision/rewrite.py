"""Small IR edits the quantizers share: constants, ops inserted before an op or after a
value's definition, and redirecting a value's users."""
from __future__ import annotations

import numpy as np

from ..ir import Operation, Value
from ..ir.builder import create_op


class Inserter:
    """Creates ops in the top-level block of a module, before ``anchor``."""

    def __init__(self, block, anchor: Operation):
        self.block, self.anchor = block, anchor

    def op(self, name: str, *operands, num_results=None, **attrs):
        op = create_op(name, operands, attrs, num_results=num_results)
        self.block.insert_before(self.anchor, op)
        return op.results[0] if len(op.results) == 1 else tuple(op.results)

    def const(self, arr: np.ndarray) -> Value:
        return self.op("constant", value=np.array(arr, order="C"))


def after(block, v: Value) -> Inserter:
    """An inserter that places ops right after ``v`` is defined (the block's start for an
    input)."""
    p = v.producer
    ops = list(block)
    if p is None:
        return Inserter(block, ops[0])
    nxt = ops[ops.index(p) + 1]
    return Inserter(block, nxt)


def redirect(v: Value, new: Value, skip: Operation | None = None, keep_outputs: bool = True) -> None:
    """Every use of ``v`` reads ``new`` instead, except ``skip`` and (by default) the
    graph's outputs."""
    for op, i in list(v.uses):
        if op is skip or (keep_outputs and op.is_terminator):
            continue
        op.set_operand(i, new)


def drop_dead(module, kinds=("constant", "cast")) -> None:
    """Ops of ``kinds`` left without users (the float weights a quantized copy replaced)."""
    block = module.graph.block
    changed = True
    while changed:
        changed = False
        for op in reversed(list(block)):
            if op.name in kinds and not any(r.uses for r in op.results):
                op.erase()
                changed = True
