"""Quantize / dequantize over every element type ONNX quantizes to (lowering in
lower_qnodes.py): 8- and 16-bit integers, int4 / uint4 and int2 / uint2 (ml_dtypes holds
them one per byte, the value's bits in the low bits), float8 e4m3fn / e5m2 and float4
e2m1; scales float32 or float16; per tensor, per axis or blocked (``block_size``).

The arithmetic is the numpy reference's (galaxir/reference/kernels/quant.py): ``x / scale``
in the input's float type, round half to even, add the zero point, saturate, store;
dequantize ``(x - zero_point) * scale`` in float32, then the result type.  The float
formats decode through a table built from ml_dtypes, and encode by rounding to the
format's grid (``rint(a / ulp) * ulp`` is exact in float32 for these narrow formats) and
assembling the bits, with ml_dtypes' own codes for NaN and overflow.  The int8 / uint8
per-tensor and per-axis float32 cases keep kernels_int8.Quantize / Dequantize.

A run-time scale is checked in native code first: a non-positive or non-finite one stops
the call with an ExecutionError, as the reference raises.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import llvmlite.ir as ir
import ml_dtypes
import numpy as np

from .codegen import F32, F64, I8, I32, I64, FnBuilder, i64
from .kernels import Kernel
from .kernels_f16 import HALF

I8P = I8.as_pointer()
I16 = ir.IntType(16)

#: integer element types: dtype name -> (storage type, signed, bits)
INTS = {"uint8": (I8, False, 8), "int8": (I8, True, 8), "uint16": (I16, False, 16),
        "int16": (I16, True, 16), "uint4": (I8, False, 4), "int4": (I8, True, 4),
        "uint2": (I8, False, 2), "int2": (I8, True, 2), "int32": (I32, True, 32)}
#: narrow float element types: dtype name -> ml_dtypes type
FLOATS = {"float8e4m3fn": ml_dtypes.float8_e4m3fn, "float8e5m2": ml_dtypes.float8_e5m2,
          "float4e2m1": ml_dtypes.float4_e2m1fn}
#: the float types of x / scales / results
WIDE = {"float32": F32, "float16": HALF}
#: quantized types (integers but int32: that one is only dequantized)
QUANT = (set(INTS) - {"int32"}) | set(FLOATS)


def int_range(dtype: str) -> tuple[int, int]:
    _, signed, bits = INTS[dtype]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


@lru_cache(maxsize=None)
def float_format(dtype: str) -> dict:
    """Mantissa bits, exponent bias, largest finite value, and the ml_dtypes codes of NaN
    and of +-overflow (inf, or NaN for the formats without inf) for each sign."""
    t = FLOATS[dtype]
    fi = ml_dtypes.finfo(t)
    n = 16 if fi.nexp + fi.nmant + 1 <= 4 else 256

    def code(v):
        with np.errstate(all="ignore"):
            return int(np.array([v], np.float32).astype(t).view(np.uint8)[0])
    return dict(M=int(fi.nmant), emin=int(fi.minexp), max=float(fi.max), bits=fi.nexp + fi.nmant + 1,
                table=np.arange(n, dtype=np.uint8).view(t).astype(np.float32),
                nan=(code(np.nan), code(-np.nan)), ovf=(code(np.inf), code(-np.inf)))


# -- element access ----------------------------------------------------------------------------
def _table(fb: FnBuilder, dtype: str):
    name = f"gx_qdecode_{dtype}"
    g = fb.module.globals.get(name)
    if g is None:
        tab = float_format(dtype)["table"]
        ty = ir.ArrayType(F32, len(tab))
        g = ir.GlobalVariable(fb.module, ty, name)
        g.global_constant = True
        g.linkage = "internal"
        g.initializer = ir.Constant(ty, [ir.Constant(F32, float(v)) for v in tab])
    return g


def load_int(fb: FnBuilder, base, idx, dtype: str):
    """Element ``idx`` of an integer buffer as i32 (sub-byte values sign- or zero-extended
    from their low bits)."""
    b = fb.b
    ty, signed, bits = INTS[dtype]
    v = fb.load(base, idx, ty)
    if bits < 8:
        sh = ir.Constant(I8, 8 - bits)
        v = b.ashr(b.shl(v, sh), sh) if signed else b.and_(v, ir.Constant(I8, (1 << bits) - 1))
    if ty == I32:
        return v
    return b.sext(v, I32) if signed else b.zext(v, I32)


def load_f32(fb: FnBuilder, base, idx, dtype: str):
    """Element ``idx`` of a buffer of ``dtype`` (any of INTS, FLOATS, WIDE) as float32."""
    b = fb.b
    if dtype == "float32":
        return fb.load(base, idx, F32)
    if dtype == "float16":
        return b.fpext(fb.load(base, idx, HALF), F32)
    if dtype in FLOATS:
        code = b.zext(fb.load(base, idx, I8), I64)
        if len(float_format(dtype)["table"]) == 16:
            code = b.and_(code, i64(15))
        return b.load(b.gep(_table(fb, dtype), [i64(0), code], inbounds=True))
    v = load_int(fb, base, idx, dtype)
    return b.sitofp(v, F32) if INTS[dtype][1] or dtype == "int32" else b.uitofp(v, F32)


def store_wide(fb: FnBuilder, v, base, idx, dtype: str) -> None:
    """Store the float32 ``v`` as float32 or (rounded) float16."""
    if dtype == "float16":
        fb.store(fb.b.fptrunc(v, HALF), base, idx, HALF)
    else:
        fb.store(v, base, idx, F32)


def round_wide(fb: FnBuilder, v, dtype: str):
    """The float32 ``v`` rounded to ``dtype`` (float16: one rounding, as numpy's float16
    arithmetic does), back as float32."""
    if dtype == "float16":
        return fb.b.fpext(fb.b.fptrunc(v, HALF), F32)
    return v


def _fmin_keep_nan(b, v, lo: float, hi: float):
    """clip(v, lo, hi) with NaN kept (np.clip)."""
    v = b.select(b.fcmp_ordered(">", v, ir.Constant(v.type, hi)), ir.Constant(v.type, hi), v)
    return b.select(b.fcmp_ordered("<", v, ir.Constant(v.type, lo)), ir.Constant(v.type, lo), v)


def store_int(fb: FnBuilder, q, base, idx, dtype: str) -> None:
    """rint'ed float64 ``q`` saturated to ``dtype`` and stored; NaN stores 0 (numpy's cast
    on x86)."""
    b = fb.b
    ty, _, bits = INTS[dtype]
    lo, hi = int_range(dtype)
    q = _fmin_keep_nan(b, q, float(lo), float(hi))
    q = b.select(b.fcmp_unordered("uno", q, q), ir.Constant(F64, 0.0), q)
    v = b.trunc(b.fptosi(q, I32), ty)
    if bits < 8:
        v = b.and_(v, ir.Constant(I8, (1 << bits) - 1))
    fb.store(v, base, idx, ty)


def encode_float(fb: FnBuilder, q, dtype: str):
    """The float32 ``q`` as the ml_dtypes code (i8) of ``dtype``: round half to even onto
    the format's grid, then sign | exponent | mantissa; overflow and NaN as ml_dtypes."""
    b = fb.b
    f = float_format(dtype)
    M, emin = f["M"], f["emin"]
    bias = 1 - emin
    bits = b.bitcast(q, I32)
    neg = b.icmp_signed("<", bits, ir.Constant(I32, 0))
    a = b.bitcast(b.and_(bits, ir.Constant(I32, 0x7FFFFFFF)), F32)
    e = b.sub(b.and_(b.lshr(b.bitcast(a, I32), ir.Constant(I32, 23)), ir.Constant(I32, 0xFF)),
              ir.Constant(I32, 127))
    e = b.select(b.icmp_signed("<", e, ir.Constant(I32, emin)), ir.Constant(I32, emin), e)
    e = b.select(b.icmp_signed(">", e, ir.Constant(I32, 127)), ir.Constant(I32, 127), e)
    ulp = b.bitcast(b.shl(b.add(e, ir.Constant(I32, 127 - M)), ir.Constant(I32, 23)), F32)
    steps = fb.intrinsic("llvm.rint.f32", F32, [b.fdiv(a, ulp)])
    v = b.fmul(steps, ulp)                       # the rounded magnitude (exact)
    vb = b.bitcast(v, I32)
    normal = b.or_(
        b.shl(b.add(b.sub(b.lshr(vb, ir.Constant(I32, 23)), ir.Constant(I32, 127)),
                    ir.Constant(I32, bias)), ir.Constant(I32, M)),
        b.and_(b.lshr(vb, ir.Constant(I32, 23 - M)), ir.Constant(I32, (1 << M) - 1)))
    tiny = b.fptosi(b.fdiv(v, ir.Constant(F32, 2.0 ** (emin - M))), I32)   # subnormal steps
    mag = b.select(b.fcmp_ordered("<", v, ir.Constant(F32, 2.0 ** emin)), tiny, normal)
    sign = b.select(neg, ir.Constant(I32, 1 << (f["bits"] - 1)), ir.Constant(I32, 0))
    code = b.or_(mag, sign)
    ovf = b.select(neg, ir.Constant(I32, f["ovf"][1]), ir.Constant(I32, f["ovf"][0]))
    code = b.select(b.fcmp_ordered(">", v, ir.Constant(F32, f["max"])), ovf, code)
    nan = b.select(neg, ir.Constant(I32, f["nan"][1]), ir.Constant(I32, f["nan"][0]))
    code = b.select(b.fcmp_unordered("uno", q, q), nan, code)
    return b.trunc(code, I8)


