"""A Pass that applies a set of rewrite patterns with the greedy driver."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from ..ir.core import Module
from .manager import Pass, PassContext
from .rewrite import RewritePattern, apply_patterns_greedily

PatternSource = Sequence[RewritePattern] | Callable[[PassContext], Iterable[RewritePattern]]


class PatternPass(Pass):
    """Run ``patterns`` (a list, or ``fn(ctx) -> patterns`` for option-dependent ones) to a
    fixpoint over the whole module, nested regions included.  Rule application counts go
    into the pass statistics; ``ctx.disabled_rules`` switches rules off one by one."""

    uses_rewrites = True

    def __init__(self, name: str, patterns: PatternSource, erase_dead: bool = True):
        self.name = name
        self._patterns = patterns
        self.erase_dead = erase_dead

    def patterns(self, ctx: PassContext) -> list[RewritePattern]:
        src = self._patterns
        return list(src(ctx) if callable(src) else src)

    def run(self, module: Module, ctx: PassContext) -> bool:
        stats = apply_patterns_greedily(module, self.patterns(ctx), erase_dead=self.erase_dead,
                                        disabled=ctx.disabled_rules,
                                        max_rewrites=ctx.rewrite_budget, record=ctx.record,
                                        allows=ctx.allows if ctx.backend is not None else None)
        if ctx.rewrite_budget is not None:
            ctx.rewrite_budget = max(0, ctx.rewrite_budget - stats.total)
        ctx.stats.update(stats.rewrites)
        if stats.dead_erased:
            ctx.stat("erase-dead", stats.dead_erased)
        if ctx.record:
            ctx.log.extend((self.name,) + entry for entry in stats.log)
        return stats.changed
