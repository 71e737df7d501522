"""MatMulInteger / QLinearMatMul and ConvInteger / QLinearConv whose weights, scales or
zero points are run-time tensors (lowering in lower_qnodes.py).  kernels_int8.QGemm packs
constant weights ahead of time; these read every operand as it comes: a direct int32
multiply-accumulate of ``(x - x_zp) * (w - w_zp)``, then (QLinear) the reference's
requantization: the factor ``x_scale * w_scale / y_scale`` in the scales' own type
(float32 or float16, rounded after each operation as numpy does), ``acc * factor + y_zp``
in float64, round half to even, saturate.  Zero points and scales per tensor, per row of
A / column of B (matmul) or per output channel (conv).  Run-time scales are checked first
(positive and finite), as the reference does.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from .codegen import F64, I8, I32, I64, FnBuilder, i64
from .kernels import Kernel
from .kernels_qtypes import check_scales, load_f32, load_int, round_wide, store_int

I8P = I8.as_pointer()


def _factor(fb, ss, s_dtype):
    """(sa * sb) / sy in the scales' type (float32 values in, float64 out)."""
    b = fb.b
    sa, sb, sy = ss
    f = round_wide(fb, b.fmul(sa, sb), s_dtype)
    return b.fpext(round_wide(fb, b.fdiv(f, sy), s_dtype), F64)


def _requant_store(fb, acc, factor, zy, out, idx, out_dtype):
    b = fb.b
    r = b.fadd(b.fmul(b.sitofp(acc, F64), factor), zy)
    store_int(fb, fb.intrinsic("llvm.rint.f64", F64, [r]), out, idx, out_dtype)


@dataclass
class QMatMulRT(Kernel):
    """``out[batch, m, n]`` of A ``[.., M, K]`` and B ``[.., K, N]`` (batch dims broadcast
    through ``a_strides`` / ``b_strides``, element strides of each batch dim, 0 where
    broadcast).  ``qlinear``: buffers out, a, sa, za, b, sb, zb, sy, zy; else out, a, b
    and the zero points present (``za`` / ``zb`` sizes, 0 when absent)."""

    batch: tuple
    a_strides: tuple
    b_strides: tuple
    M: int
    K: int
    N: int
    a_dtype: str
    b_dtype: str
    qlinear: bool
    za: int             # zero point / scale sizes: 0 absent, 1 per tensor, M (a) or N (b)
    zb: int
    sa: int = 0
    sb: int = 0
    s_dtype: str = "float32"
    out_dtype: str = "int32"
    name: str = "qmatmul_rt"
    fallible = True

    def key(self):
        return ("qmatmul_rt",) + tuple(getattr(self, f) for f in self.__dataclass_fields__)

    @property
    def scratch_bytes(self) -> int:
        return 4 * self.N

    def failure(self) -> str:
        return "qlinear_matmul: scale must be positive and finite"

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args, ret=I64)
        b = fb.b
        args = list(fb.args)
        out = args[0]
        if self.qlinear:
            a, sa, za, bb, sb, zb, sy, zy = args[1:9]
            check_scales(fb, sa, self.sa, self.s_dtype)
            check_scales(fb, sb, self.sb, self.s_dtype)
            check_scales(fb, sy, 1, self.s_dtype)
            zyv = b.sitofp(load_int(fb, zy, i64(0), self.out_dtype), F64)
        else:
            a, bb = args[1], args[2]
            rest = args[3:-1]
            za = rest.pop(0) if self.za else None
            zb = rest.pop(0) if self.zb else None
        M, K, N = self.M, self.K, self.N

        def per(n_params, full, i):
            return i if n_params == full and full != 1 else i64(0)

        acc = fb.args[-1]       # scratch: one int32 row of the result

        def body(bidx):
            a0 = fb.mul_add(list(zip(bidx, self.a_strides)))
            b0 = fb.mul_add(list(zip(bidx, self.b_strides)))
            o0 = fb.mul_add(list(zip(bidx, _contig(self.batch, M * N))))
            with fb.loop(0, M) as m:
                zam = load_int(fb, za, per(self.za, M, m), self.a_dtype) if za is not None \
                    else ir.Constant(I32, 0)
                with fb.loop(0, N) as n:
                    fb.store(ir.Constant(I32, 0), acc, n, I32)
                # k outside n: the inner loop walks a row of B and the accumulators (vectorizes)
                with fb.loop(0, K) as k:
                    av = b.sub(load_int(fb, a, b.add(a0, fb.mul_add([(m, K), (k, 1)])), self.a_dtype), zam)
                    brow = b.add(b0, fb.mul_add([(k, N)]))
                    with fb.loop(0, N) as n:
                        bv = load_int(fb, bb, b.add(brow, n), self.b_dtype)
                        if zb is not None:
                            bv = b.sub(bv, load_int(fb, zb, per(self.zb, N, n), self.b_dtype))
                        fb.store(b.add(fb.load(acc, n, I32), b.mul(av, bv)), acc, n, I32)
                with fb.loop(0, N) as n:
                    idx = b.add(o0, fb.mul_add([(m, N), (n, 1)]))
                    if not self.qlinear:
                        fb.store(fb.load(acc, n, I32), out, idx, I32)
                    else:
                        ss = (load_f32(fb, sa, per(self.sa, M, m), self.s_dtype),
                              load_f32(fb, sb, per(self.sb, N, n), self.s_dtype),
                              load_f32(fb, sy, i64(0), self.s_dtype))
                        _requant_store(fb, fb.load(acc, n, I32), _factor(fb, ss, self.s_dtype), zyv,
                                       out, idx, self.out_dtype)
        fb.loop_nest(list(self.batch), body)
        return fb.finish()


