"""Dead code elimination: erase pure ops whose results nobody uses, nested regions too.

One backward sweep per block suffices: users come after their producers, so by the time
the sweep reaches an op, every op that could use it has already been erased or kept.
"""
from __future__ import annotations

from ...ir.core import Block, Module
from ..manager import Pass, PassContext
from ..rewrite import is_pure


def dce_block(block: Block) -> int:
    erased = 0
    op = block.last
    while op is not None:
        prev = op.prev
        for region in op.regions:
            erased += dce_block(region.block)
        if not op.is_terminator and not any(r.uses for r in op.results) and is_pure(op):
            op.erase()
            erased += 1
        op = prev
    return erased


class DCE(Pass):
    name = "dce"

    def run(self, module: Module, ctx: PassContext) -> bool:
        n = dce_block(module.graph.block)
        if n:
            ctx.stat("dead-ops", n)
        return bool(n)


def dce(module: Module) -> Module:
    """Erase the dead ops of ``module`` in place."""
    dce_block(module.graph.block)
    return module
