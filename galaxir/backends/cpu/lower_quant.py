"""Lowering rules for the quantized ops (kernels in kernels_int8.py).

Imported at the end of lower.py (the ``rule`` decorator registers into lower.RULES).
``int8_conv`` / ``qlinear_conv`` / ``conv_integer`` (2-d, NCHW, constant weights) and
``int8_matmul`` / ``qlinear_matmul`` / ``matmul_integer`` (constant 2-d weights) become
``QGemm``; per-tensor or per-channel weight scales and zero points, uint8 or int8 on
either side.  ``quantize_linear`` / ``dequantize_linear`` (per tensor or per axis,
float32 <-> 8-bit, int32 for dequantize) run natively too.  What a rule does not take
runs on the numpy reference with the reason in the report.

``check_module`` (called by lower_module before lowering) refuses a non-positive or
non-finite constant scale with a CompileError naming the op.
"""
from __future__ import annotations

import os

import numpy as np

from ...ir.types import DType, TensorType
from ...passes.qdq import check_scale, check_zero_point
from . import kernels_int8 as KI
from .lower import RULES, ConstArray, _window, const_of, rule, static_shape

Q8 = {DType.uint8: "u8", DType.int8: "s8"}

#: operand positions: (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias)
_QLINEAR = (0, 1, 2, 3, 4, 5, 6, 7, 8)
_INTEGER = (0, None, 2, 1, None, 3, None, None, None)
SCALE_OPERANDS = {"quantize_linear": (1,), "dequantize_linear": (1,),
                  "qlinear_conv": (1, 4, 6), "qlinear_matmul": (1, 4, 6),
                  "int8_conv": (1, 4, 6), "int8_matmul": (1, 4, 6)}


def check_module(module) -> None:
    for op in module.graph.block:
        for i in SCALE_OPERANDS.get(op.name, ()):
            s = const_of(op.operand(i))
            if s is not None and np.asarray(s).dtype.kind == "f":
                check_scale(op, f"operand {i} (scale)", np.asarray(s))


def _dt(v):
    return v.type.dtype if v is not None and isinstance(v.type, TensorType) else None


def _operands(op):
    pos = _INTEGER if op.name in ("conv_integer", "matmul_integer") else _QLINEAR
    return [op.operand(i) if i is not None else None for i in pos]


def _params(op):
    """(result kind, x, {sx, zx, sw, zw, sy, zy} arrays, weights, bias), or a reason string."""
    kind = _out_kind(op)
    if kind is None:
        return "the result must be uint8/int8"
    x, sxv, zxv, w, swv, zwv, syv, zyv, bv = _operands(op)
    if _dt(x) not in Q8 or static_shape(x.type) is None:
        return "x must be a static uint8/int8 tensor"
    wq = const_of(w)
    if wq is None or np.asarray(wq).dtype.type not in (np.uint8, np.int8):
        return "the weights must be a uint8/int8 constant"
    arrs = {}
    for name, v, default in (("sx", sxv, 1.0), ("sw", swv, 1.0), ("sy", syv, 1.0),
                             ("zx", zxv, 0), ("zw", zwv, 0), ("zy", zyv, 0)):
        if v is None:
            arrs[name] = np.asarray(default)
            continue
        c = const_of(v)
        if c is None:
            return f"{name} is not a constant"
        arrs[name] = np.asarray(c)
    if arrs["sx"].size != 1 or arrs["zx"].size != 1 or arrs["sy"].size != 1 or arrs["zy"].size != 1:
        return "per-tensor x / y scales and zero points only"
    for n in ("sx", "sw", "sy"):
        check_scale(op, n, arrs[n])
    check_zero_point(op, "x zero point", arrs["zx"], np.dtype(x.type.dtype.numpy))
    bias = None
    if bv is not None:
        bias = const_of(bv)
        if bias is None:
            return "bias is not a constant"
    return kind, x, arrs, np.asarray(wq), bias


def _out_kind(op) -> str:
    if op.name in ("conv_integer", "matmul_integer"):
        return "i32"
    return Q8.get(_dt(op.results[0]), None)


def _clamp(op, kind):
    lo, hi = (0, 255) if kind == "u8" else (-128, 127)
    if op.attr("clamp_lo") is not None:
        lo = max(lo, int(op.attr("clamp_lo")))
    if op.attr("clamp_hi") is not None:
        hi = min(hi, int(op.attr("clamp_hi")))
    return lo, hi


def _multiplier(arrs, n: int) -> np.ndarray:
    """sx * sw / sy in the scales' own dtype (as the reference), then float64."""
    f = np.asarray(arrs["sx"]).reshape(()) * np.asarray(arrs["sw"]).reshape(-1) \
        / np.asarray(arrs["sy"]).reshape(())
    return np.ascontiguousarray(np.broadcast_to(f.astype(np.float64), (n,)))


