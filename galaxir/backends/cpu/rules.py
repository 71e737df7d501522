"""The cpu backend's extended rules at O2 (``CpuBackend.patterns(2)``).

The generic O2 fusions (galaxir/passes/fusion) produce fused ops.  The cpu backend claims:

* ``fused_conv`` (bias, residual z, every activation of galaxir/ir/ops/fused.py: the packed
  GEMM applies it to the register tile before the store),
* ``linear`` and ``fused_gemm`` (sgemm or the small-batch dot-product kernel, activation in
  the epilogue),
* ``fused_add`` (the residual add and its activation, fused with neighbouring elementwise
  ops into one loop),
* ``fused_elementwise`` whose region holds only ops its elementwise loop implements (the
  region body is lowered into the fused loop),
* the composites ``layer_norm``, ``lstm``, ``gru`` and ``attention`` as they are (no rule
  here: lower_seq.py lowers them to the kernels of kernels_seq.py).

What it does not claim is decomposed back into core ops by these rules, so it still runs
natively piece by piece (rather than as one numpy fallback op):

* ``sdpa``: matmul, scale, mask add, softmax, matmul (sgemm and the softmax kernel),
* ``fused_elementwise`` with an op, dtype or constant the native loop cannot do.
"""
from __future__ import annotations

from ...passes.rewrite import RewritePattern, Rewriter


class Decompose(RewritePattern):
    """Replace ``op`` by its OpDef decomposition when ``when(op)`` holds."""

    def __init__(self, op_name: str, name: str, when=None):
        self.root = op_name
        self.name = name
        self.when = when

    def match_and_rewrite(self, op, rewriter: Rewriter) -> bool:
        od = op.opdef
        if od is None or od.decompose is None:
            return False
        if self.when is not None and not self.when(op):
            return False
        b = rewriter.builder(before=op)
        outs = od.decompose(b, op)
        rewriter.replace_op(op, list(outs))
        return True

    def explain(self, op) -> str:
        return f"decomposes {self.root} when the cpu backend has no native kernel for it"


def _region_not_native(op) -> bool:
    from .lower import _region_expr
    return _region_expr(op) is None


def cpu_patterns() -> list:
    return [Decompose("sdpa", "cpu-decompose-sdpa"),
            Decompose("fused_elementwise", "cpu-decompose-elementwise", _region_not_native)]
