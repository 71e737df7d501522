"""Low-bit weights: matmul/gemm/linear weights stored blockwise in int4 along the reduced
(K) axis, behind an ONNX DequantizeLinear with block_size (as MatMulNBits stores them);
activations stay float."""
from __future__ import annotations

import numpy as np

from ..ir import Module
from .params import QuantizationError, quantize_array, weight_params
from .rewrite import Inserter
from .targets import Target

BLOCK_SIZES = (16, 32, 64, 128, 256)


def quantize_weights_blockwise(module: Module, targets: list[Target], bits: int, block: int,
                               symmetric: bool) -> list[str]:
    if bits != 4:
        raise QuantizationError(f"weight_bits={bits}: low-bit weights are 4-bit (8-bit weights "
                                "come with activation quantization: give calibration data or None)")
    if block not in BLOCK_SIZES:
        raise QuantizationError(f"block_size={block}; expected one of {list(BLOCK_SIZES)}")
    name = "s4" if symmetric else "u4"
    done = []
    for t in targets:
        op = t.op
        if op.name == "conv":
            continue
        w = op.operand(t.weight).constant_value()
        # the reduced axis: rows of a [K, N] weight, columns of gemm's transposed [N, K]
        axis = 1 if (op.name == "gemm" and op.attr("transB")) else w.ndim - 2
        p = weight_params(w, name, axis, symmetric=symmetric, block=block,
                          where=f"{op.name} '{t.label}' weight")
        wq = quantize_array(w, p, name, axis, block)
        ins = Inserter(module.graph.block, op)
        zp = () if symmetric else (ins.const(p.zero_point),)
        dq = ins.op("dequantize_linear", ins.const(wq), ins.const(p.scale), *zp,
                    axis=axis, block_size=block)
        op.set_operand(t.weight, dq)
        done.append(t.label)
    return done


def weight_bytes(module: Module) -> int:
    """Bytes of the constants at their logical width (4-bit values count half a byte)."""
    total = 0.0
    for op in module.walk():
        if op.name == "constant":
            v = op.attr("value")
            if isinstance(v, np.ndarray):
                bits = 4 if v.dtype.name in ("int4", "uint4") else 8 * v.dtype.itemsize
                total += v.size * bits / 8
    return int(total)
