"""Quantization ops: (de)quantize, dynamic quantization and the integer / QLinear matmul
and conv ops of ONNX.

``quantize_linear`` and ``dequantize_linear`` are core ops (every backend targets them);
per-tensor, per-axis and blocked granularity is decided by the scale's shape, as in ONNX.
"""
from __future__ import annotations

from ..opdef import FLOATS, INT32, attr, define
from ..types import UNKNOWN, DType, TensorType
from .rules import fail, normalize_axis, tensor_operand

QUANT_DTYPES = {DType.uint8, DType.int8, DType.uint16, DType.int16, DType.uint4, DType.int4,
                DType.uint2, DType.int2, DType.float8e4m3fn, DType.float8e4m3fnuz,
                DType.float8e5m2, DType.float8e5m2fnuz, DType.float4e2m1}


def _check_granularity(op, x: TensorType, s: TensorType) -> None:
    """Scale shape: scalar / 1-element (per tensor), 1-D of the axis length (per axis), or
    the input's shape with the blocked axis divided by block_size (blocked)."""
    if x.shape is None or s.shape is None:
        return
    axis = op.attr("axis")
    block = op.attr("block_size") or 0
    if len(s.shape) == 0 or (len(s.shape) == 1 and s.shape[0] == 1):
        return
    if len(x.shape) == 0:
        raise fail(op, f"a scalar input needs a scalar scale, got {s}")
    ax = normalize_axis(op, axis, len(x.shape))
    if block <= 0:
        if len(s.shape) != 1:
            raise fail(op, f"per-axis scale must be 1-D (or give block_size for blocked "
                           f"quantization), got {s}")
        n, d = s.shape[0], x.shape[ax]
        if isinstance(n, int) and isinstance(d, int) and n != d:
            raise fail(op, f"per-axis scale has {n} entries but axis {axis} of the input has {d}")
        return
    if len(s.shape) != len(x.shape):
        raise fail(op, f"blocked scale {s} must have the input's rank {len(x.shape)}")
    for i, (a, b) in enumerate(zip(x.shape, s.shape)):
        if not (isinstance(a, int) and isinstance(b, int)):
            continue
        if i == ax:
            if -(-a // block) != b:
                raise fail(op, f"blocked scale dim {i} is {b}, expected ceil({a}/{block})")
        elif a != b:
            raise fail(op, f"blocked scale dim {i} is {b}, expected {a}")


def check_constant_params(op, scale_index: int = 1, zp_index: int = 2) -> None:
    """Constant scales must be positive and finite (a zero scale divides by zero, a
    negative one flips the data); constant zero points must fit the quantized type (a wider
    integer zero point is read as that type)."""
    import numpy as np
    s = op.operand(scale_index)
    sv = s.constant_value() if s is not None else None
    if sv is not None and np.asarray(sv).size:
        a = np.asarray(sv, dtype=np.float64)
        bad = ~np.isfinite(a) | (a <= 0)
        if bad.any():
            raise fail(op, f"scale must be positive and finite, got {a[bad][:4].tolist()}")
    z = op.operand(zp_index) if len(op.operands) > zp_index else None
    zv = z.constant_value() if z is not None else None
    if zv is None or np.asarray(zv).dtype.kind not in "iu":
        return
    dt = op.results[0].type.dtype if op.name == "quantize_linear" else tensor_operand(op, 0).dtype
    if dt not in QUANT_DTYPES or dt.name.startswith("float"):
        return
    import ml_dtypes
    info = ml_dtypes.iinfo(dt.numpy)
    zz = np.asarray(zv).astype(np.int64)
    out = (zz < int(info.min)) | (zz > int(info.max))
    if out.any():
        raise fail(op, f"zero point {zz[out][:4].tolist()} is outside the range "
                       f"[{info.min}, {info.max}] of {dt.name}")


def _quantize(op):
    x = tensor_operand(op, 0)
    s = tensor_operand(op, 1)
    _check_granularity(op, x, s)
    zp = op.operand(2)
    out = op.attr("output_dtype")
    if zp is not None:
        dt = tensor_operand(op, 2).dtype
        if out is not None and out != dt:
            raise fail(op, f"output_dtype {out.name} differs from the zero point's {dt.name}")
    else:
        dt = out or DType.uint8
    if dt not in QUANT_DTYPES:
        raise fail(op, f"cannot quantize to {dt.name}")
    return [x.with_dtype(dt)]


define("quantize_linear", operands=["x", "y_scale", "y_zero_point?"],
       attrs={"axis": attr("int", 1), "saturate": attr("int", 1), "block_size": attr("int", 0),
              "output_dtype": attr("dtype"), "precision": attr("dtype")},
       infer=_quantize, verify=check_constant_params,
       doc="y = saturate(round_half_even(x / y_scale) + y_zero_point); the result dtype is "
           "the zero point's, else output_dtype, else uint8.")


def _dequantize(op):
    x = tensor_operand(op, 0)
    s = tensor_operand(op, 1)
    _check_granularity(op, x, s)
    return [x.with_dtype(op.attr("output_dtype") or s.dtype)]


define("dequantize_linear", operands=["x", "x_scale", "x_zero_point?"],
       attrs={"axis": attr("int", 1), "block_size": attr("int", 0),
              "output_dtype": attr("dtype")},
       infer=_dequantize, verify=check_constant_params, types={"x": "T1", "x_zero_point": "T1", "x_scale": FLOATS},
       doc="y = (x - x_zero_point) * x_scale in the result dtype (output_dtype, else the scale's).")


def _dynamic_quantize(op):
    x = tensor_operand(op, 0)
    return [x.with_dtype(DType.uint8), TensorType(x.dtype, ()), TensorType(DType.uint8, ())]


define("dynamic_quantize_linear", operands=["x"], infer=_dynamic_quantize, num_results=3,
       doc="uint8 quantization with scale and zero point computed from x's range (incl. 0).")


# -- integer matmul / conv -----------------------------------------------------------------
def matmul_shape(op, a: TensorType, b: TensorType):
    """Shape of numpy matmul of a and b (symbolic dims kept), or None for unknown rank."""
    if a.shape is None or b.shape is None:
        return None
    sa, sb = list(a.shape), list(b.shape)
    if not sa or not sb:
        raise fail(op, "matmul operands must have rank >= 1")
    va, vb = len(sa) == 1, len(sb) == 1
    if va:
        sa = [1] + sa
    if vb:
        sb = sb + [1]
    k1, k2 = sa[-1], sb[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise fail(op, f"inner dims differ: {a} @ {b}")
    from .rules import broadcast_shapes
    try:
        batch = broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError as e:
        raise fail(op, f"batch dims of {a} and {b} do not broadcast: {e}") from None
    out = list(batch) + [sa[-2], sb[-1]]
    if vb:
        out.pop(-1)
    if va:
        out.pop(-2 if not vb else -1)
    return tuple(out)


CONV_ATTRS = {"auto_pad": attr("str", "NOTSET"), "dilations": attr("ints"), "group": attr("int", 1),
              "kernel_shape": attr("ints"), "pads": attr("ints"), "strides": attr("ints")}


def conv_shape(op, x: TensorType, w: TensorType):
    """N x M x spatial... output shape of an ONNX Conv (symbolic batch kept)."""
    if x.shape is None:
        return None
    rank = len(x.shape)
    if rank < 3:
        raise fail(op, f"conv input must have rank >= 3, got {x}")
    nsp = rank - 2
    m = w.shape[0] if w.shape is not None else UNKNOWN
    kernel = op.attr("kernel_shape")
    if kernel is None:
        kernel = tuple(w.shape[2:]) if w.shape is not None else (UNKNOWN,) * nsp
    strides = op.attr("strides") or (1,) * nsp
    dil = op.attr("dilations") or (1,) * nsp
    pads = op.attr("pads") or (0,) * (2 * nsp)
    auto = op.attr("auto_pad")
    out = [x.shape[0], m]
    for i in range(nsp):
        d, k = x.shape[2 + i], kernel[i]
        if not isinstance(d, int) or not isinstance(k, int):
            out.append(UNKNOWN)
            continue
        ek = (k - 1) * dil[i] + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-d // strides[i]))
        elif auto == "VALID":
            out.append((d - ek) // strides[i] + 1)
        else:
            out.append((d + pads[i] + pads[i + nsp] - ek) // strides[i] + 1)
    return tuple(out)


INT8S = frozenset({DType.int8, DType.uint8})


def _integer_types(a: str, b: str) -> dict:
    """(a - a_zp) op (b - b_zp): each operand shares its zero point's 8-bit dtype."""
    return {a: ("T1", INT8S), f"{a}_zero_point": "T1", b: ("T2", INT8S), f"{b}_zero_point": "T2"}


def _matmul_integer(op):
    return [TensorType(DType.int32, matmul_shape(op, tensor_operand(op, 0), tensor_operand(op, 1)))]


define("matmul_integer", operands=["a", "b", "a_zero_point?", "b_zero_point?"],
       infer=_matmul_integer, types=_integer_types("a", "b"), doc="(a - a_zp) @ (b - b_zp) accumulated in int32.")


def _conv_integer(op):
    return [TensorType(DType.int32, conv_shape(op, tensor_operand(op, 0), tensor_operand(op, 1)))]


define("conv_integer", operands=["x", "w", "x_zero_point?", "w_zero_point?"], attrs=dict(CONV_ATTRS),
       infer=_conv_integer, types=_integer_types("x", "w"), doc="conv of (x - x_zp) and (w - w_zp) accumulated in int32.")


def _qlinear_types(a: str, b: str) -> dict:
    return {**_integer_types(a, b), f"{a}_scale": ("TS", FLOATS), f"{b}_scale": "TS"}


def _qlinear_matmul(op):
    a, b = tensor_operand(op, 0), tensor_operand(op, 3)
    return [TensorType(tensor_operand(op, 7).dtype, matmul_shape(op, a, b))]


define("qlinear_matmul", operands=["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point",
                                   "y_scale", "y_zero_point"],
       types={**_qlinear_types("a", "b"), "y_scale": "TS"},
       infer=_qlinear_matmul, doc="quantized matmul: requantize(dequant(a) @ dequant(b)).")


def _qlinear_conv(op):
    x, w = tensor_operand(op, 0), tensor_operand(op, 3)
    return [TensorType(tensor_operand(op, 7).dtype, conv_shape(op, x, w))]


define("qlinear_conv", operands=["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point",
                                 "y_scale", "y_zero_point", "bias?"],
       attrs=dict(CONV_ATTRS), infer=_qlinear_conv,
       types={**_qlinear_types("x", "w"), "y_scale": "TS", "bias": INT32},
       doc="quantized conv: requantize(conv(dequant(x), dequant(w)) + bias*x_scale*w_scale).")
