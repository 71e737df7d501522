"""What the cpu backend does to its own copy of a module before lowering, built from the
shared passes (no folding loops of its own): constant folding without the size limits of
``optimize`` (the weights stay in memory; model-zoo weights come from ConstantOfShape
nodes), conv + batch_norm folding (passes/fusion/conv_bn.py), a batch_norm with constant
statistics as a per-channel multiply-add (the cpu rule of rules.py), activations into
the conv / gemm / add producing them (passes/fusion/epilogue.py: the kernels apply them to
the tile before the store; lowering fuses nothing of its own) and dead-op removal.
After ``gx.compile(level>=2)`` these find nothing left to do; at level 0 they are what
makes a model run natively.  Shape specialization is the shared
``passes.memory.specialize_types``."""
from __future__ import annotations

from ...ir import Module
from ...ir.mapped import detach_constants

FOLD_LIMIT_BYTES = 1 << 31  # never fold a constant bigger than this (memory)


def prepare_passes() -> list:
    from ...passes import DCE, ConstantFold, PatternPass
    from ...passes.fusion import FoldBatchNorm, FuseActivations
    from .rules import batch_norm_patterns
    return [ConstantFold(), FoldBatchNorm(), PatternPass("cpu-batchnorm-affine", batch_norm_patterns()),
            FuseActivations(), DCE()]


def prepare(module: Module) -> Module:
    from ...passes import PassContext, PassManager
    m = module.clone()
    detach_constants(m)  # the executable owns its weights: none stay views of a mapped file
    ctx = PassContext(options={"fold_max_elements": FOLD_LIMIT_BYTES // 8,
                               "fold_max_growth": float("inf")})
    PassManager(prepare_passes(), context=ctx, count_ops=False).run(m)
    return m
