"""The cpu backend's declared rules (``CpuBackend.passes``), built from shared patterns.

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

What it does not claim it decomposes (``Capabilities.decomposes``) with these rules, after
the generic passes, so it still runs natively piece by piece (rather than as one numpy
fallback op):

* ``sdpa``: matmul, scale, mask add, softmax, matmul (sgemm and the softmax kernel),
* ``fused_elementwise`` with an op, dtype or constant the native loop cannot do,
* ``batch_norm`` with constant statistics: a per-channel multiply-add (it fuses with the
  elementwise ops around it; the cpu has no batch_norm kernel).
"""
from __future__ import annotations

import numpy as np

from ...ir.types import TensorType
from ...passes.decompose import Decompose
from ...passes.rewrite import RewritePattern, Rewriter, const_array

#: the composite ops the rules below turn into ops the cpu runs
DECOMPOSES = frozenset({"sdpa", "fused_elementwise", "batch_norm"})


def _region_not_native(op) -> bool:
    from .lower import _region_expr
    return _region_expr(op) is None


class BatchNormAffine(RewritePattern):
    """batch_norm(x, constant scale, bias, mean, var) -> x * a + c (per channel, float32)."""

    name = "cpu-batchnorm-affine"
    root = "batch_norm"

    def match_and_rewrite(self, op, rewriter: Rewriter) -> bool:
        if len(op.results) != 1 or op.attrs.get("layout", "NCHW") != "NCHW":
            return False
        params = [const_array(v) for v in op.operands[1:5]]
        x = op.operands[0]
        if any(p is None for p in params) or not isinstance(x.type, TensorType) \
                or x.type.shape is None or x.type.dtype.numpy != np.float32 or len(x.type.shape) < 2:
            return False
        scale, bias, mean, var = [np.asarray(p, np.float64) for p in params]
        a = scale / np.sqrt(var + float(op.attr("epsilon") or 1e-5))
        c = bias - mean * a
        shape = (-1,) + (1,) * (len(x.type.shape) - 2)
        b = rewriter.builder(before=op)
        y = b.add(b.mul(x, rewriter.constant(a.astype(np.float32).reshape(shape))),
                  rewriter.constant(c.astype(np.float32).reshape(shape)))
        rewriter.replace_op(op, [y])
        return True

    def explain(self, op) -> str:
        return "a batch_norm with constant statistics becomes a per-channel multiply-add"


def batch_norm_patterns() -> list:
    return [BatchNormAffine()]


def cpu_patterns() -> list:
    return [Decompose("sdpa", "cpu-decompose-sdpa"),
            Decompose("fused_elementwise", "cpu-decompose-elementwise", _region_not_native)]
