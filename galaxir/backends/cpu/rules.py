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


class EinsumAsMatmul(RewritePattern):
    """A two-operand einsum that is a (batched) matrix product -> transpose, reshape,
    matmul, reshape, transpose (each left out where it is the identity), so that it runs on
    the GEMM kernels (MaxViT's attention: ``bghid,bghjd->bghij``; bilinear and
    contraction layers).  Letters are sorted into batch (both inputs and the output),
    contracted (both inputs only) and free (one input and the output); any other form
    (a repeated letter, an ellipsis, a letter summed out of one input, broadcasting, a
    non-static shape) stays an einsum."""

    name = "cpu-einsum-matmul"
    root = "einsum"

    def match_and_rewrite(self, op, rewriter: Rewriter) -> bool:
        plan = self._plan(op)
        if plan is None:
            return False
        (ta, tb, out), sizes = plan
        batch = [c for c in out if c in ta and c in tb]
        fa = [c for c in out if c in ta and c not in tb]
        fb = [c for c in out if c in tb and c not in ta]
        con = [c for c in ta if c in tb and c not in out]
        b = rewriter.builder(before=op)

        def arrange(x, term, order, shape):
            perm = [term.index(c) for c in order]
            if perm != list(range(len(term))):
                x = b.transpose(x, perm=perm)
            if [sizes[c] for c in order] != list(shape):
                x = b.reshape(x, b.constant(np.asarray(shape, np.int64)))
            return x

        def n(letters):
            return int(np.prod([sizes[c] for c in letters], dtype=np.int64))

        bs = [sizes[c] for c in batch]
        a = arrange(op.operands[0], ta, batch + fa + con, bs + [n(fa), n(con)])
        c = arrange(op.operands[1], tb, batch + con + fb, bs + [n(con), n(fb)])
        y = b.matmul(a, c)
        order = batch + fa + fb
        if [n([ch]) for ch in order] != bs + [n(fa), n(fb)]:
            y = b.reshape(y, b.constant(np.asarray([sizes[ch] for ch in order], np.int64)))
        perm = [order.index(ch) for ch in out]
        if perm != list(range(len(out))):
            y = b.transpose(y, perm=perm)
        rewriter.replace_op(op, [y])
        return True

    @staticmethod
    def _plan(op):
        from ...ir.ops.linalg import parse_einsum
        if len(op.operands) != 2 or len(op.results) != 1:
            return None
        types = [v.type for v in op.operands]
        if not all(isinstance(t, TensorType) and t.shape is not None
                   and all(isinstance(d, int) for d in t.shape) for t in types):
            return None
        if types[0].dtype != types[1].dtype or types[0].dtype.numpy != np.float32:
            return None
        try:
            (ta, tb), out, _ = parse_einsum(op.attr("equation"), [t.rank for t in types])
        except ValueError:
            return None
        if any("." in t or len(set(t)) != len(t) for t in (ta, tb, out)):
            return None
        if any(c not in out and c not in (tb if t is ta else ta) for t in (ta, tb) for c in t):
            return None  # a letter summed out of one input alone
        sizes: dict[str, int] = {}
        for term, t in ((ta, types[0]), (tb, types[1])):
            for c, d in zip(term, t.shape):
                if sizes.setdefault(c, d) != d:
                    return None  # broadcasting a size-1 dim: left to the reference
        return (ta, tb, out), sizes

    def explain(self, op) -> str:
        return "a two-operand einsum that is a batched matrix product -> matmul"


def einsum_patterns() -> list:
    return [EinsumAsMatmul()]


def batch_norm_patterns() -> list:
    return [BatchNormAffine()]


def cpu_patterns() -> list:
    """What the generic fusions made that the cpu does not run, back to ops it runs."""
    return [Decompose("sdpa", "cpu-decompose-sdpa"),
            Decompose("fused_elementwise", "cpu-decompose-elementwise", _region_not_native),
            *batch_norm_patterns(), *einsum_patterns()]


def fusion_patterns() -> list:
    """The cpu's own elementwise fusion (after its decompositions)."""
    return [FuseNativeElementwise()]
