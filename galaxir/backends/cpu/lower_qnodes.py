"""Lowering of the quantization ops lower_quant.py leaves to the reference: quantize /
dequantize to and from 16-bit, 4-bit, 2-bit integers and float8 / float4, float16 scales,
blocked (``block_size``) scales, DynamicQuantizeLinear, and the integer / QLinear matmul
and conv whose weights, scales or zero points are run-time tensors (the ONNX node cases
feed every operand as an input).  Kernels: kernels_qtypes.py, kernels_qlinear_rt.py.

Each rule here first asks the rule it replaces (lower_quant's packed int8 kernels), and
takes the op only when that one declines.  Imported at the end of lower.py, after
lower_quant.
"""
from __future__ import annotations

import numpy as np

from ...ir.types import TensorType
from . import kernels_qtypes as KQ
from .kernels import broadcast_strides
from . import kernels_int8 as KI
from .kernels_qdyn import DynQMatMul, QGemmF32
from .kernels_qlinear_rt import QConvRT, QMatMulRT, RuntimeZeroPoint, RuntimeZeroPointConv
from .lower import RULES, ConstArray, _window, const_of, rule, static_shape
from .lower_quant import qconv_kernel

_previous = {n: RULES.get(n) for n in ("quantize_linear", "dequantize_linear", "qlinear_matmul",
                                       "matmul_integer", "qlinear_conv", "conv_integer")}
#: 8-bit operands of the integer matmul / conv (int32 accumulation stays exact for
#: K < 2**31 / 255**2)
EIGHT = ("uint8", "int8")
MAX_K = (1 << 31) // (255 * 255)


def _dt(v) -> str | None:
    return v.type.dtype.name if v is not None and isinstance(v.type, TensorType) else None


def _shape(v):
    return static_shape(v.type) if v is not None and isinstance(v.type, TensorType) else None


def _size(v) -> int:
    return int(np.prod(_shape(v)))


def _chain(name: str, op, ours):
    """The previous rule's lowering, else ours; both reasons when neither takes it."""
    prev = _previous.get(name)
    first = prev(op) if prev is not None else "no native kernel"
    if not isinstance(first, str):
        return first
    second = ours(op)
    return second if not isinstance(second, str) else f"{first}; {second}"


