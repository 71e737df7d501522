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

Then ``cpu-fuse-elementwise`` (``FuseNativeElementwise``) groups what its elementwise loop
runs and the generic fusion left apart: the pieces of a decomposed region, a batch_norm's
multiply-add, a fused_add and the ops around it, neighbouring fused_elementwise ops, and
(at O0/O1, where no generic fusion runs) every chain.  Lowering turns each
fused_elementwise into one loop and fuses nothing itself.
"""
from __future__ import annotations

import numpy as np

from ...ir.types import TensorType
from ...passes.decompose import Decompose
from ...passes.fusion.elementwise import FuseElementwise
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


class FuseNativeElementwise(FuseElementwise):
    """Chains of the ops the cpu's elementwise loop runs (float32; lower.ELEMENTWISE,
    fused_add, and fused_elementwise whose region it runs) -> one fused_elementwise.  Only
    finite scalar constants go inside (the loop takes them as literals); a group is at most
    ``lower.MAX_EXPR_DEPTH`` ops, so its expression stays within what one kernel takes."""

    name = "cpu-fuse-elementwise"

    def __init__(self):
        from .lower import MAX_EXPR_DEPTH
        super().__init__(min_ops=2)
        self.max_ops = MAX_EXPR_DEPTH

    @property
    def root(self) -> tuple[str, ...]:
        from .lower import ELEMENTWISE
        return tuple(sorted(ELEMENTWISE | {"fused_add", "fused_elementwise"}))

    def fusible(self, op) -> bool:
        from .lower import native_elementwise
        return native_elementwise(op)

    def inline_const(self, v) -> bool:
        c = const_array(v)
        return c is not None and c.size == 1 and bool(np.isfinite(c).all()) \
            and isinstance(v.type, TensorType) and v.type.dtype.numpy == np.float32


def batch_norm_patterns() -> list:
    return [BatchNormAffine()]


def cpu_patterns() -> list:
    """What the generic fusions made that the cpu does not run, back to ops it runs."""
    return [Decompose("sdpa", "cpu-decompose-sdpa"),
            Decompose("fused_elementwise", "cpu-decompose-elementwise", _region_not_native),
            *batch_norm_patterns()]


def fusion_patterns() -> list:
    """The cpu's own elementwise fusion (after its decompositions)."""
    return [FuseNativeElementwise()]