def _direct(row: int, cols: int, lanes: int) -> bool:
    """The direct conv (no im2col copy) computes whole output rows of ``row`` columns in
    vectors of ``lanes``; im2col packs all ``cols`` output pixels as one row.  Direct
    unless its lanes are much emptier: a 7x7 map keeps 7 of 16 lanes busy per row but 49
    of 64 as one (ResNet's 512-channel 3x3 convs ran about 1.5-2x faster im2col).
    ``GALAXIR_CPU_INT8_DIRECT=1/0`` forces either."""
    forced = os.environ.get("GALAXIR_CPU_INT8_DIRECT")
    if forced in ("0", "1"):
        return forced == "1"
    busy_direct = row / (-(-row // lanes) * lanes)
    busy_im2col = cols / KI.npad_of(cols, lanes)
    return busy_direct >= busy_im2col - 0.15


@rule("int8_conv", "qlinear_conv", "conv_integer")
def lower_qconv(op):
    res = _params(op)
    if isinstance(res, str):
        return res
    return qconv_kernel(op, *res)


def qconv_kernel(op, kind, x, arrs, wq, bias):
    """The packed conv kernel of ``op`` and its inputs (or a reason) given its constants
    (lower_qnodes.py also builds one with x's zero point 0 for a run-time one)."""
    xs, ys = static_shape(x.type), static_shape(op.results[0].type)
    if len(xs) != 4 or ys is None or len(ys) != 4 or wq.ndim != 4:
        return "only 2-d convolutions are native"
    if min(xs) == 0 or min(ys) == 0 or wq.size == 0:
        return "zero-size tensor"
    M = wq.shape[0]
    kernel = op.attr("kernel_shape") or wq.shape[2:]
    if tuple(kernel) != tuple(wq.shape[2:]):
        return "kernel_shape differs from the weights'"
    st, dl, pb, pe = _window(op, xs, kernel)
    g = op.attr("group") or 1
    if xs[1] % g or M % g or wq.shape[1] != xs[1] // g:
        return "channels do not match the group count"
    sw, zw = arrs["sw"].reshape(-1), arrs["zw"].reshape(-1)
    if sw.size not in (1, M) or zw.size not in (1, M):
        return "weight scale / zero point must be per tensor or per output channel"
    check_zero_point(op, "w zero point", zw, wq.dtype)
    if bias is not None and np.asarray(bias).size != M:
        return "bias must have one value per output channel"
    lanes = KI.int8_lanes()
    vnni = KI.use_vnni(lanes)
    mg = M // g
    kd = wq.shape[1] * kernel[0] * kernel[1]
    zx = int(arrs["zx"].reshape(()))
    x_signed = x.type.dtype is DType.int8
    zu = (zx + 128 if x_signed else zx) if vnni else 0
    zwf = np.broadcast_to(zw.astype(np.int64), (M,))
    bf = None if bias is None else np.asarray(bias).reshape(M).astype(np.int64)
    packs, corrs = [], []
    w2 = wq.reshape(g, mg, kd)
    pointwise = tuple(kernel) == (1, 1) and tuple(st) == (1, 1) and not any(pb) and not any(pe)
    direct = _direct(ys[2] * ys[3] if pointwise else ys[3], ys[2] * ys[3], lanes)
    order = KI.direct_order(wq.shape[1], kernel[0], kernel[1], KI.group_of(vnni)) if direct else None
    for gi in range(g):
        p, c = KI.pack_s_const(w2[gi], zwf[gi * mg:(gi + 1) * mg],
                               None if bf is None else bf[gi * mg:(gi + 1) * mg], zu, vnni, order)
        packs.append(p)
        corrs.append(c)
    lo, hi = _clamp(op, kind) if kind != "i32" else (0, 0)
    zy = int(arrs["zy"].reshape(())) if kind != "i32" else 0
    H, W, OH, OW = xs[2], xs[3], ys[2], ys[3]
    if pointwise:
        # pointwise: the pixels as one row (a 7x7 map keeps 49 of 64 lanes busy, not 7 of 16)
        H, W, OH, OW = 1, H * W, 1, OH * OW
    kern = KI.QGemm(kind="conv", vnni=vnni, lanes=lanes, x_signed=x_signed, zx=zx, out=kind,
                    zy=zy, lo=lo, hi=hi, M=M, batch=xs[0], C=xs[1], H=H, W=W,
                    OH=OH, OW=OW, kh=kernel[0], kw=kernel[1], sh=st[0], sw=st[1],
                    dh=dl[0], dw=dl[1], pt=pb[0], pl=pb[1], group=g, direct=direct,
                    fuse=os.environ.get("GALAXIR_CPU_INT8_FUSED", "1") != "0",
                    colsum=bool(any(np.any(c.reshape(2, -1)[1] != 0) for c in corrs)))
    ins = [x, ConstArray(np.concatenate(packs), "qconv.w"),
           ConstArray(np.concatenate(corrs).reshape(-1), "qconv.corr")]
    if kind != "i32":
        ins.append(ConstArray(_multiplier(arrs, M), "qconv.mult"))
    return kern, ins


@rule("int8_matmul", "qlinear_matmul", "matmul_integer")
def lower_qmatmul(op):
    res = _params(op)
    if isinstance(res, str):
        return res
    kind, x, arrs, wq, bias = res
    xs, ys = static_shape(x.type), static_shape(op.results[0].type)
    if wq.ndim != 2 or len(xs) < 2 or ys is None:
        return "x must be at least 2-d and the weights 2-d"
    K, N = wq.shape
    if xs[-1] != K:
        return "inner dims differ"
    M = int(np.prod(xs[:-1]))
    if M == 0 or K == 0 or N == 0:
        return "zero-size tensor"
    sw, zw = arrs["sw"].reshape(-1), arrs["zw"].reshape(-1)
    if sw.size not in (1, N) or zw.size not in (1, N):
        return "weight scale / zero point must be per tensor or per column"
    check_zero_point(op, "b zero point", zw, wq.dtype)
    if bias is not None and np.asarray(bias).size != N:
        return "bias must have one value per column"
    lanes = KI.int8_lanes()
    vnni = KI.use_vnni(lanes)
    zx = int(arrs["zx"].reshape(()))
    x_signed = x.type.dtype is DType.int8
    zs = (zx - 128 if not x_signed else zx) if vnni else 0
    npad = KI.npad_of(N, lanes, 1 if vnni else 0)
    packed, corr = KI.pack_u_const(wq, zw, bias, zs, vnni, npad)
    lo, hi = _clamp(op, kind) if kind != "i32" else (0, 0)
    zy = int(arrs["zy"].reshape(())) if kind != "i32" else 0
    kern = KI.QGemm(kind="matmul", vnni=vnni, lanes=lanes, x_signed=x_signed, zx=zx, out=kind,
                    zy=zy, lo=lo, hi=hi, M=M, K=K, N=N)
    ins = [x, ConstArray(packed, "qmatmul.w"), ConstArray(corr.reshape(-1), "qmatmul.corr")]
    if kind != "i32":
        ins.append(ConstArray(_multiplier(arrs, N), "qmatmul.mult"))
    return kern, ins


def _scale_zp(op, x_shape):
    """(outer, C, inner, scale input, zero-point input, zero-point kind) of a
    (de)quantize: constants become ConstArrays (float32 / int32 [C], checked), a
    run-time scale (float32) or zero point (8-bit / int32) of 1 or C elements is read as
    it is."""
    sv, zv = op.operands[1], op.operand(2)
    s = const_of(sv)
    if s is not None:
        s = np.asarray(s)
        if s.dtype != np.float32:
            return "scale must be float32"
        check_scale(op, "scale", s)
        s_shape = s.shape
    else:
        if _dt(sv) is not DType.float32 or static_shape(sv.type) is None:
            return "scale must be a static float32 tensor"
        s_shape = static_shape(sv.type)
    z = None
    if zv is not None:
        z = const_of(zv)
        if z is None and (_dt(zv) not in (DType.uint8, DType.int8, DType.int32)
                          or static_shape(zv.type) is None):
            return "zero point must be a static 8-bit / int32 tensor"
    if (op.attr("block_size") or 0) or len(s_shape) > 1:
        return "blocked quantization"
    size = int(np.prod(s_shape))
    per_axis = size > 1
    zsize = 1 if zv is None else (np.asarray(z).size if z is not None
                                  else int(np.prod(static_shape(zv.type))))
    if zsize != size:
        return "zero point and scale differ in size"
    axis = op.attr("axis") if op.attr("axis") is not None else 1
    if per_axis:
        if not x_shape:
            return "scalar input with a per-axis scale"
        ax = axis + len(x_shape) if axis < 0 else axis
        if not 0 <= ax < len(x_shape) or x_shape[ax] != size:
            return "per-axis scale does not match the axis"
    outer, C, inner = KI.split_axis(x_shape, axis, per_axis)
    s_in = ConstArray(np.ascontiguousarray(s.reshape(-1).astype(np.float32)), "q.scale") \
        if s is not None else sv
    if zv is None or z is not None:
        zc = np.zeros(C, np.int64) if zv is None else np.asarray(z).reshape(-1).astype(np.int64)
        z_in, zkind = ConstArray(np.ascontiguousarray(np.broadcast_to(zc, (C,)).astype(np.int32)),
                                 "q.zp"), "i32"
    else:
        z_in, zkind = zv, {DType.uint8: "u8", DType.int8: "s8", DType.int32: "i32"}[_dt(zv)]
    return outer, C, inner, s_in, z_in, zkind


@rule("quantize_linear")
def lower_quantize(op):
    x, y = op.operands[0], op.results[0]
    xs = static_shape(x.type)
    if xs is None or _dt(x) is not DType.float32:
        return "x must be a static float32 tensor"
    if _dt(y) not in Q8:
        return f"output {_dt(y)} (native: uint8 / int8)"
    if op.attr("precision") is not None:
        return "precision attribute"
    r = _scale_zp(op, xs)
    if isinstance(r, str):
        return r
    outer, C, inner, s_in, z_in, zkind = r
    if isinstance(z_in, ConstArray):
        check_zero_point(op, "zero point", z_in.array, np.dtype(y.type.dtype.numpy))
    kern = KI.Quantize(outer=outer, C=C, inner=inner, signed=_dt(y) is DType.int8, zp_kind=zkind)
    return kern, [x, s_in, z_in]


@rule("dequantize_linear")
def lower_dequantize(op):
    x, y = op.operands[0], op.results[0]
    xs = static_shape(x.type)
    kinds = {DType.uint8: "u8", DType.int8: "s8", DType.int32: "i32"}
    if xs is None or _dt(x) not in kinds:
        return "x must be a static uint8 / int8 / int32 tensor"
    if _dt(y) is not DType.float32:
        return "float32 result only"
    r = _scale_zp(op, xs)
    if isinstance(r, str):
        return r
    outer, C, inner, s_in, z_in, zkind = r
    kern = KI.Dequantize(outer=outer, C=C, inner=inner, in_dtype=kinds[_dt(x)], zp_kind=zkind)
    return kern, [x, s_in, z_in]


@rule("int8_add")
def lower_qadd(op):
    a, b, y = op.operands[0], op.operands[3], op.results[0]
    sa, sb, ys = static_shape(a.type), static_shape(b.type), static_shape(y.type)
    if _dt(a) not in Q8 or _dt(b) not in Q8 or _dt(y) not in Q8:
        return "uint8 / int8 operands only"
    if sa is None or sa != sb or sa != ys:
        return "operands of one static shape only (no broadcasting)"
    arrs = []
    for i in (1, 2, 4, 5, 6, 7):
        c = const_of(op.operands[i])
        if c is None or np.asarray(c).size != 1:
            return "per-tensor constant scales and zero points only"
        arrs.append(np.asarray(c).reshape(()))
    s_a, z_a, s_b, z_b, s_y, z_y = arrs
    for name, s in (("a_scale", s_a), ("b_scale", s_b), ("y_scale", s_y)):
        if s.dtype != np.float32:
            return "float32 scales only"
        check_scale(op, name, s)
    kind = Q8[_dt(y)]
    lo, hi = _clamp(op, kind)
    n = int(np.prod(sa))
    if n == 0:
        return "zero-size tensor"
    kern = KI.QAdd(n=n, a_signed=_dt(a) is DType.int8, b_signed=_dt(b) is DType.int8,
                   y_signed=kind == "s8", sa=float(s_a), za=int(z_a), sb=float(s_b), zb=int(z_b),
                   sy=float(s_y), zy=int(z_y), lo=lo, hi=hi)
    return kern, [a, b]


_float_max_pool = RULES["max_pool"]


@rule("max_pool")
def lower_max_pool_8bit(op):
    """uint8 / int8 max pooling (NCHW) natively; any other as the float rule."""
    x = op.operands[0]
    if _dt(x) not in Q8:
        return _float_max_pool(op)
    if (op.attr("layout") or "NCHW") != "NCHW":
        return "8-bit max pooling is NCHW only"
    if len(op.results) > 1 and op.results[1].uses:
        return "max_pool indices are used"
    xs, ys = static_shape(x.type), static_shape(op.results[0].type)
    if xs is None or ys is None or len(xs) != 4:
        return "only static 2-d pooling is native"
    if min(xs) == 0 or min(ys) == 0:
        return "zero-size tensor"
    kernel = op.attr("kernel_shape")
    st, dl, pb, _ = _window(op, xs, kernel)
    return KI.MaxPool8(planes=xs[0] * xs[1], H=xs[2], W=xs[3], OH=ys[2], OW=ys[3],
                       kh=kernel[0], kw=kernel[1], sh=st[0], sw=st[1], dh=dl[0], dw=dl[1],
                       pt=pb[0], pl=pb[1], signed=_dt(x) is DType.int8), [x]


lower_max_pool_8bit.layouts = getattr(_float_max_pool, "layouts", ("NCHW",))