def _contig(shape, inner: int) -> list[int]:
    st, acc = [], inner
    for d in reversed(shape):
        st.append(acc)
        acc *= int(d)
    return st[::-1]


@dataclass
class QConvRT(Kernel):
    """2-d NCHW convolution (1-d as H = 1) of 8-bit x and w, any group count, pads,
    strides and dilations.  ``qlinear``: buffers out, x, sx, zx, w, sw, zw, sy, zy[, bias]
    (``zw`` / ``sw``: 1 or M values); else out, x, w[, zx][, zw]."""

    N: int
    C: int
    H: int
    W: int
    M: int
    OH: int
    OW: int
    kh: int
    kw: int
    sh: int
    sw_: int
    dh: int
    dw: int
    pt: int
    pl: int
    group: int
    x_dtype: str
    w_dtype: str
    qlinear: bool
    zx: bool
    zw: int             # 0 absent, 1 per tensor, M per output channel
    s_w: int = 0
    bias: bool = False
    s_dtype: str = "float32"
    out_dtype: str = "int32"
    name: str = "qconv_rt"
    fallible = True

    def key(self):
        return ("qconv_rt",) + tuple(getattr(self, f) for f in self.__dataclass_fields__)

    @property
    def scratch_bytes(self) -> int:
        return 4 * self.OW

    def _cols(self, s: int) -> tuple[int, int]:
        """The output columns whose tap ``s`` reads inside the row: ``0 <= ow * sw - pl +
        s * dw < W``."""
        off = s * self.dw - self.pl
        lo = max(0, -(off // self.sw_) if off < 0 else 0)
        hi = min(self.OW, (self.W - 1 - off) // self.sw_ + 1) if self.W - 1 - off >= 0 else 0
        return lo, hi

    def failure(self) -> str:
        return "qlinear_conv: scale must be positive and finite"

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args, ret=I64)
        b = fb.b
        args = list(fb.args)
        out = args[0]
        bias = None
        if self.qlinear:
            x, sx, zx, w, sw, zw, sy, zy = args[1:9]
            if self.bias:
                bias = args[9]      # (the scratch row is the last argument)
            check_scales(fb, sx, 1, self.s_dtype)
            check_scales(fb, sw, self.s_w, self.s_dtype)
            check_scales(fb, sy, 1, self.s_dtype)
            zyv = b.sitofp(load_int(fb, zy, i64(0), self.out_dtype), F64)
        else:
            x, w = args[1], args[2]
            rest = args[3:-1]
            zx = rest.pop(0) if self.zx else None
            zw = rest.pop(0) if self.zw else None
        acc = fb.args[-1]       # scratch: one int32 output row
        zxv = load_int(fb, zx, i64(0), self.x_dtype) if zx is not None else ir.Constant(I32, 0)
        cg, mg = self.C // self.group, self.M // self.group
        H, W = self.H, self.W
        with fb.loop(0, self.N) as n:
            with fb.loop(0, self.M) as m:
                g = b.sdiv(m, i64(mg))
                zwm = ir.Constant(I32, 0) if zw is None else load_int(
                    fb, zw, m if self.zw == self.M and self.M != 1 else i64(0), self.w_dtype)
                with fb.loop(0, self.OH) as oh:
                    with fb.loop(0, self.OW) as ow:
                        fb.store(ir.Constant(I32, 0) if bias is None else fb.load(bias, m, I32), acc, ow, I32)
                    with fb.loop(0, cg) as c:
                        ch = b.add(b.mul(g, i64(cg)), c)
                        with fb.loop(0, self.kh) as r:
                            ih = b.add(b.sub(b.mul(oh, i64(self.sh)), i64(self.pt)), b.mul(r, i64(self.dh)))
                            inside = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(H)))
                            with fb.if_(inside):
                                xrow = fb.mul_add([(n, self.C * H * W), (ch, H * W), (ih, W)])
                                for s_ in range(self.kw):   # unrolled: each tap's valid columns are known
                                    lo, hi = self._cols(s_)
                                    if lo >= hi:
                                        continue
                                    wi = fb.mul_add([(m, cg * self.kh * self.kw), (c, self.kh * self.kw),
                                                     (r, self.kw)], s_)
                                    wv = b.sub(load_int(fb, w, wi, self.w_dtype), zwm)
                                    with fb.loop(lo, hi) as ow:
                                        iw = b.add(xrow, fb.mul_add([(ow, self.sw_)], s_ * self.dw - self.pl))
                                        xv = b.sub(load_int(fb, x, iw, self.x_dtype), zxv)
                                        fb.store(b.add(fb.load(acc, ow, I32), b.mul(xv, wv)), acc, ow, I32)
                    with fb.loop(0, self.OW) as ow:
                        idx = fb.mul_add([(n, self.M * self.OH * self.OW), (m, self.OH * self.OW),
                                          (oh, self.OW), (ow, 1)])
                        if not self.qlinear:
                            fb.store(fb.load(acc, ow, I32), out, idx, I32)
                        else:
                            ss = (load_f32(fb, sx, i64(0), self.s_dtype),
                                  load_f32(fb, sw, m if self.s_w == self.M and self.M != 1 else i64(0),
                                           self.s_dtype),
                                  load_f32(fb, sy, i64(0), self.s_dtype))
                            _requant_store(fb, fb.load(acc, ow, I32), _factor(fb, ss, self.s_dtype), zyv,
                                           out, idx, self.out_dtype)
        return fb.finish()



