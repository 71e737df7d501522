"""Passes: the PassManager (with instrumentation), the rewrite-pattern engine and its
greedy driver, bisection, optimization levels, and the O1 basic passes.

    import galaxir as gx
    from galaxir.passes import optimize, PassManager, P, Var, Const, pattern

See docs/passes.md for a tutorial that writes a pattern and a pass from scratch.
"""
from .basic import (CSE, DCE, AlgebraicSimplify, Canonicalize, ConstantFold, FoldConstant,
                    InlineIf, RemoveNoOps, ShapeFold, canonicalize_patterns, cse, dce)
from .bisect import BisectResult, bisect, compare_outputs, random_inputs
from .greedy import PatternPass
from .manager import (DumpStages, FunctionPass, Instrument, Pass, PassContext, PassManager,
                      PassRecord, PrintIR, VerifyEach, function_pass)
from .pipeline import (AFTER, BEFORE_FUSION, LEVEL_PASSES, PASS_REGISTRY, Placed, instead_of,
                       make_pass, optimize, parse_pipeline, pipeline_for, register_level_pass,
                       register_pass)
from .rewrite import (Absent, Const, DeclarativePattern, Match, OpPat, P,
                      Pattern, PatternSet, RewritePattern, Rewriter, RewriteStats, Var,
                      apply_patterns_greedily, const_array, explain, is_pure, pattern,
                      splat_value)

__all__ = [
    "optimize", "PassManager", "Pass", "PassContext", "PassRecord", "FunctionPass",
    "function_pass", "Instrument", "PrintIR", "DumpStages", "VerifyEach", "PatternPass",
    "RewritePattern", "DeclarativePattern", "Pattern", "OpPat", "P", "Var", "Const", "Absent",
    "Match", "Rewriter", "PatternSet", "RewriteStats", "pattern", "explain",
    "apply_patterns_greedily", "const_array", "splat_value", "is_pure",
    "bisect", "BisectResult", "random_inputs", "compare_outputs", "pipeline_for",
    "parse_pipeline", "make_pass", "register_pass", "register_level_pass", "PASS_REGISTRY",
    "LEVEL_PASSES", "Canonicalize", "ConstantFold", "ShapeFold", "RemoveNoOps",
    "AlgebraicSimplify", "InlineIf", "CSE", "DCE", "FoldConstant", "canonicalize_patterns",
    "cse", "dce", "Placed", "BEFORE_FUSION", "AFTER", "instead_of",
]

from . import fusion  # noqa: E402,F401  (registers the O2 fusion passes for level 2)
from . import layout, memory  # noqa: E402,F401  (registers the O3 layout and memory passes)
from . import qdq  # noqa: E402,F401  (registers the QDQ -> int8 op recognition, first at O1)
from . import qdq_dynamic  # noqa: E402,F401  (dynamic quantization's matmul chain, first at O2)
