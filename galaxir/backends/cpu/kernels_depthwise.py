"""Depthwise convolution on channels-last tensors (MobileNet, EfficientNet, ConvNeXt), and
grouped convolution with 2-8 channels per group (RegNet, ResNeXt).

A depthwise conv does ``kh * kw`` multiply-adds per output element and reads each input
pixel ``kh * kw`` times, so it is bound by loads, not FMAs.  The kernel keeps the loads
down and the FMA units busy:

* one ``<16 x float>`` (AVX-512; ``<8 x float>`` without, ``GALAXIR_CPU_WIDE`` overrides)
  holds 16 channels of one output pixel;
* several output pixels of a row (8 with 16 lanes, 6 with 8) accumulate at once: per
  kernel row, each input column the group touches is loaded once and each tap's weights
  once, then reused for every pixel (7x7, stride 1: 14 + 7 loads for 56 FMAs instead of
  2 x 56);
* the interior of a row (every tap inside the image) has no bounds checks; only the few
  border pixels select a zero vector for taps in the padding, and rows of padding are
  skipped;
* one task per output row, spread over the worker pool;
* with cg > 1 channels per group, each input vector is still loaded once, and lane l
  takes input channel q of its own group through a shuffle (cg FMAs per tap).

Every output channel is one FMA chain over the taps in (row, column) order, then bias,
residual and activation, whatever its pixel's position in a group.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from .codegen import F32, i64
from .kernels import Kernel, _act_expr_of, _fma_vec, _max, _min, apply_activation_v8, emit_expr
from .window import Window2d, interior_columns  # noqa: F401 - interior_columns: re-exported


def _lanes() -> int:
    from .kernels_nhwc import wide_tiles
    return 16 if wide_tiles() else 8


def pack_depthwise_nhwc(w):
    """Weights [C, cg, kh, kw] of a conv with cg input and cg output channels per group
    (cg = 1: depthwise) -> [kh, kw, cg, C]: the weights of input channel q of each output
    channel's group, contiguous over the output channels."""
    import numpy as np
    return np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 1, 0))


#: groups of at most this many channels (and as many outputs) run on DepthwiseNhwc; wider
#: ones fill the 16 columns of ConvNhwc's GEMM panels
MAX_DIRECT_GROUP = 8


def direct_group_ok(C: int, M: int, group: int) -> bool:
    """Whether DepthwiseNhwc computes this conv: cg input and cg output channels per group
    with cg in 1, 2, 4, 8 (a vector block then always starts at a group's first channel)."""
    cg = C // group
    return group > 1 and C == M and C % group == 0 and cg in (1, 2, 4, MAX_DIRECT_GROUP)


def _vtype(width: int):
    return F32 if width == 1 else ir.VectorType(F32, width)


def _vload(fb, ptr, width):
    b = fb.b
    if width == 1:
        return b.load(ptr, align=4)
    return b.load(b.bitcast(ptr, _vtype(width).as_pointer()), align=4)


def _vstore(fb, v, ptr, width):
    b = fb.b
    if width == 1:
        b.store(v, ptr, align=4)
    else:
        b.store(v, b.bitcast(ptr, _vtype(width).as_pointer()), align=4)