# -- quantize / dequantize ---------------------------------------------------------------------
def _layout(op, xs):
    """(outer, C, inner, mode, block) of x's scale / zero point, or a reason."""
    sv, zv = op.operand(1), op.operand(2)
    ss = _shape(sv)
    if ss is None:
        return "scale shape not static"
    if zv is not None and _shape(zv) is None:
        return "zero point shape not static"
    if zv is not None and int(np.prod(_shape(zv))) != int(np.prod(ss)):
        return "zero point and scale differ in size"
    block = int(op.attr("block_size") or 0)
    axis = op.attr("axis")
    axis = 1 if axis is None else int(axis)
    n = int(np.prod(ss))
    if not block and n == 1:
        return 1, 1, int(np.prod(xs)), "tensor", 0
    if not xs:
        return "scalar input with a per-axis scale"
    ax = axis + len(xs) if axis < 0 else axis
    if not 0 <= ax < len(xs):
        return "axis out of range"
    outer, C, inner = int(np.prod(xs[:ax])), int(xs[ax]), int(np.prod(xs[ax + 1:]))
    if block:
        want = tuple(-(-d // block) if i == ax else d for i, d in enumerate(xs))
        if tuple(ss) != want or (zv is not None and tuple(_shape(zv)) != want):
            return f"blocked scale of shape {list(ss)} does not fit x {list(xs)}"
        return outer, C, inner, "block", block
    if len(ss) != 1 or ss[0] != C:
        return "per-axis scale does not match the axis"
    return outer, C, inner, "axis", 0


def _quantize_typed(op):
    x, sv, zv, y = op.operand(0), op.operand(1), op.operand(2), op.results[0]
    xs = _shape(x)
    if xs is None or _dt(x) not in KQ.WIDE or _dt(sv) not in KQ.WIDE:
        return "x and scale must be static float32 / float16 tensors"
    if _dt(y) not in KQ.QUANT:
        return f"no native quantization to {_dt(y)}"
    if zv is not None and _dt(zv) != _dt(y):
        return "zero point type differs from the result's"
    if op.attr("precision") is not None:
        return "precision attribute"
    lay = _layout(op, xs)
    if isinstance(lay, str):
        return lay
    sat = op.attr("saturate")
    # float8 ignores its zero point (the reference does)
    use_zp = zv is not None and _dt(y) not in ("float8e4m3fn", "float8e5m2")
    kern = KQ.QuantizeT(*lay, x_dtype=_dt(x), s_dtype=_dt(sv),
                        zp_dtype=_dt(zv) if use_zp else None, out_dtype=_dt(y),
                        saturate=True if sat is None else bool(sat))
    return kern, [x, sv] + ([zv] if use_zp else [])


def _dequantize_typed(op):
    x, sv, zv, y = op.operand(0), op.operand(1), op.operand(2), op.results[0]
    xs = _shape(x)
    if xs is None or _dt(x) not in KQ.QUANT | {"int32"}:
        return f"no native dequantization of {_dt(x)}"
    if _dt(sv) not in KQ.WIDE or _dt(y) not in KQ.WIDE:
        return "scale and result must be float32 / float16"
    if zv is not None and _dt(zv) != _dt(x):
        return "zero point type differs from x's"
    lay = _layout(op, xs)
    if isinstance(lay, str):
        return lay
    use_zp = zv is not None and _dt(x) not in KQ.FLOATS
    kern = KQ.DequantizeT(*lay, x_dtype=_dt(x), s_dtype=_dt(sv),
                          zp_dtype=_dt(zv) if use_zp else None, out_dtype=_dt(y))
    return kern, [x, sv] + ([zv] if use_zp else [])


@rule("quantize_linear")
def lower_quantize_any(op):
    return _chain("quantize_linear", op, _quantize_typed)


@rule("dequantize_linear")
def lower_dequantize_any(op):
    return _chain("dequantize_linear", op, _dequantize_typed)


@rule("dynamic_quantize_linear")
def lower_dynamic_quantize(op):
    x = op.operand(0)
    xs = _shape(x)
    if xs is None or _dt(x) != "float32":
        return "x must be a static float32 tensor"
    if _dt(op.results[1]) != "float32":
        return "float32 scale only"
    return KQ.DynamicQuantize(n=int(np.prod(xs))), [x]


# -- integer / QLinear matmul and conv with run-time operands -----------------------------------
def _scales(vals):
    """The one float type of the scale operands, or None."""
    dts = {_dt(v) for v in vals}
    return dts.pop() if len(dts) == 1 and next(iter(dts)) in KQ.WIDE else None


def _qmatmul_rt(op):
    q = op.name == "qlinear_matmul"
    if q:
        a, sa, za, bb, sb, zb, sy, zy = (op.operand(i) for i in range(8))
    else:
        a, bb, za, zb = (op.operand(i) for i in range(4))
    sa_, sb_ = _shape(a), _shape(bb)
    ys = _shape(op.results[0])
    if sa_ is None or sb_ is None or ys is None:
        return "shapes not static"
    if _dt(a) not in EIGHT or _dt(bb) not in EIGHT:
        return "uint8 / int8 operands only"
    if len(sa_) < 2 or len(sb_) < 2:
        return "1-d operands"
    M, K, N = sa_[-2], sa_[-1], sb_[-1]
    if sb_[-2] != K or K > MAX_K:
        return "inner dims differ, or too long for int32 accumulation"
    for v, full, what, owner in ((za, M, "a zero point", a), (zb, N, "b zero point", bb)):
        if v is not None and (_shape(v) is None or _size(v) not in (1, full) or _dt(v) != _dt(owner)):
            return f"{what}: per tensor, or one per {'row' if v is za else 'column'}, of the operand's type"
    batch = tuple(ys[:-2])
    a_st = tuple(s * M * K for s in broadcast_strides(sa_[:-2], batch)) if batch else ()
    b_st = tuple(s * K * N for s in broadcast_strides(sb_[:-2], batch)) if batch else ()
    if min(M, N, K, *batch, 1) == 0:
        return "zero-size tensor"
    kw = dict(batch=batch, a_strides=a_st, b_strides=b_st, M=M, K=K, N=N, a_dtype=_dt(a),
              b_dtype=_dt(bb), qlinear=q, za=0 if za is None else _size(za),
              zb=0 if zb is None else _size(zb))
    if not q:
        return QMatMulRT(**kw), [v for v in (a, bb, za, zb) if v is not None]
    sdt = _scales((sa, sb, sy))
    if sdt is None:
        return "scales of one float32 / float16 type only"
    if _size(sa) not in (1, M) or _size(sb) not in (1, N) or _size(sy) != 1 or _size(zy) != 1:
        return "y scale / zero point per tensor; a's per row, b's per column"
    if _dt(zy) not in EIGHT:
        return "uint8 / int8 result only"
    kern = QMatMulRT(**kw, sa=_size(sa), sb=_size(sb), s_dtype=sdt, out_dtype=_dt(zy))
    return kern, [a, sa, za, bb, sb, zb, sy, zy]


def _qconv_rt(op):
    q = op.name == "qlinear_conv"
    if q:
        x, sx, zx, w, sw, zw, sy, zy = (op.operand(i) for i in range(8))
        bias = op.operand(8)
    else:
        x, w, zx, zw = (op.operand(i) for i in range(4))
        bias = None
    xs, ws, ys = _shape(x), _shape(w), _shape(op.results[0])
    if xs is None or ws is None or ys is None:
        return "shapes not static"
    if _dt(x) not in EIGHT or _dt(w) not in EIGHT:
        return "uint8 / int8 operands only"
    if len(xs) not in (3, 4) or len(ws) != len(xs):
        return "only 1-d and 2-d convolutions are native"
    kernel = tuple(ws[2:])
    if op.attr("kernel_shape") is not None and tuple(op.attr("kernel_shape")) != kernel:
        return "kernel_shape differs from the weights'"
    st, dl, pb, _ = _window(op, xs, kernel)
    if len(xs) == 3:    # 1-d: H = 1
        xs, ys, kernel = (xs[0], xs[1], 1, xs[2]), (ys[0], ys[1], 1, ys[2]), (1,) + kernel
        st, dl, pb = [1] + st, [1] + dl, [0] + pb
    g = int(op.attr("group") or 1)
    M = ws[0]
    if xs[1] % g or M % g or ws[1] != xs[1] // g:
        return "channels do not match the group count"
    if min(*xs, *ys, *ws) == 0:
        return "zero-size tensor"
    if kernel[1] > 16:
        return "kernel wider than 16 (the native loop unrolls the taps of a row)"
    if ws[1] * kernel[0] * kernel[1] > MAX_K:
        return "too long a reduction for int32 accumulation"
    if zx is not None and (_size(zx) != 1 or _dt(zx) != _dt(x)):
        return "x zero point: one, of x's type"
    if zw is not None and (_size(zw) not in (1, M) or _dt(zw) != _dt(w)):
        return "w zero point: per tensor or per output channel, of w's type"
    kw = dict(N=xs[0], C=xs[1], H=xs[2], W=xs[3], M=M, OH=ys[2], OW=ys[3], kh=kernel[0],
              kw=kernel[1], sh=st[0], sw_=st[1], dh=dl[0], dw=dl[1], pt=pb[0], pl=pb[1], group=g,
              x_dtype=_dt(x), w_dtype=_dt(w), qlinear=q, zx=zx is not None,
              zw=0 if zw is None else _size(zw))
    if not q:
        return QConvRT(**kw), [v for v in (x, w, zx, zw) if v is not None]
    sdt = _scales((sx, sw, sy))
    if sdt is None:
        return "scales of one float32 / float16 type only"
    if _size(sx) != 1 or _size(sw) not in (1, M) or _size(sy) != 1 or _size(zy) != 1:
        return "x / y scales and zero points per tensor; w's per tensor or per output channel"
    if _dt(zy) not in EIGHT:
        return "uint8 / int8 result only"
    if bias is not None and (_dt(bias) != "int32" or _size(bias) != M):
        return "bias: int32, one per output channel"
    kern = QConvRT(**kw, s_w=_size(sw), bias=bias is not None, s_dtype=sdt, out_dtype=_dt(zy))
    return kern, [x, sx, zx, w, sw, zw, sy, zy] + ([bias] if bias is not None else [])


def _packed_runtime_zp(op):
    """matmul_integer of constant 2-d weights whose x zero point is a run-time scalar (what
    dynamic quantization builds): the packed int8 kernel with zero point 0, corrected."""
    a, w, za, zw = (op.operand(i) for i in range(4))
    wq = const_of(w)
    xs = _shape(a)
    if op.name != "matmul_integer" or wq is None or za is None or const_of(za) is not None:
        return "not a constant-weight matmul with a run-time x zero point"
    wq = np.asarray(wq)
    if xs is None or len(xs) < 2 or wq.ndim != 2 or _dt(a) not in EIGHT or wq.dtype.name not in EIGHT:
        return "8-bit x of rank >= 2 and 2-d 8-bit weights only"
    if _size(za) != 1 or _dt(za) != _dt(a):
        return "x zero point: one, of x's type"
    zwc = np.zeros(1, wq.dtype) if zw is None else const_of(zw)
    if zwc is None:
        return "weight zero point is not a constant"
    K, N = wq.shape
    M = int(np.prod(xs[:-1]))
    zwv = np.asarray(zwc).reshape(-1)
    if xs[-1] != K or min(M, K, N) == 0 or zwv.size not in (1, N):
        return "shapes do not fit"
    inner, packed, corr, colsum = _packed_zero_point_0(wq, zwv, M, _dt(a) == "int8")
    kern = RuntimeZeroPoint(inner=inner, M=M, N=N, zx_dtype=_dt(a), n_corr=corr.size)
    return kern, [a, ConstArray(packed, "qmatmul.w"), ConstArray(corr, "qmatmul.corr"),
                  ConstArray(colsum, "qmatmul.colsum"), za]


def _packed_zero_point_0(wq, zwv, M: int, x_signed: bool, gemm=KI.QGemm, **extra):
    """The packed int8 kernel for ``M`` rows of x times constant ``wq - zwv`` with x's zero
    point 0 and int32 output, its packed weights and corrections (flat), and the weights'
    column sums (int32, wrapping as int32 does) for a run-time zero-point correction."""
    K, N = wq.shape
    lanes = KI.int8_lanes()
    vnni = KI.use_vnni(lanes)
    zs = (-128 if not x_signed else 0) if vnni else 0     # as lower_quant with x zero point 0
    packed, corr = KI.pack_u_const(wq, zwv, None, zs, vnni, KI.npad_of(N, lanes, 1 if vnni else 0))
    inner = gemm(kind="matmul", vnni=vnni, lanes=lanes, x_signed=x_signed, zx=0, out="i32",
                 M=M, K=K, N=N, **extra)
    colsum = (wq.astype(np.int64) - zwv.astype(np.int64)).sum(axis=0)
    colsum = ((colsum + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)
    return inner, packed, corr.reshape(-1), colsum


@rule("dynamic_qmatmul")
def lower_dynamic_qmatmul(op):
    """The fused dynamic-quantization matmul (galaxir/passes/qdq_dynamic.py)."""
    x, w, ws, wz, bias = (op.operand(i) for i in range(5))
    xs, wq, wsc, wzc = _shape(x), const_of(w), const_of(ws), const_of(wz)
    bc = const_of(bias) if bias is not None else None
    if xs is None or _dt(x) != "float32" or len(xs) < 1:
        return "x must be a static float32 tensor"
    if wq is None or wsc is None or wzc is None or (bias is not None and bc is None):
        return "weights, their scale and zero point, and the bias must be constants"
    wq, wsc, wzc = np.asarray(wq), np.asarray(wsc), np.asarray(wzc)
    if wq.ndim != 2 or wq.dtype.name not in EIGHT or wzc.dtype != wq.dtype:
        return "2-d 8-bit weights with a zero point of their type only"
    K, N = wq.shape
    M = int(np.prod(xs[:-1]))
    if xs[-1] != K or min(M, K, N) == 0 or K > MAX_K:
        return "shapes do not fit, or too long a reduction for int32 accumulation"
    if wsc.dtype != np.float32 or wsc.size not in (1, N) or wzc.size not in (1, N):
        return "float32 weight scale and zero point per tensor or per column only"
    if bc is not None and (np.asarray(bc).dtype != np.float32 or np.asarray(bc).size != N):
        return "float32 bias, one per column"
    inner, packed, corr, colsum = _packed_zero_point_0(wq, wzc.reshape(-1), M, False, QGemmF32,
                                                       bias=bc is not None)
    kern = DynQMatMul(inner=inner, M=M, K=K, N=N, n_corr=corr.size, bias=bc is not None)
    wsn = np.ascontiguousarray(np.broadcast_to(wsc.reshape(-1), (N,)), np.float32)
    ins = [x, ConstArray(packed, "dynqmm.w"), ConstArray(corr, "dynqmm.corr"),
           ConstArray(colsum, "dynqmm.colsum"), ConstArray(wsn, "dynqmm.scale")]
    if bc is not None:
        ins.append(ConstArray(np.asarray(bc, np.float32).reshape(-1), "dynqmm.bias"))
    return kern, ins


@rule("qlinear_matmul", "matmul_integer")
def lower_qmatmul_any(op):
    return _chain(op.name, op, lambda o: _first(o, _packed_runtime_zp, _qmatmul_rt))


def _first(op, *rules):
    """The first of ``rules`` that lowers ``op``; else the last one's reason."""
    for r in rules:
        res = r(op)
        if not isinstance(res, str):
            return res
    return res


def _valid_taps(n_out: int, n_in: int, k: int, stride: int, dil: int, pad: int):
    """Per output index, which of the k taps read inside [0, n_in): (class per output index,
    the distinct masks [classes, k])."""
    idx = np.arange(n_out)[:, None] * stride - pad + np.arange(k)[None, :] * dil
    masks, cls = np.unique((idx >= 0) & (idx < n_in), axis=0, return_inverse=True)
    return cls.reshape(-1).astype(np.int32), masks


def _packed_conv_runtime_zp(op):
    """conv_integer of constant 2-d weights whose x zero point is a run-time scalar (what
    dynamic quantization builds): the packed conv with zero point 0, then the zero point
    times the weights' sum over each output's valid taps (RuntimeZeroPointConv)."""
    x, w, zx, zw = (op.operand(i) for i in range(4))
    wq, xs, ys = const_of(w), _shape(x), _shape(op.results[0])
    if op.name != "conv_integer" or wq is None or zx is None or const_of(zx) is not None:
        return "not a constant-weight conv with a run-time x zero point"
    wq = np.asarray(wq)
    if xs is None or ys is None or len(xs) != 4 or wq.ndim != 4 or _dt(x) not in EIGHT \
            or wq.dtype.name not in EIGHT:
        return "2-d conv of 8-bit x and 8-bit weights only"
    if _size(zx) != 1 or _dt(zx) != _dt(x):
        return "x zero point: one, of x's type"
    zwc = np.zeros((), wq.dtype) if zw is None else const_of(zw)
    if zwc is None:
        return "weight zero point is not a constant"
    M = wq.shape[0]
    zwv = np.asarray(zwc).reshape(-1)
    if zwv.size not in (1, M):
        return "w zero point: per tensor or per output channel"
    arrs = {"sx": np.asarray(1.0), "sw": np.asarray(1.0), "sy": np.asarray(1.0),
            "zx": np.zeros((), np.dtype(_dt(x))), "zw": zwv,
            "zy": np.asarray(0)}
    res = qconv_kernel(op, "i32", x, arrs, wq, None)
    if isinstance(res, str):
        return res
    inner, ins = res
    kernel = wq.shape[2:]
    st, dl, pb, _ = _window(op, xs, kernel)
    hc, hm = _valid_taps(ys[2], xs[2], kernel[0], st[0], dl[0], pb[0])
    wc, wm = _valid_taps(ys[3], xs[3], kernel[1], st[1], dl[1], pb[1])
    zcol = np.broadcast_to(zwv.astype(np.int64), (M,))[:, None, None, None]
    wsum = (wq.astype(np.int64) - zcol).sum(axis=1)
    table = np.einsum("ar,bs,mrs->mab", hm.astype(np.int64), wm.astype(np.int64), wsum)
    table = ((table + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)     # wraps as int32 does
    kern = RuntimeZeroPointConv(inner=inner, N=xs[0], M=M, OH=ys[2], OW=ys[3], nh=len(hm), nw=len(wm),
                                zx_dtype=_dt(x))
    return kern, ins + [ConstArray(table.reshape(-1), "qconv.taps"), ConstArray(hc, "qconv.hcls"),
                        ConstArray(wc, "qconv.wcls"), zx]


@rule("qlinear_conv", "conv_integer")
def lower_qconv_any(op):
    return _chain(op.name, op, lambda o: _first(o, _packed_conv_runtime_zp, _qconv_rt))