# -- the kernels -------------------------------------------------------------------------------
@dataclass
class _Params:
    """The ``[outer, C, inner]`` view of x and where its scale / zero point sit: ``mode``
    "tensor" (one), "axis" (one per c) or "block" (one per ``block`` c's, the parameter
    shaped ``[outer, ceil(C / block), inner]``)."""

    outer: int
    C: int
    inner: int
    mode: str
    block: int

    @property
    def n_params(self) -> int:
        if self.mode == "tensor":
            return 1
        if self.mode == "axis":
            return self.C
        return self.outer * -(-self.C // self.block) * self.inner

    def index(self, fb, o, c, i):
        b = fb.b
        if self.mode == "tensor":
            return i64(0)
        if self.mode == "axis":
            return c
        cb = b.sdiv(c, i64(self.block))
        return fb.mul_add([(o, -(-self.C // self.block) * self.inner), (cb, self.inner), (i, 1)])

    def loop(self, fb, body) -> None:
        with fb.loop(0, self.outer) as o:
            with fb.loop(0, self.C) as c:
                with fb.loop(0, self.inner) as i:
                    body(fb.mul_add([(o, self.C * self.inner), (c, self.inner), (i, 1)]),
                         self.index(fb, o, c, i))


def check_scales(fb: FnBuilder, sc, n: int, dtype: str) -> None:
    """Return 1 (the kernel's failure) unless all ``n`` scales are positive and finite."""
    b = fb.b
    with fb.loop(0, n) as k:
        s = load_f32(fb, sc, k, dtype)
        ok = b.and_(b.fcmp_ordered(">", s, ir.Constant(F32, 0.0)),
                    b.fcmp_ordered("<", s, ir.Constant(F32, float("inf"))))
        fb.fail_if(b.not_(ok))


@dataclass
class _ScaledT(Kernel):
    """What QuantizeT and DequantizeT share: the [outer, C, inner] layout of x with one
    scale (and zero point) per ``mode`` / ``block`` (``_Params``), the four dtypes, and
    an entry that refuses scales that are not positive and finite."""

    outer: int
    C: int
    inner: int
    mode: str
    block: int
    x_dtype: str
    s_dtype: str
    zp_dtype: str | None
    out_dtype: str
    fallible = True

    def key(self):
        return (self.name,) + tuple(getattr(self, f) for f in self.__dataclass_fields__)

    def _start(self, module, fname, n_args):
        """The function, its (out, x, scale, zero point or None) and the ``_Params``
        loop, after the scale check."""
        fb = FnBuilder(module, fname, [I8P] * n_args, ret=I64)
        out, x, sc = fb.args[:3]
        zp = fb.args[3] if self.zp_dtype is not None else None
        p = _Params(self.outer, self.C, self.inner, self.mode, self.block)
        check_scales(fb, sc, p.n_params, self.s_dtype)
        return fb, (out, x, sc, zp), p


@dataclass
class QuantizeT(_ScaledT):
    """QuantizeLinear to any QUANT type.  Buffers: out, x, scale[, zero point]."""

    saturate: bool = True
    name: str = "quantize_typed"

    def failure(self) -> str:
        return "quantize_linear: scale must be positive and finite"

    def emit(self, module, fname, n_args):
        fb, (out, x, sc, zp), p = self._start(module, fname, n_args)
        b = fb.b
        odt = self.out_dtype

        def body(idx, pi):
            s = load_f32(fb, sc, pi, self.s_dtype)
            # x / scale in x's type (the reference divides in numpy's promoted type)
            q = round_wide(fb, b.fdiv(load_f32(fb, x, idx, self.x_dtype), s),
                           "float16" if self.x_dtype == self.s_dtype == "float16" else "float32")
            if odt in INTS:
                r = b.fpext(fb.intrinsic("llvm.rint.f32", F32, [q]), F64)
                if zp is not None:
                    r = b.fadd(r, b.sitofp(load_int(fb, zp, pi, self.zp_dtype), F64))
                store_int(fb, r, out, idx, odt)
                return
            m = float_format(odt)["max"]
            if odt == "float4e2m1":       # the zero point counts; ml_dtypes saturates
                if zp is not None:
                    q = b.fadd(q, load_f32(fb, zp, pi, self.zp_dtype))
                q = _fmin_keep_nan(b, q, -m, m)
            elif self.saturate:
                q = _fmin_keep_nan(b, q, -m, m)
            fb.store(encode_float(fb, q, odt), out, idx, I8)
        p.loop(fb, body)
        return fb.finish()


@dataclass
class DequantizeT(_ScaledT):
    """DequantizeLinear from any QUANT type or int32 to float32 / float16.  Buffers: out,
    x, scale[, zero point] (the float formats ignore their zero point, as the reference)."""

    name: str = "dequantize_typed"

    def failure(self) -> str:
        return "dequantize_linear: scale must be positive and finite"

    def emit(self, module, fname, n_args):
        fb, (out, x, sc, zp), p = self._start(module, fname, n_args)
        b = fb.b

        def body(idx, pi):
            v = load_f32(fb, x, idx, self.x_dtype)
            if zp is not None:
                v = b.fsub(v, load_f32(fb, zp, pi, self.zp_dtype))
            store_wide(fb, b.fmul(v, load_f32(fb, sc, pi, self.s_dtype)), out, idx, self.out_dtype)
        p.loop(fb, body)
        return fb.finish()


@dataclass
class DynamicQuantize(Kernel):
    """DynamicQuantizeLinear on ``n`` float32 values: the range (with 0) over x, scale =
    range / 255, zero point = rint(clip(-min / scale, 0, 255)), then x quantized to uint8,
    all in float32 as the reference.  A NaN makes the range [0, 0] there too (np.max gives
    NaN, and Python's max(0.0, nan) is 0.0).  Buffers: y, scale, zero point, x."""

    n: int
    s_dtype: str = "float32"
    name: str = "dynamic_quantize"
    n_results = 3

    def key(self):
        return ("dynamic_quantize", self.n, self.s_dtype)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args)
        y, so, zo, x = fb.args[:4]
        b = fb.b
        s, z = dynamic_params(fb, x, self.n)
        store_wide(fb, s, so, i64(0), self.s_dtype)
        fb.store(b.trunc(b.fptosi(z, I32), I8), zo, i64(0), I8)
        quantize_u8(fb, x, y, self.n, s, z)
        return fb.finish()


def dynamic_params(fb: FnBuilder, x, n: int):
    """(scale, zero point) of DynamicQuantizeLinear over ``n`` float32 values, both float32
    and computed as the reference does."""
    b = fb.b
    zero = ir.Constant(F32, 0.0)
    h, l_, any_nan = _range(fb, x, n)
    h = b.select(any_nan, zero, h)
    l_ = b.select(any_nan, zero, l_)
    rng = b.fsub(h, l_)
    rng = b.select(b.fcmp_ordered("==", rng, zero), ir.Constant(F32, 1.0), rng)
    s = b.fdiv(rng, ir.Constant(F32, 255.0))
    z = _fmin_keep_nan(b, b.fsub(zero, b.fdiv(l_, s)), 0.0, 255.0)
    return s, fb.intrinsic("llvm.rint.f32", F32, [z])


#: lanes of the explicit float32 vectors of the range pass
RANGE_LANES = 16


def _range(fb: FnBuilder, x, n: int):
    """(max(x, 0), min(x, 0), any NaN) over ``n`` float32 values: ``RANGE_LANES``-wide
    vectors, then the lanes and the tail (min / max are exact, so the order is free; NaN
    never wins a compare and sets the flag)."""
    b = fb.b
    L = RANGE_LANES
    vty = ir.VectorType(F32, L)
    bty = ir.VectorType(ir.IntType(1), L)
    zv = ir.Constant(vty, [0.0] * L)
    hi, lo = fb.alloca(vty, zv), fb.alloca(vty, zv)
    nan = fb.alloca(bty, ir.Constant(bty, [0] * L))
    xv = b.bitcast(x, vty.as_pointer())
    with fb.loop(0, n // L) as i:
        v = b.load(b.gep(xv, [i]), align=4)
        h, l_ = b.load(hi), b.load(lo)
        b.store(b.select(b.fcmp_ordered(">", v, h), v, h), hi)
        b.store(b.select(b.fcmp_ordered("<", v, l_), v, l_), lo)
        b.store(b.or_(b.load(nan), b.fcmp_unordered("uno", v, v)), nan)
    i1 = ir.IntType(1)
    zero = ir.Constant(F32, 0.0)
    sh, sl, sn = fb.alloca(F32, zero), fb.alloca(F32, zero), fb.alloca(i1, ir.Constant(i1, 0))

    def take(v):
        h, l_ = b.load(sh), b.load(sl)
        b.store(b.select(b.fcmp_ordered(">", v, h), v, h), sh)
        b.store(b.select(b.fcmp_ordered("<", v, l_), v, l_), sl)
        b.store(b.or_(b.load(sn), b.fcmp_unordered("uno", v, v)), sn)
    hv, lv, nv = b.load(hi), b.load(lo), b.load(nan)
    for k in range(L):
        take(b.extract_element(hv, ir.Constant(I32, k)))
        take(b.extract_element(lv, ir.Constant(I32, k)))
        b.store(b.or_(b.load(sn), b.extract_element(nv, ir.Constant(I32, k))), sn)
    with fb.loop(n // L * L, n) as i:
        take(fb.load(x, i, F32))
    return b.load(sh), b.load(sl), b.load(sn)


def quantize_u8(fb: FnBuilder, x, y, n: int, s, z) -> None:
    """y[i] = clip(rint(x[i] / s) + z, 0, 255) as uint8 (NaN stores 0), in float32 as the
    reference; a select chain without branches, so LLVM vectorizes it."""
    b = fb.b
    zero = ir.Constant(F32, 0.0)
    with fb.loop(0, n) as i:
        q = fb.intrinsic("llvm.rint.f32", F32, [b.fdiv(fb.load(x, i, F32), s)])
        q = _fmin_keep_nan(b, b.fadd(q, z), 0.0, 255.0)
        q = b.select(b.fcmp_unordered("uno", q, q), zero, q)
        fb.store(b.trunc(b.fptosi(q, I32), I8), y, i, I8)
