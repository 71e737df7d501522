"""The O1 basic passes: constant and shape folding (symbolic shape targets included), no-op removal, algebraic
simplification, constant-condition If inlining (all pattern sets for the greedy driver),
common subexpression elimination and dead code elimination."""
from __future__ import annotations

from ..greedy import PatternPass
from ..manager import PassContext
from .cse import CSE, cse
from .dce import DCE, dce
from .fold import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_GROWTH, SHAPE_PATTERNS, FoldConstant, fold_patterns
from .refine import RefineTypes
from .symbolic import SYMBOLIC_PATTERNS
from .simplify import ALGEBRA_PATTERNS, CONTROL_PATTERNS, NOOP_PATTERNS, InlineConstantIf
from .unroll import DEFAULT_MAX_OPS, UnrollConstantLoop


def _fold(ctx: PassContext):
    return fold_patterns(ctx.option("fold_max_elements", DEFAULT_MAX_ELEMENTS),
                         ctx.option("fold_max_growth", DEFAULT_MAX_GROWTH))


def _unroll(ctx: PassContext) -> list:
    return [UnrollConstantLoop(ctx.option("unroll_max_ops", DEFAULT_MAX_OPS))]


def canonicalize_patterns(ctx: PassContext | None = None) -> list:
    """Every O1 rewrite pattern, as one set (they feed each other: a folded shape makes a
    reshape a no-op, a removed no-op exposes a cast pair...)."""
    ctx = ctx or PassContext()
    return [*_fold(ctx), *SHAPE_PATTERNS, *SYMBOLIC_PATTERNS, RefineTypes(), *NOOP_PATTERNS, *ALGEBRA_PATTERNS,
            *CONTROL_PATTERNS, *_unroll(ctx)]


def Canonicalize() -> PatternPass:
    return PatternPass("canonicalize", canonicalize_patterns)


def ConstantFold() -> PatternPass:
    return PatternPass("fold-constants", _fold)


def ShapeFold() -> PatternPass:
    return PatternPass("fold-shapes", lambda ctx: [*_fold(ctx), *SHAPE_PATTERNS, *SYMBOLIC_PATTERNS,
                                                RefineTypes()])


def RemoveNoOps() -> PatternPass:
    return PatternPass("remove-noops", NOOP_PATTERNS)


def AlgebraicSimplify() -> PatternPass:
    return PatternPass("simplify-algebra", ALGEBRA_PATTERNS)


def InlineIf() -> PatternPass:
    return PatternPass("inline-constant-if", CONTROL_PATTERNS)


def UnrollLoops() -> PatternPass:
    """Loops with a constant trip count (and a body that never stops early) unrolled, up
    to ``unroll_max_ops`` new ops per loop."""
    return PatternPass("unroll-loops", _unroll)


__all__ = ["CSE", "DCE", "cse", "dce", "Canonicalize", "ConstantFold", "ShapeFold",
           "RemoveNoOps", "AlgebraicSimplify", "InlineIf", "canonicalize_patterns",
           "FoldConstant", "InlineConstantIf", "RefineTypes", "UnrollLoops",
           "UnrollConstantLoop"]