@dataclass
class RuntimeZeroPoint(Kernel):
    """``matmul_integer`` with constant weights and x's zero point read at run time (the
    zero point dynamic quantization computes): the packed int8 kernel (``inner``, a
    kernels_int8.QGemm built for zero point 0 and int32 output) with ``- zx * colsum[n]``,
    ``colsum = sum_k (w - zw)``, folded into its per-column corrections first, so its own
    store applies it (no second pass over the result): exact in wrapping int32
    arithmetic, as (x - zx) @ (w - zw) = x @ (w - zw) - zx * colsum.  Buffers: out, x,
    packed, corrections (``n_corr`` int32, the first N per column), colsum (int32 [N]),
    zx, then scratch (the corrected copy, then the inner kernel's)."""

    inner: Kernel
    M: int
    N: int
    zx_dtype: str
    n_corr: int = 0
    name: str = "qgemm_runtime_zp"

    def key(self):
        return ("qgemm_runtime_zp", self.inner.key(), self.M, self.N, self.zx_dtype, self.n_corr)

    @property
    def corr_bytes(self) -> int:
        return -(-4 * self.n_corr // 64) * 64

    @property
    def scratch_bytes(self) -> int:
        return self.corr_bytes + self.inner.scratch_bytes

    def emit(self, module, fname, n_args):
        has_scratch = bool(self.inner.scratch_bytes)
        inner = self.inner.emit(module, fname + "_packed", 4 + has_scratch)
        fb = FnBuilder(module, fname, [I8P] * n_args)
        b = fb.b
        out, x, pk, corr, colsum, zx, scratch = fb.args[:7]
        z = load_int(fb, zx, i64(0), self.zx_dtype)
        with fb.loop(0, self.n_corr) as n:
            fb.store(fb.load(corr, n, I32), scratch, n, I32)
        with fb.loop(0, self.N) as n:
            fix = b.mul(z, fb.load(colsum, n, I32))
            fb.store(b.sub(fb.load(scratch, n, I32), fix), scratch, n, I32)
        args = [out, x, pk, scratch] + ([b.gep(scratch, [i64(self.corr_bytes)])] if has_scratch else [])
        b.call(inner, [b.bitcast(a, t.type) for a, t in zip(args, inner.args)])
        return fb.finish()


@dataclass
class RuntimeZeroPointConv(Kernel):
    """``conv_integer`` with constant weights and x's zero point read at run time: the
    packed conv (``inner``, a kernels_int8.QGemm for zero point 0, so padding reads 0, and
    int32 output) gives the sum over each output's valid taps of ``x * (w - zw)``; minus
    ``zx * T[m, oh, ow]``, T the sum of ``w - zw`` over those same valid taps, which depends
    on the output position only through which kernel rows and columns fall inside the
    image: T is stored per (row class, column class), ``hcls[oh]`` / ``wcls[ow]``.  Exact
    in wrapping int32 arithmetic.  Buffers: out, x, packed, corrections, table (int32
    [M, nh, nw]), hcls (int32 [OH]), wcls (int32 [OW]), zx, then the inner kernel's
    scratch."""

    inner: Kernel
    N: int
    M: int
    OH: int
    OW: int
    nh: int
    nw: int
    zx_dtype: str
    name: str = "qconv_runtime_zp"

    def key(self):
        return ("qconv_runtime_zp", self.inner.key(), self.N, self.M, self.OH, self.OW, self.nh,
                self.nw, self.zx_dtype)

    @property
    def scratch_bytes(self) -> int:
        return self.inner.scratch_bytes

    def emit(self, module, fname, n_args):
        has_scratch = bool(self.inner.scratch_bytes)
        inner = self.inner.emit(module, fname + "_packed", 4 + has_scratch)
        fb = FnBuilder(module, fname, [I8P] * n_args)
        b = fb.b
        out, x, pk, corr, table, hcls, wcls, zx = fb.args[:8]
        args = [out, x, pk, corr] + ([fb.args[8]] if has_scratch else [])
        b.call(inner, [b.bitcast(a, t.type) for a, t in zip(args, inner.args)])
        z = load_int(fb, zx, i64(0), self.zx_dtype)
        with fb.loop(0, self.N) as n, fb.loop(0, self.M) as m:
            with fb.loop(0, self.OH) as oh:
                trow = fb.mul_add([(m, self.nh * self.nw)])
                trow = b.add(trow, b.mul(b.sext(fb.load(hcls, oh, I32), I64), i64(self.nw)))
                orow = fb.mul_add([(n, self.M * self.OH * self.OW), (m, self.OH * self.OW),
                                   (oh, self.OW)])
                with fb.loop(0, self.OW) as ow:
                    t = fb.load(table, b.add(trow, b.sext(fb.load(wcls, ow, I32), I64)), I32)
                    idx = b.add(orow, ow)
                    fb.store(b.sub(fb.load(out, idx, I32), b.mul(z, t)), out, idx, I32)
        return fb.finish()
