"""Reference kernels of the fused int8 conv / matmul / add (galaxir/ir/ops/quant_int8.py)."""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from .quant import _exact_matmul, _int_range, _requantize, dynamic_quantize, matmul_integer, qlinear_conv


def _clamp(ctx, y: np.ndarray) -> np.ndarray:
    lo, hi = ctx.attr("clamp_lo"), ctx.attr("clamp_hi")
    tlo, thi = _int_range(y.dtype)
    lo = tlo if lo is None else max(tlo, int(lo))
    hi = thi if hi is None else min(thi, int(hi))
    return np.clip(y, lo, hi).astype(y.dtype)


@kernel("int8_conv")
def int8_conv(ctx, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias=None):
    return _clamp(ctx, qlinear_conv(ctx, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias))


@kernel("int8_matmul")
def int8_matmul(ctx, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, bias=None):
    A = a.astype(np.int64) - np.asarray(a_zp).astype(np.int64)
    B = b.astype(np.int64) - np.asarray(b_zp).astype(np.int64)
    acc = _exact_matmul(A, B)
    if bias is not None:
        acc = acc + bias.astype(np.float64)
    factor = np.asarray(a_scale) * np.asarray(b_scale) / np.asarray(y_scale)
    return _clamp(ctx, _requantize(acc, factor, y_zp, ctx.result_dtype(0)))


@kernel("int8_add")
def int8_add(ctx, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
    """The float32 QDQ arithmetic: dequantize both, add, quantize (then the clamp)."""
    f32 = np.float32
    fa = (a.astype(f32) - np.asarray(a_zp).astype(f32)) * np.asarray(a_scale).astype(f32)
    fb = (b.astype(f32) - np.asarray(b_zp).astype(f32)) * np.asarray(b_scale).astype(f32)
    q = (fa + fb) / np.asarray(y_scale).astype(f32)
    out = ctx.result_dtype(0)
    lo, hi = _int_range(out)
    r = np.rint(q).astype(np.float64) + np.asarray(y_zp).astype(np.float64)
    return _clamp(ctx, np.clip(r, lo, hi).astype(out))


@kernel("dynamic_qmatmul")
def dynamic_qmatmul(ctx, x, w, w_scale, w_zp, bias=None):
    """The dynamic quantization chain it fuses, step by step in float32."""
    xq, xs, xz = dynamic_quantize(x)
    acc = matmul_integer(ctx, xq, w, np.uint8(xz), w_zp)
    y = acc.astype(np.float32) * (np.float32(xs) * np.asarray(w_scale, np.float32))
    return y if bias is None else y + np.asarray(bias, np.float32)
