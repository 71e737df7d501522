"""bfloat16 products on the ``vdpbf16ps`` GEMM (kernels_bf16.GemmBf16) where the host has
AVX512-BF16.

lower_f16.widen_half gives every 16-bit op float32 operands between casts; for a bf16
matmul / linear / gemm with constant 2-d weights that ``dot_form`` accepts it leaves the
activation operand and the weights in bf16 (only the bias and the result become float32),
and the rule here lowers that op to GemmBf16: no cast of A before the product, the
weights packed once as bf16 pairs, half the multiply instructions of the float32 tile.

``use_bf16_dot()`` chooses the path from the host features: avx512bf16 with 16-lane
tiles, but not on Intel's Sapphire Rapids line (told apart by avx512fp16, which AMD's
Zen 4 / Zen 5 lack): there ``vdpbf16ps`` takes the issue slots of two zmm FMAs per
instruction (measured on an Emerald Rapids host: 0.5 instructions per cycle against 2
for ``vfmadd231ps``, and mixing the two gains nothing), so it does half the
multiply-adds per cycle of the float32 tile and the bf16 GEMM ran 1.45x slower than the
float32 one; the float32 path (casts around the product) is kept there.
``GALAXIR_CPU_BF16DOT=1`` forces the vdpbf16ps path on any avx512bf16 host,
``=0`` the float32 path (neither can give a host an instruction it lacks).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ...ir.types import DType, TensorType
from . import jit
from .kernels_bf16 import GemmBf16, pack_b_bf16
from .lower import ConstArray, RULES, activation_of, const_of, rule, static_shape

PRODUCTS = ("matmul", "linear", "gemm", "fused_gemm")


def use_bf16_dot() -> bool:
    from .kernels_nhwc import wide_tiles
    forced = os.environ.get("GALAXIR_CPU_BF16DOT")
    if forced == "0" or not (wide_tiles() and jit.has_feature("avx512bf16")
                             and jit.has_feature("avx512f")):
        return False
    return forced == "1" or not jit.has_feature("avx512fp16")


@dataclass
class DotForm:
    """What GemmBf16 needs of a product: rows, depth, columns, B as [K, N], the bias."""

    M: int
    K: int
    N: int
    b_kn: np.ndarray
    bias: object | None


def _is_bf16(v) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.dtype is DType.bfloat16


def dot_form(op) -> DotForm | None:
    """The product as ``A[M, K] @ B[K, N] (+ bias[N])`` with A read in place and B a
    constant, or None (batched B, transposed A, alpha / beta, a bias of another shape)."""
    if op.name not in PRODUCTS or not _is_bf16(op.operands[0]) or len(op.results) != 1:
        return None
    a, bm = op.operands[0], op.operands[1]
    bias = op.operand(2) if len(op.operands) > 2 else None
    xs, bs, ys = static_shape(a.type), static_shape(bm.type), static_shape(op.results[0].type)
    bc = const_of(bm)
    if xs is None or bs is None or ys is None or bc is None or len(bs) != 2 or len(xs) < 1:
        return None
    if op.name in ("gemm", "fused_gemm"):
        alpha, beta = op.attr("alpha"), op.attr("beta")
        if (len(xs) != 2 or op.attr("transA") or (alpha is not None and float(alpha) != 1.0)
                or (bias is not None and beta is not None and float(beta) != 1.0)):
            return None
        b_kn = np.asarray(bc).T if op.attr("transB") else np.asarray(bc)
    else:
        b_kn = np.asarray(bc)
    K, N = b_kn.shape
    if xs[-1] != K:
        return None
    M = int(np.prod(xs[:-1]))
    if M == 0 or K == 0 or N < 16 or int(np.prod(ys)) != M * N:
        return None
    if bias is not None:
        cs = static_shape(bias.type)
        if cs is None or int(np.prod(cs)) != N or tuple(cs)[-1:] != (N,):
            return None
    return DotForm(M, K, N, b_kn, bias)


_previous = {name: RULES.get(name) for name in PRODUCTS}


def _lower_product(op):
    """A bf16-A product widen_half left for GemmBf16; any other as the rule before this."""
    if _is_bf16(op.operands[0]) and use_bf16_dot():
        f = dot_form(op)
        if f is not None:
            act, act_params = activation_of(op)
            kern = GemmBf16(M=f.M, N=f.N, K=f.K, wide=True, has_bias=f.bias is not None,
                            activation=act, act_params=act_params)
            bm = op.operands[1]
            panels = ConstArray(pack_b_bf16(f.b_kn), (bm.name or "w") + ".bf16pairs")
            return kern, [op.operands[0], panels] + ([f.bias] if f.bias is not None else [])
    prev = _previous.get(op.name)
    return prev(op) if prev is not None else "no native kernel"


rule(*PRODUCTS)(_lower_product)