def _halves(b, v, width):
    """Split a vector into <8 x float> pieces (the activation code works on 8 lanes)."""
    if width == 8:
        return [v]
    idx = ir.VectorType(ir.IntType(32), 8)
    return [b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                             ir.Constant(idx, list(range(8 * h, 8 * h + 8))))
            for h in range(width // 8)]


def _join(b, parts):
    if len(parts) == 1:
        return parts[0]
    idx = ir.VectorType(ir.IntType(32), 16)
    return b.shuffle_vector(parts[0], parts[1], ir.Constant(idx, list(range(16))))


def activate(fb, v, width, act, params, expr):
    """The epilogue activation on a value of ``width`` lanes (1, 8 or 16)."""
    if width == 1:
        return emit_expr(fb, expr, [v])
    b = fb.b
    return _join(b, [apply_activation_v8(fb, h, act, params) for h in _halves(b, v, width)])


@dataclass
class DepthwiseNhwc(Window2d, Kernel):
    """y[n, oh, ow, m] = act(sum over (i, j, q) of x[n, ih, iw, g*cg + q] * w[i, j, q, m]
    + bias[m] + z) with g = m // cg, on NHWC, w packed by ``pack_depthwise_nhwc``: a
    depthwise conv (cg = 1), or a grouped one with few channels per group (RegNet,
    ResNeXt), where each input vector is loaded once and lane l takes channel q of its
    group with a shuffle."""

    N: int
    C: int
    has_bias: bool = False
    activation: str = "none"
    act_params: tuple = ()
    has_z: bool = False
    relu: bool = False
    cg: int = 1           # input (= output) channels per group
    name: str = "dwconv_nhwc"

    def key(self):
        return ("dw_nhwc", _lanes(), self.cg, self.N, self.C) + self.window_key() + (
            self.has_bias, self.activation, self.act_params, self.has_z, self.relu)

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        return parallel_kernel(module, fname, n_args, self.N * self.OH, self._task)

    def _task(self, fb, args, t):
        b = fb.b
        lanes = _lanes()
        y, x, w = args[0], args[1], args[2]
        k = 3
        bias = z = None
        if self.has_bias:
            bias, k = args[k], k + 1
        if self.has_z:
            z = args[k]
        C, cg = self.C, self.cg
        if self.relu and self.activation == "none":
            act = ("relu", ())
        else:
            act = (self.activation, tuple(float(p) for p in self.act_params))
        expr = _act_expr_of(self)
        n = b.sdiv(t, i64(self.OH))
        oh = b.srem(t, i64(self.OH))
        # the kernel rows inside the image: [hlo, hhi)
        hs = self.first_row(b, oh)
        hlo = _max(b, i64(0), b.sdiv(b.add(b.sub(i64(0), hs), i64(self.dh - 1)), i64(self.dh)))
        hhi = _min(b, i64(self.kh), b.sdiv(b.add(b.sub(i64(self.H), hs), i64(self.dh - 1)),
                                           i64(self.dh)))
        xn = fb.ptr(x, b.mul(n, i64(self.H * self.W * C)))
        yrow = fb.ptr(y, b.mul(t, i64(self.OW * C)))
        zrow = fb.ptr(z, b.mul(t, i64(self.OW * C))) if z is not None else None
        with b.goto_block(fb.entry):
            zeros = b.alloca(F32, size=i64(16))
            zeros.align = 64
        _vstore(fb, ir.Constant(ir.VectorType(F32, 16), [0.0] * 16), zeros, 16)
        lo, hi = self.interior_cols()
        group = 8 if lanes == 16 else 6
        accs = {}

        def pixels(c, width, ow0, count, checked):
            """Output pixels ow0 .. ow0+count-1 (count fixed), channels c .. c+width-1."""
            V = _vtype(width)
            fma = (_fma_vec(fb.module, width) if width > 1 else
                   fb.module.globals.get("llvm.fma.f32") or ir.Function(
                       fb.module, ir.FunctionType(F32, [F32, F32, F32]), "llvm.fma.f32"))
            slots = accs.setdefault((width, count), [fb.alloca(V) for _ in range(count)])
            zero = ir.Constant(V, [0.0] * width) if width > 1 else ir.Constant(F32, 0.0)
            for s in slots:
                b.store(zero, s)
            iw0 = self.first_col(b, ow0)
            # the first input channel the block reads: its own index for a vector block
            # (aligned to the groups), the group's first channel for a single channel
            cin = c if width > 1 or cg == 1 else b.sub(c, b.srem(c, i64(cg)))
            with fb.loop(hlo, hhi) as i:
                ih = b.add(hs, b.mul(i, i64(self.dh)))
                xr = fb.ptr(xn, b.add(b.mul(ih, i64(self.W * C)), cin))
                wr = fb.ptr(w, b.add(b.mul(i, i64(self.kw * cg * C)), c))
                cols = {}
                for off in sorted({p * self.sw + j * self.dw for p in range(count)
                                   for j in range(self.kw)}):
                    iw = b.add(iw0, i64(off))
                    if checked:
                        # a tap in the padding reads zeros (its address is never formed)
                        ok = b.icmp_unsigned("<", iw, i64(self.W))
                        ptr = b.select(ok, fb.ptr(xr, b.mul(b.select(ok, iw, i64(0)), i64(C))),
                                       zeros)
                    else:
                        ptr = fb.ptr(xr, b.mul(iw, i64(C)))
                    if width == 1:
                        # the output channel's group: its cg input channels one by one
                        for q in range(cg):
                            cols[off, q] = b.load(fb.ptr(ptr, i64(q)), align=4)
                        continue
                    v = _vload(fb, ptr, width)
                    for q in range(cg):
                        # lane l (output channel c + l) reads input channel q of its group
                        cols[off, q] = v if cg == 1 else b.shuffle_vector(
                            v, ir.Constant(V, ir.Undefined), ir.Constant(
                                ir.VectorType(ir.IntType(32), width),
                                [l // cg * cg + q for l in range(width)]))
                vals = [b.load(s) for s in slots]
                for j in range(self.kw):
                    for q in range(cg):
                        wv = _vload(fb, fb.ptr(wr, i64((j * cg + q) * C)), width)
                        for p in range(count):
                            vals[p] = b.call(fma, [cols[p * self.sw + j * self.dw, q], wv, vals[p]])
                for s, v in zip(slots, vals):
                    b.store(v, s)
            bv = _vload(fb, fb.ptr(bias, c), width) if bias is not None else None
            for p in range(count):
                v = b.load(slots[p])
                if bv is not None:
                    v = b.fadd(v, bv)
                o = b.add(b.mul(b.add(ow0, i64(p)), i64(C)), c)
                if zrow is not None:
                    v = b.fadd(v, _vload(fb, fb.ptr(zrow, o), width))
                _vstore(fb, activate(fb, v, width, act[0], act[1], expr), fb.ptr(yrow, o), width)

        def chunks(a, e, checked):
            """Pixels [a, e) as straight-line groups of at most ``group`` (a loop over single
            pixels where huge pads would make that much code)."""
            if e - a > 4 * group:
                with fb.loop(a, e) as ow:
                    pixels(c_cur[0], c_cur[1], ow, 1, checked)
                return
            while a < e:
                count = min(group, e - a)
                pixels(c_cur[0], c_cur[1], i64(a), count, checked)
                a += count

        c_cur = [None, None]

        def channel_block(c, width):
            c_cur[:] = [c, width]
            chunks(0, lo, True)          # left border
            whole = lo + (hi - lo) // group * group
            if whole > lo:
                with fb.loop(lo, whole, group) as ow:
                    pixels(c, width, ow, group, False)
            chunks(whole, hi, False)      # the interior's rest
            chunks(hi, self.OW, True)     # right border

        start = 0
        for width in sorted({lanes, 8, 1} if cg <= 8 else {1}, reverse=True):
            end = start + (C - start) // width * width
            if end > start:
                with fb.loop(start, end, width) as c:
                    channel_block(c, width)
            start = end


# -- NCHW depthwise (O1/O2, or a graph the layout pass keeps channels-first) ----------------
#: bytes of the zero-padded input band a DepthwiseNchw task stages on its stack
NCHW_BAND_BYTES = 48 * 1024
#: the most stack bytes a task may stage (when one output row's input rows exceed the band)
NCHW_STACK_MAX = 512 * 1024
#: about this many tasks per conv (planes x row bands) when the planes alone are fewer
NCHW_TASKS = 24


def nchw_depthwise_ok(C: int, M: int, group: int) -> bool:
    """Whether DepthwiseNchw computes this NCHW conv: one input and one output channel per
    group (a depth multiplier > 1 stays on the GEMM)."""
    return group > 1 and C == M == group


@dataclass
class DepthwiseNchw(Window2d, Kernel):
    """y[n, c, oh, ow] = act(sum over (i, j) of x[n, c, ih, iw] * w[c, 0, i, j] + bias[c] + z)
    on NCHW.  A task takes one plane's band of output rows: it copies the input rows the
    band reads into a zero-padded buffer on its stack (so no tap needs a bounds check),
    then each output row is computed ``lanes`` columns per vector, four vectors at once
    (four independent FMA chains), a tap's inputs one unaligned load (strided: a load of
    ``stride * lanes`` floats and a shuffle).  Each output is one FMA chain over the taps
    in (row, column) order, then bias, residual and activation."""

    N: int
    C: int
    has_bias: bool = False
    activation: str = "none"
    act_params: tuple = ()
    has_z: bool = False
    relu: bool = False
    name: str = "dwconv_nchw"

    def key(self):
        return ("dw_nchw", _lanes(), self.N, self.C) + self.window_key() + (
            self.has_bias, self.activation, self.act_params, self.has_z, self.relu)

    def geometry(self, lanes: int) -> tuple[int, int, int, int]:
        """(blocks per output row, padded row width, output rows per band, bands)."""
        nb = -(-self.OW // lanes)
        wpad = nb * lanes * self.sw + (self.kw - 1) * self.dw
        ob = self.OH
        while ob > 1 and self.rows_read(ob) * wpad * 4 > NCHW_BAND_BYTES:
            ob = -(-ob // 2)
        planes = self.N * self.C
        if planes < NCHW_TASKS:   # few planes: split them into bands for the pool
            ob = min(ob, max(1, -(-self.OH // -(-NCHW_TASKS // planes))))
        return nb, wpad, ob, -(-self.OH // ob)

    def fits_stack(self) -> bool:
        """Whether one output row's padded input rows fit NCHW_STACK_MAX (a huge row or
        dilation would not: such a conv stays on the GEMM)."""
        nb, wpad, ob, _ = self.geometry(16)
        return self.rows_read(ob) * wpad * 4 <= NCHW_STACK_MAX

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        _, _, _, bands = self.geometry(_lanes())
        return parallel_kernel(module, fname, n_args, self.N * self.C * bands, self._task)

    def _task(self, fb, args, t):
        from .codegen import memcpy, memset0
        b = fb.b
        L = _lanes()
        V = _vtype(L)
        y, x, w = args[0], args[1], args[2]
        k = 3
        bias = z = None
        if self.has_bias:
            bias, k = args[k], k + 1
        if self.has_z:
            z = args[k]
        if self.relu and self.activation == "none":
            act = ("relu", ())
        else:
            act = (self.activation, tuple(float(p) for p in self.act_params))
        expr = _act_expr_of(self)
        nb, wpad, ob, bands = self.geometry(L)
        brows = self.rows_read(ob)
        fma = _fma_vec(fb.module, L)
        plane = b.sdiv(t, i64(bands))            # n * C + c
        band = b.srem(t, i64(bands))
        c = b.srem(plane, i64(self.C))
        oh0 = b.mul(band, i64(ob))
        oh1 = _min(b, b.add(oh0, i64(ob)), i64(self.OH))
        with b.goto_block(fb.entry):
            buf = b.alloca(F32, size=i64(brows * wpad))
            buf.align = 64
            tmp = b.alloca(F32, size=i64(L))
            tmp.align = 64
        # the band's input rows, zero-padded: row r is input row oh0*sh - pt + r
        memset0(fb, buf, brows * wpad * 4)
        xp = fb.ptr(x, b.mul(plane, i64(self.H * self.W)))
        ih0 = self.first_row(b, oh0)
        r_lo = _max(b, i64(0), b.sub(i64(0), ih0))
        r_hi = _min(b, i64(brows), b.sub(i64(self.H), ih0))
        with fb.loop(r_lo, r_hi) as r:
            memcpy(fb, fb.ptr(buf, b.add(b.mul(r, i64(wpad)), i64(self.pl))),
                   fb.ptr(xp, b.mul(b.add(ih0, r), i64(self.W))),
                   i64(min(self.W, wpad - self.pl) * 4))
        # the plane's taps, splat once per task
        wp = fb.ptr(w, b.mul(c, i64(self.kh * self.kw)))
        taps = [[_splat(b, b.load(fb.ptr(wp, i64(i * self.kw + j)), align=4), L)
                 for j in range(self.kw)] for i in range(self.kh)]
        bv = _splat(b, b.load(fb.ptr(bias, c), align=4), L) if bias is not None else None
        yp = fb.ptr(y, b.mul(plane, i64(self.OH * self.OW)))
        zp = fb.ptr(z, b.mul(plane, i64(self.OH * self.OW))) if z is not None else None
        full = self.OW // L
        zero = ir.Constant(V, [0.0] * L)
        sel = ir.Constant(ir.VectorType(ir.IntType(32), L), [q * self.sw for q in range(L)])
        WV = _vtype(L * self.sw)

        def blocks(orow, yrow, zrow, b0, count):
            """Output vectors b0 .. b0+count-1 of one row (count fixed)."""
            vals = [zero] * count
            for i in range(self.kh):
                rp = fb.ptr(buf, b.add(orow, i64(i * self.dh * wpad)))
                for j in range(self.kw):
                    for q in range(count):
                        col = b.add(b.mul(b.add(b0, i64(q)), i64(L * self.sw)), i64(j * self.dw))
                        v = b.load(b.bitcast(fb.ptr(rp, col), WV.as_pointer()), align=4)
                        if self.sw > 1:
                            v = b.shuffle_vector(v, ir.Constant(WV, ir.Undefined), sel)
                        vals[q] = b.call(fma, [v, taps[i][j], vals[q]])
            for q in range(count):
                v = vals[q] if bv is None else b.fadd(vals[q], bv)
                o = b.mul(b.add(b0, i64(q)), i64(L))
                _vstore(fb, activate(fb, v if zrow is None else
                                     b.fadd(v, _vload(fb, fb.ptr(zrow, o), L)),
                                     L, act[0], act[1], expr), fb.ptr(yrow, o), L)

        with fb.loop(oh0, oh1) as oh:
            orow = b.mul(b.mul(b.sub(oh, oh0), i64(self.sh)), i64(wpad))
            yrow = fb.ptr(yp, b.mul(oh, i64(self.OW)))
            zrow = fb.ptr(zp, b.mul(oh, i64(self.OW))) if zp is not None else None
            if full >= 4:
                with fb.loop(0, full // 4 * 4, 4) as b0:
                    blocks(orow, yrow, zrow, b0, 4)
            if full % 4:
                blocks(orow, yrow, zrow, i64(full // 4 * 4), full % 4)
            rest = self.OW - full * L
            if rest:
                # the last, partial vector through the stack (its lanes past OW read the
                # padded buffer's zeros and are never stored)
                acc = zero
                for i in range(self.kh):
                    rp = fb.ptr(buf, b.add(orow, i64(i * self.dh * wpad)))
                    for j in range(self.kw):
                        v = b.load(b.bitcast(fb.ptr(rp, i64(full * L * self.sw + j * self.dw)),
                                             WV.as_pointer()), align=4)
                        if self.sw > 1:
                            v = b.shuffle_vector(v, ir.Constant(WV, ir.Undefined), sel)
                        acc = b.call(fma, [v, taps[i][j], acc])
                _vstore(fb, acc if bv is None else b.fadd(acc, bv), tmp, L)
                for q in range(rest):
                    s = b.load(fb.ptr(tmp, i64(q)), align=4)
                    o = i64(full * L + q)
                    if zrow is not None:
                        s = b.fadd(s, b.load(fb.ptr(zrow, o), align=4))
                    b.store(activate(fb, s, 1, act[0], act[1], expr), fb.ptr(yrow, o), align=4)


def _splat(b, s, lanes: int):
    from .kernels import _broadcast
    return _broadcast(b, s, lanes)
