"""Converters for MatMul, Gemm, Einsum and Det."""
from __future__ import annotations

from ..importer import converter, simple

simple("MatMul", "matmul")
simple("Einsum", "einsum")
simple("Det", "det")


@converter("Gemm")
def gemm(ctx):
    """Gemm-1..6's ``broadcast`` flag is dropped: c always broadcasts unidirectionally now."""
    kw = {}
    for key, default in (("alpha", 1.0), ("beta", 1.0), ("transA", 0), ("transB", 0)):
        v = ctx.attr(key, default)
        if v != default:
            kw[key] = float(v) if isinstance(default, float) else int(v)
    operands = list(ctx.inputs[:3])
    while operands and operands[-1] is None:
        operands.pop()
    return [ctx.op("gemm", *operands, **kw)]
