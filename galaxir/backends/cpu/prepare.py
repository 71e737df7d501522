"""What the cpu backend does to its own copy of a module before lowering, built from the
shared passes (no folding loops of its own): constant folding without the size limits of
``optimize`` (the weights stay in memory; model-zoo weights come from ConstantOfShape
nodes), then the cpu's own passes for a module the generic fusions have not seen
(``own_passes(1)``: conv + batch_norm folding, a batch_norm with constant statistics as a
per-channel multiply-add, activations into the conv / gemm / add producing them,
elementwise chains into one loop each) and dead-op removal.  The same passes run in the
pipeline (``CpuBackend.passes``), so after ``gx.compile(level>=1)`` these find nothing left
to do; at level 0 they are what makes a model run natively and lowering fuses nothing of
its own.  Shape specialization is the shared ``passes.memory.specialize_types``."""
from __future__ import annotations

from ...ir import Module
from ...ir.mapped import detach_constants

FOLD_LIMIT_BYTES = 1 << 31  # never fold a constant bigger than this (memory)


def own_passes(level: int) -> list:
    """The cpu backend's passes at ``level``, after the generic ones (``CpuBackend.passes``
    places them; ``prepare`` runs ``own_passes(1)`` at every level).

    O2+: the generic fusions ran; what they made that the cpu does not run is decomposed
    (``cpu-rules``), then ``cpu-fuse-elementwise`` groups what the loop runs.  O0/O1: no
    generic fusion ran; conv + batch_norm, the remaining batch_norms, the activation
    epilogues, then the elementwise chains.  Measured at O1 with each elementwise op in a
    loop of its own instead (one thread, interleaved runs): BERT-base 346 kernels instead
    of 285 and 1.05x slower, DenseNet-121 491 instead of 305 and 1.03-1.05x slower.  At
    O0 ``prepare`` is what runs them."""
    from ...passes import PatternPass
    from ...passes.fusion import FoldBatchNorm, FuseActivations
    from .rules import batch_norm_patterns, cpu_patterns, einsum_patterns, fusion_patterns
    if level >= 2:
        return [PatternPass("cpu-rules", cpu_patterns()),
                PatternPass("cpu-fuse-elementwise", fusion_patterns())]
    return [FoldBatchNorm(), PatternPass("cpu-batchnorm-affine", batch_norm_patterns()),
            PatternPass("cpu-einsum-matmul", einsum_patterns()),
            FuseActivations(), PatternPass("cpu-fuse-elementwise", fusion_patterns())]


def prepare_passes() -> list:
    from ...passes import DCE, ConstantFold
    return [ConstantFold(), *own_passes(1), DCE()]


def prepare(module: Module) -> Module:
    from ...passes import PassContext, PassManager
    m = module.clone()
    detach_constants(m)  # the executable owns its weights: none stay views of a mapped file
    ctx = PassContext(options={"fold_max_elements": FOLD_LIMIT_BYTES // 8,
                               "fold_max_growth": float("inf")})
    PassManager(prepare_passes(), context=ctx, count_ops=False).run(m)
    return m
