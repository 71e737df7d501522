"""O2 fusion passes: what ``optimize(m, level=2)`` adds on top of O1.

In pipeline order (each a pass of its own, so ``disable_passes=["fuse-elementwise"]`` or
``disable_rules=["fuse-conv-residual"]`` switch parts off):

1. ``fuse-recognize``: layer_norm, gelu and scaled dot-product attention recognized from
   their decomposed forms (recognize.py).
2. ``fold-batchnorm``: Conv + BatchNormalization folded into the conv weights (conv_bn.py).
3. ``fuse-bias``: bias adds into conv / matmul (-> linear) / gemm, residual adds into conv.
4. ``fuse-activation``: activations into conv / linear / gemm / add epilogues (epilogue.py).
5. ``fuse-elementwise``: remaining elementwise chains into one op with a region.

The fused ops are defined in galaxir/ir/ops/fused.py (each decomposes back into core ops)
and run on the numpy backend by galaxir/reference/kernels/fused.py.
"""
from __future__ import annotations

from ..basic import DCE
from ..greedy import PatternPass
from ..pipeline import LEVEL_PASSES, register_level_pass, register_pass
from . import conv_bn, elementwise, recognize
from .conv_bn import fold_conv_batchnorm
from .elementwise import FuseElementwise, collect_group
from .epilogue import ACTIVATION_PATTERNS, BIAS_PATTERNS, FuseActivation, activation_of
from .recognize import RecognizeAttention, RecognizeGelu


def Recognize() -> PatternPass:
    return PatternPass("fuse-recognize", recognize.PATTERNS)


def FoldBatchNorm() -> PatternPass:
    return PatternPass("fold-batchnorm", conv_bn.PATTERNS)


def FuseBias() -> PatternPass:
    return PatternPass("fuse-bias", BIAS_PATTERNS)


def FuseActivations() -> PatternPass:
    return PatternPass("fuse-activation", ACTIVATION_PATTERNS)


def FuseElementwiseChains() -> PatternPass:
    return PatternPass("fuse-elementwise", elementwise.PATTERNS)


#: the O2 fusion pipeline, in order
FUSION_PASSES = [Recognize, FoldBatchNorm, FuseBias, FuseActivations, FuseElementwiseChains, DCE]


def fusion_patterns() -> list:
    """Every fusion pattern but the elementwise chains (for custom pipelines)."""
    return [*recognize.PATTERNS, *conv_bn.PATTERNS, *BIAS_PATTERNS, *ACTIVATION_PATTERNS]


def _register() -> None:
    for name, f in [("fuse-recognize", Recognize), ("fold-batchnorm", FoldBatchNorm),
                    ("fuse-bias", FuseBias), ("fuse-activation", FuseActivations),
                    ("fuse-elementwise", FuseElementwiseChains)]:
        register_pass(name, f)
    if not any(f in LEVEL_PASSES[2] for f in FUSION_PASSES[:-1]):
        for f in FUSION_PASSES:
            register_level_pass(2, f)


_register()

__all__ = ["Recognize", "FoldBatchNorm", "FuseBias", "FuseActivations", "FuseElementwiseChains",
           "FUSION_PASSES", "fusion_patterns", "fold_conv_batchnorm", "FuseActivation",
           "FuseElementwise", "RecognizeGelu", "RecognizeAttention", "activation_of",
           "collect_group"]
