"""Lowering of 8-bit depthwise convs (``int8_conv`` / ``qlinear_conv`` with one input and
one output channel per group) to kernels_int8_dw.QDepthwise; every other quantized conv,
and a depthwise conv the kernel cannot take, goes on to lower_quant's GEMM rule.

Imported at the end of lower.py, after lower_quant (whose rule it wraps)."""
from __future__ import annotations

import os

import numpy as np

from ...ir.types import DType
from ...passes.qdq import check_zero_point
from . import kernels_int8 as KI
from . import kernels_int8_dw as KD
from .lower import RULES, ConstArray, _window, rule, static_shape
from .lower_quant import _clamp, _multiplier, _params

_gemm_rule = RULES["int8_conv"]


def _depthwise(op):
    """(kernel, inputs) of a depthwise conv QDepthwise runs, or None."""
    if os.environ.get("GALAXIR_CPU_INT8_DW", "1") == "0":
        return None
    res = _params(op)
    if isinstance(res, str):
        return None
    kind, x, arrs, wq, bias = res
    if kind == "i32":
        return None
    xs, ys = static_shape(x.type), static_shape(op.results[0].type)
    if len(xs) != 4 or ys is None or len(ys) != 4 or wq.ndim != 4 or min(xs) == 0 \
            or min(ys) == 0:
        return None
    C, g = xs[1], op.attr("group") or 1
    if g != C or wq.shape[0] != C or wq.shape[1] != 1:
        return None
    kernel = op.attr("kernel_shape") or wq.shape[2:]
    if tuple(kernel) != tuple(wq.shape[2:]):
        return None
    st, dl, pb, _ = _window(op, xs, kernel)
    sw, zw = arrs["sw"].reshape(-1), arrs["zw"].reshape(-1)
    if sw.size not in (1, C) or zw.size not in (1, C):
        return None
    check_zero_point(op, "w zero point", zw, wq.dtype)
    if bias is not None and np.asarray(bias).size != C:
        return None
    zwc = np.broadcast_to(zw.astype(np.int64), (C,))
    vnni = KI.use_vnni(KD.LANES) and KD.vnni_weights_fit(wq, zwc)
    if not KD.fits(st[1], dl[1], vnni):
        return None
    x_signed = x.type.dtype is DType.int8
    zx = int(arrs["zx"].reshape(()))
    zxu = zx + 128 if x_signed else zx
    words, corr = KD.pack_weights(wq, zwc, bias, zxu, vnni)
    lo, hi = _clamp(op, kind)
    kern = KD.QDepthwise(vnni=vnni, x_signed=x_signed, zx=zx, y_signed=kind == "s8",
                         zy=int(arrs["zy"].reshape(())), lo=lo, hi=hi, batch=xs[0], C=C,
                         H=xs[2], W=xs[3], OH=ys[2], OW=ys[3], kh=kernel[0], kw=kernel[1],
                         sh=st[0], sw=st[1], dh=dl[0], dw=dl[1], pt=pb[0], pl=pb[1])
    return kern, [x, ConstArray(words, "qdw.w"), ConstArray(corr, "qdw.corr"),
                  ConstArray(_multiplier(arrs, C), "qdw.mult")]


@rule("int8_conv", "qlinear_conv")
def lower_qconv_depthwise(op):
    got = _depthwise(op)
    return got if got is not None else _gemm_rule(op)
