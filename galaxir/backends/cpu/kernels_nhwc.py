"""Channels-last (NHWC) kernels: the convolution the O3 layout pass hands the cpu backend.

The NCHW convolution (kernels.PackedGemm) gathers a 16-pixel panel of the implicit im2col
matrix element by element, with a bounds check each, before it can multiply: for a 3x3
conv that packing costs about as much as the arithmetic.  In NHWC the channels of one pixel
are contiguous, so a GEMM tile needs no packing at all (the "indirect convolution"):

* A (the patch rows) is read in place: for each filter tap, six pointers, one per output
  pixel of the tile, point at that pixel's input channels (or at a zero row where the tap
  falls in the padding), and the k loop walks the channels;
* B (the weights) is packed once at compile time into 16-output-channel panels
  ``[panel][tap][channel][16]``;
* a 6 x 16 register tile (12 ``<8 x float>`` FMA accumulators) is stored straight into the
  NHWC output, 16 contiguous channels per pixel, after bias, residual and activation.

Every output element is one sequential FMA chain over (tap, channel), wherever it sits in a
tile, so equal inputs still give bit-equal outputs across channels (the zoo models' expected
outputs need that).  The code is shape-generic: one library function per epilogue variant
serves every conv of the process, shapes come in a constant parameter block.

The same kernel multiplies matrices: ``A[M, K] @ B[K, N]`` is a 1x1 convolution over M
"pixels" of K channels (``MatMulNhwc`` packs a non-constant B at run time first).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import llvmlite.ir as ir

from . import jit
from .codegen import F32, I64, f32, i64, memset0
from .kernels import (EpilogueCode, Kernel, LinearEpilogue, _f32_bits, _fma_vec,
                      _broadcast, _max, _min, _splat8, build_task_library, epilogue_args,
                      library_call, padded_window_count)

MR, NR = 6, 16
V16 = ir.VectorType(F32, 16)


def wide_tiles() -> bool:
    """Accumulate each 16-column tile row in one ``<16 x float>`` (a zmm register) where
    the host has AVX-512, instead of two ``<8 x float>``: the same FMAs in the same order
    (bit-equal results) with half the instructions per k step; on a Zen 4, resnet50 ran
    12-15% faster.  ``GALAXIR_CPU_WIDE=0/1`` overrides (LLVM splits the wide vectors in
    two on an AVX2-only host, so both forms run everywhere)."""
    forced = os.environ.get("GALAXIR_CPU_WIDE")
    if forced in ("0", "1"):
        return forced == "1"
    return jit.has_feature("avx512f")


# parameter block of the NHWC conv library function
(NC_N, NC_H, NC_W, NC_C, NC_CG, NC_OH, NC_OW, NC_M, NC_MG, NC_G, NC_KH, NC_KW, NC_SH, NC_SW,
 NC_DH, NC_DW, NC_PT, NC_PL, NC_PANELS, NC_TILES, NC_TPER, NC_NCH, NC_NTASKS, NC_HAS_BIAS,
 NC_LO, NC_HI, NC_ALPHA, NC_KD, NC_LDA, NC_PSPLIT) = range(30)

#: weights of at most this many bytes per group stay in L2 while a task sweeps all their
#: panels over each tile (the tile's input rows are read once, its output rows written
#: whole); larger ones are split into one task per panel, so a panel stays in L1/L2 while
#: the task sweeps the tiles
TILE_OUTER_MAX_BYTES = 192 * 1024


def pack_weights_nhwc(w, groups: int, nr: int = NR):
    """Conv weights [M, C/g, kh, kw] -> panels [g][ceil(M/g/nr)][kh][kw][C/g][nr] (zero
    columns pad the last panel of each group); ``nr`` is the kernel's panel width."""
    import numpy as np
    M, cg, kh, kw = w.shape
    mg = M // groups
    panels = -(-mg // nr)
    out = np.zeros((groups, panels * nr, kh, kw, cg), np.float32)
    out[:, :mg] = w.reshape(groups, mg, cg, kh, kw).transpose(0, 1, 3, 4, 2)
    out = out.reshape(groups, panels, nr, kh * kw * cg).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(out).reshape(-1)


TILE_ROWS_16 = 8


def tile_rows(nr: int, wide: bool) -> int:
    """Rows of the conv tile: 6 (twelve accumulators: 6 x two vectors), or 8 for a 16-wide
    panel on 16 lanes, whose six one-zmm rows would be six FMA chains, fewer than the FMA
    latency times the FMA units (Zen 4/5: 4 cycles x 2): eight rows keep both units busy
    (grouped convs with 16 channels per group, RegNet)."""
    return TILE_ROWS_16 if wide and nr == NR else MR


def conv_panel_width(mg: int, wide: bool) -> int:
    """The weight panel width for ``mg`` output channels per group: 32 (a 6 x 32 tile, two
    zmm per row: twelve independent FMA chains and two weight loads per twelve FMAs, as
    GemmPacked's) with 16 lanes where that computes at most mg/8 more padding columns
    than 16-wide panels would (24 channels: one 32-wide panel instead of two 16-wide ones,
    the same columns), else 16 (a 6 x 16 tile: six zmm, or twelve ymm without AVX-512)."""
    cols16, cols32 = -(-mg // NR) * NR, -(-mg // (2 * NR)) * 2 * NR
    if wide and cols32 - cols16 <= mg // 8:
        return 2 * NR
    return NR


@dataclass
class ConvNhwc(LinearEpilogue, Kernel):
    """y[n, oh, ow, m] = act(sum over (i, j, c) of x[n, ih, iw, c] * w[m, c, i, j] + bias[m] + z)
    with x, y, z channels-last and w pre-packed by ``pack_weights_nhwc``."""

    N: int
    H: int
    W: int
    C: int
    OH: int
    OW: int
    M: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    dh: int = 1
    dw: int = 1
    pt: int = 0
    pl: int = 0
    group: int = 1
    has_bias: bool = False
    activation: str = "none"
    act_params: tuple = ()
    has_z: bool = False
    lda: int = 0          # row stride of A in elements (0: C); matmul rows may be padded
    relu: bool = False    # set by the lowering's relu fusion
    nr: int = NR          # panel width: 16, or 32 (two zmm per tile row, AVX-512 only)
    name: str = "conv_nhwc"

    def key(self):
        return ("conv_nhwc", self.N, self.H, self.W, self.C, self.OH, self.OW, self.M, self.kh,
                self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.group,
                self.has_bias, self.activation, self.act_params, self.has_z, self.lda, self.relu,
                self.nr)

    @property
    def panels(self) -> int:
        return -(-(self.M // self.group) // self.nr)

    @property
    def tiles(self) -> int:
        return -(-(self.OH * self.OW) // tile_rows(self.nr, wide_tiles()))

    @property
    def psplit(self) -> int:
        cg = self.C // self.group
        weight_bytes = self.kh * self.kw * cg * self.panels * self.nr * 4
        return 1 if weight_bytes <= TILE_OUTER_MAX_BYTES else self.panels

    @property
    def chunks(self) -> int:
        per_image = self.N * self.group * self.psplit
        return max(1, min(self.tiles, -(-24 // max(per_image, 1))))

    @property
    def n_tasks(self) -> int:
        return self.N * self.group * self.psplit * self.chunks

    def variant(self) -> tuple:
        return (self.has_z,) + self.act_class()

    def library_symbol(self) -> str:
        """The bound symbol of this epilogue variant's library function (built once)."""
        from . import library
        var = self.variant()
        wide = wide_tiles()
        if self.nr not in (NR, 2 * NR) or (self.nr == 2 * NR and not wide):
            raise ValueError(f"conv_nhwc: panel width {self.nr} needs 16, or 32 with 16 lanes")
        nr = self.nr
        vname = "convnhwc_" + "_".join(str(x) for x in var[:2]) + (
            "_" + "_".join(f"{v:g}" for v in var[2]) if var[2] else "") + ("_w16" if wide else "") \
            + ("_n32" if nr == 2 * NR else "") + f"_r{tile_rows(nr, wide)}"
        return library.ensure(vname, lambda m, n: build_conv_nhwc_library(m, n, var, wide, nr))

    def params(self) -> list[int]:
        cg = self.C // self.group
        tper = -(-self.tiles // self.chunks)
        p = [self.N, self.H, self.W, self.C, cg, self.OH, self.OW, self.M, self.M // self.group,
             self.group, self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl,
             self.panels, self.tiles, tper, self.chunks, self.n_tasks, int(self.has_bias)]
        p.extend(_f32_bits(v) for v in self.linear_params())
        p.append(self.kh * self.kw * cg)
        p.append(self.lda or self.C)
        p.append(self.psplit)
        return p

    def emit(self, module, fname, n_args):
        fb, lib, state, pp = library_call(module, fname, n_args, self.library_symbol(),
                                          self.params(), "convnhwc")
        bias, z = epilogue_args(fb, self.has_bias, self.has_z)
        fb.b.call(lib, [state, pp, fb.args[0], fb.args[1], fb.args[2], bias, z])
        return fb.finish()


def build_conv_nhwc_library(module, name, variant, wide: bool, nr: int = NR):
    """Define ``name(state, params, Y, X, Wp, bias, Z)`` for one epilogue variant: a 6 x nr
    tile of ``nr / lanes`` accumulators per row, 16 lanes where ``wide`` (else 8)."""
    build_task_library(module, name, NC_NTASKS,
                       lambda tb, params, ptrs, t: _conv_nhwc_task(tb, variant, wide, nr, params,
                                                                   *ptrs, t))


def _conv_nhwc_task(fb, variant, wide, nrw, params, y, x, wp, bias, z, t):
    MR = tile_rows(nrw, wide)       # tile rows: 6, or 8 for a 16-wide panel on 16 lanes
    has_z, act, act_params = variant
    b = fb.b
    V8 = ir.VectorType(F32, 8)
    V8P = V8.as_pointer()
    L = 16 if wide else 8          # lanes per accumulator
    NV = nrw // L                  # accumulators per tile row
    VL = ir.VectorType(F32, L)
    parts = nrw // 8               # 8-column parts of a tile row (the epilogue's unit)

    def P(k):
        return b.load(b.gep(params, [i64(k)], inbounds=True))

    epi = EpilogueCode(fb, act, act_params, params, NC_LO)
    H, W, CG = P(NC_H), P(NC_W), P(NC_CG)
    OH, OW, M, MG, G = P(NC_OH), P(NC_OW), P(NC_M), P(NC_MG), P(NC_G)
    KH, KW, SH, SW = P(NC_KH), P(NC_KW), P(NC_SH), P(NC_SW)
    DH, DW, PT, PL = P(NC_DH), P(NC_DW), P(NC_PT), P(NC_PL)
    panels, tiles, tper, nch = P(NC_PANELS), P(NC_TILES), P(NC_TPER), P(NC_NCH)
    KD, LDA = P(NC_KD), P(NC_LDA)
    has_bias = b.icmp_signed("!=", P(NC_HAS_BIAS), i64(0))
    npix = b.mul(OH, OW)

    # task -> (image, group, panel split, chunk of tiles); its panels are all of the
    # group's (psplit 1) or the one it names (psplit = panels)
    psplit = P(NC_PSPLIT)
    chunk = b.srem(t, nch)
    r1 = b.sdiv(t, nch)
    ps = b.srem(r1, psplit)
    r2 = b.sdiv(r1, psplit)
    g = b.srem(r2, G)
    img = b.sdiv(r2, G)
    one_panel = b.icmp_signed("==", psplit, panels)
    p_lo = b.select(one_panel, ps, i64(0))
    p_hi = b.select(one_panel, b.add(ps, i64(1)), panels)
    xin = fb.ptr(x, b.add(b.mul(img, b.mul(b.mul(H, W), LDA)), b.mul(g, CG)))
    ybase0 = b.add(b.mul(img, b.mul(npix, M)), b.mul(g, MG))
    # a row of zeros stands in for taps in the padding (a whole kernel row on the fast
    # path); 16 zeros stand in for a missing bias
    zlen = _max(b, b.mul(KW, CG), i64(1))
    zrow = b.alloca(F32, size=zlen)
    zrow.align = 32
    memset0(fb, zrow, b.mul(zlen, i64(4)))
    with b.goto_block(fb.entry):
        zeros16 = b.alloca(F32, size=i64(nrw))
        zeros16.align = 32
        tile = b.alloca(F32, size=i64(MR * nrw))
        tile.align = 32
    memset0(fb, zeros16, nrw * 4)
    # a kernel row's taps are one contiguous run of KW*CG floats when dilation is 1 and the
    # conv has one group (channels of neighbouring pixels follow each other)
    rows_contiguous = b.and_(b.icmp_signed("==", DW, i64(1)), b.icmp_signed("==", CG, LDA))
    kw_span = b.mul(b.sub(KW, i64(1)), DW)
    tap_step = b.mul(DW, LDA)

    accs = [fb.alloca(VL) for _ in range(MR * NV)]
    rowp = [fb.alloca(F32.as_pointer()) for _ in range(MR)]
    rbase = [fb.alloca(F32.as_pointer()) for _ in range(MR)]
    rstep = [fb.alloca(I64) for _ in range(MR)]
    ih0 = [fb.alloca(I64) for _ in range(MR)]
    iw0 = [fb.alloca(I64) for _ in range(MR)]
    zero = ir.Constant(VL, [0.0] * L)
    fma = _fma_vec(fb.module, L)

    def acc(r, h):
        """The accumulator part of tile row r, columns 8h..8h+7."""
        j, q = divmod(8 * h, L)
        v = b.load(accs[NV * r + j])
        if L == 8:
            return v
        return b.shuffle_vector(v, ir.Constant(VL, ir.Undefined),
                                ir.Constant(ir.VectorType(ir.IntType(32), 8), list(range(q, q + 8))))

    def kloop(wk, count):
        """accs += the MR rows at rowp[...] times the weight panel rows at wk, ``count`` k."""
        ptrs = [b.load(rowp[r]) for r in range(MR)]
        with fb.loop(0, count) as c:
            wv = [b.load(b.bitcast(fb.ptr(wk, b.add(b.mul(c, i64(nrw)), i64(L * j))),
                                   VL.as_pointer()), align=4) for j in range(NV)]
            for r in range(MR):
                x = b.load(b.gep(ptrs[r], [c], inbounds=True), align=4)
                sv = _broadcast(b, x, L)
                for h, w in enumerate(wv):
                    a = accs[len(wv) * r + h]
                    b.store(b.call(fma, [sv, w, b.load(a)]), a)

    def _tile_times_panel(pix0, pj, fast_rows):
        """The MR x nrw output block of tile ``pix0`` and panel ``pj``."""
        wpanel = fb.ptr(wp, b.mul(b.add(b.mul(g, panels), pj), b.mul(KD, i64(nrw))))
        col = b.mul(pj, i64(nrw))
        ncols = _min(b, i64(nrw), b.sub(MG, col))
        full_cols = b.icmp_signed("==", ncols, i64(nrw))
        ybase = b.add(ybase0, col)
        yb = fb.ptr(y, ybase)
        zb = fb.ptr(z, ybase) if has_z else None
        bptr = b.select(has_bias, fb.ptr(bias, b.add(b.mul(g, MG), col)), zeros16)
        # the panel's biases as vectors only for a whole panel: a partial one would read
        # past the end of the bias array (its epilogue reads the bias one by one)
        bvp = b.select(full_cols, bptr, zeros16)
        bv = [b.load(b.bitcast(fb.ptr(bvp, i64(8 * h)), V8P), align=4) for h in range(parts)]
        for a in accs:
            b.store(zero, a)
        with fb.loop(0, KH) as i:
            wrow = fb.ptr(wpanel, b.mul(b.mul(b.mul(i, KW), CG), i64(nrw)))
            then, other, done = fb.block("krow"), fb.block("ktaps"), fb.block("kdone")
            b.cbranch(fast_rows, then, other)
            # every tap column inside the image: one row check per pixel
            b.position_at_end(then)
            for r in range(MR):
                ih = b.add(b.load(ih0[r]), b.mul(i, DH))
                ok = b.icmp_unsigned("<", ih, H)
                off = b.mul(b.add(b.mul(ih, W), b.load(iw0[r])), LDA)
                base = b.select(ok, fb.ptr(xin, b.select(ok, off, i64(0))), zrow)
                b.store(base, rowp[r])
                b.store(base, rbase[r])
                # a row in the padding stays on the zero row (step 0)
                b.store(b.select(ok, tap_step, i64(0)), rstep[r])
            run, taps, = fb.block("krun"), fb.block("kitaps")
            b.cbranch(rows_contiguous, run, taps)
            # the kernel row's taps of each pixel are one run of KW*CG floats
            b.position_at_end(run)
            kloop(wrow, b.mul(KW, CG))
            b.branch(done)
            # groups or dilation: tap j of a pixel is its row start + j * DW * LDA
            b.position_at_end(taps)
            with fb.loop(0, KW) as j:
                for r in range(MR):
                    b.store(fb.ptr(b.load(rbase[r]), b.mul(j, b.load(rstep[r]))), rowp[r])
                kloop(fb.ptr(wrow, b.mul(b.mul(j, CG), i64(nrw))), CG)
            b.branch(done)
            # tap by tap (a window reaching into the padding columns)
            b.position_at_end(other)
            with fb.loop(0, KW) as j:
                for r in range(MR):
                    ih = b.add(b.load(ih0[r]), b.mul(i, DH))
                    iw = b.add(b.load(iw0[r]), b.mul(j, DW))
                    ok = b.and_(b.icmp_unsigned("<", ih, H), b.icmp_unsigned("<", iw, W))
                    off = b.mul(b.add(b.mul(ih, W), iw), LDA)
                    b.store(b.select(ok, fb.ptr(xin, b.select(ok, off, i64(0))), zrow), rowp[r])
                kloop(fb.ptr(wrow, b.mul(b.mul(j, CG), i64(nrw))), CG)
            b.branch(done)
            b.position_at_end(done)

        def finish(v, h, off):
            v = b.fadd(v, bv[h])
            if has_z:
                v = b.fadd(v, b.load(b.bitcast(fb.ptr(zb, off), V8P), align=4))
            return epi.vector(v)

        rows = _min(b, i64(MR), b.sub(npix, pix0))
        whole = b.and_(full_cols, b.icmp_signed("==", rows, i64(MR)))
        direct, staged, stored = fb.block("direct"), fb.block("staged"), fb.block("tiled")
        b.cbranch(whole, direct, staged)
        # a whole tile goes straight from the accumulators to the output
        b.position_at_end(direct)
        for r in range(MR):
            rowoff = b.mul(b.add(pix0, i64(r)), M)
            for h in range(parts):
                off = b.add(rowoff, i64(8 * h))
                b.store(finish(acc(r, h), h, off), b.bitcast(fb.ptr(yb, off), V8P),
                        align=4)
        b.branch(stored)
        # an edge tile goes through the stack, then one loop over its valid rows
        b.position_at_end(staged)
        for r in range(MR):
            for h in range(parts):
                b.store(acc(r, h), b.bitcast(fb.ptr(tile, i64(r * nrw + 8 * h)), V8P),
                        align=32)
        with fb.loop(0, rows) as r:
            tr = b.mul(r, i64(nrw))
            rowoff = b.mul(b.add(pix0, r), M)
            then, other, end = fb.block("full"), fb.block("part"), fb.block("stored")
            b.cbranch(full_cols, then, other)
            b.position_at_end(then)
            for h in range(parts):
                v = b.load(b.bitcast(fb.ptr(tile, b.add(tr, i64(8 * h))), V8P), align=32)
                off = b.add(rowoff, i64(8 * h))
                b.store(finish(v, h, off), b.bitcast(fb.ptr(yb, off), V8P), align=4)
            b.branch(end)
            b.position_at_end(other)
            with fb.loop(0, ncols) as q:
                sv = b.fadd(fb.load(tile, b.add(tr, q)), fb.load(bptr, q))
                if has_z:
                    sv = b.fadd(sv, fb.load(zb, b.add(rowoff, q)))
                fb.store(epi.scalar(sv), yb, b.add(rowoff, q))
            b.branch(end)
            b.position_at_end(end)
        b.branch(stored)
        b.position_at_end(stored)

    t0 = b.mul(chunk, tper)
    t1 = _min(b, b.add(t0, tper), tiles)
    with fb.loop(t0, t1) as ti:
        pix0 = b.mul(ti, i64(MR))
        # output positions of the tile's pixels: one division, then steps along the row
        # (pixels past the end compute garbage that is never stored)
        oh = b.sdiv(pix0, OW)
        ow = b.sub(pix0, b.mul(oh, OW))
        for r in range(MR):
            if r:
                ow = b.add(ow, i64(1))
                wrap = b.icmp_signed("==", ow, OW)
                ow = b.select(wrap, i64(0), ow)
                oh = b.add(oh, b.zext(wrap, I64))
            b.store(b.sub(b.mul(oh, SH), PT), ih0[r])
            b.store(b.sub(b.mul(ow, SW), PL), iw0[r])
        fast_rows = ir.Constant(ir.IntType(1), 1)
        for r in range(MR):
            iw = b.load(iw0[r])
            inside = b.and_(b.icmp_signed(">=", iw, i64(0)),
                            b.icmp_signed("<", b.add(iw, kw_span), W))
            fast_rows = b.and_(fast_rows, inside)
        with fb.loop(p_lo, p_hi) as pj:
            _tile_times_panel(pix0, pj, fast_rows)


# -- the rest of a channels-last CNN: pooling, vectorized over channels ----------------------
# (the depthwise conv has its own module, kernels_depthwise)
def _window_rows(fb, b, o, s, p, k, d, size):
    """(start, first valid tap, end tap) of a pooling/conv window along one dim."""
    start = b.sub(b.mul(o, i64(s)), i64(p))
    # first tap t with start + t*d >= 0, last with start + t*d < size
    lo = _max(b, i64(0), b.sdiv(b.add(b.sub(i64(0), start), i64(d - 1)), i64(d)))
    hi = _min(b, i64(k), b.sdiv(b.add(b.sub(i64(size), start), i64(d - 1)), i64(d)))
    return start, lo, hi


def _channel_blocks(fb, C: int, body):
    """``body(c, width)`` for channel blocks: 8 lanes at a time, then the C % 8 rest one by
    one (``width`` 8 or 1), so the loops need no vectorizer and no alias checks."""
    full = C // 8 * 8
    if full:
        with fb.loop(0, full, 8) as c:
            body(c, 8)
    if full < C:
        with fb.loop(full, C) as c:
            body(c, 1)


def _vload(fb, base, idx, width):
    if width == 1:
        return fb.load(base, idx)
    V8P = ir.VectorType(F32, 8).as_pointer()
    return fb.b.load(fb.b.bitcast(fb.ptr(base, idx), V8P), align=4)


def _vstore(fb, v, base, idx, width):
    if width == 1:
        fb.store(v, base, idx)
        return
    V8P = ir.VectorType(F32, 8).as_pointer()
    fb.b.store(v, fb.b.bitcast(fb.ptr(base, idx), V8P), align=4)


def _splat(fb, value: float, width):
    return f32(value) if width == 1 else ir.Constant(ir.VectorType(F32, 8), [value] * 8)


def _max_or_add(b, a, v, max_mode):
    """max keeps a NaN from either side (as the NCHW kernels and numpy do)."""
    if max_mode:
        return b.select(b.fcmp_unordered(">", v, a), v, a)
    return b.fadd(a, v)


@dataclass
class PoolNhwc(Kernel):
    """max / average pooling on NHWC: 32 channels of an output pixel reduce in four
    registers (8 at a time for the rest) over the valid window taps (pads, strides,
    dilations, ceil mode as Pool2d)."""

    kind: str
    N: int
    H: int
    W: int
    C: int
    OH: int
    OW: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    count_include_pad: bool
    name: str = "pool_nhwc"

    def key(self):
        return ("pool_nhwc", self.kind, self.N, self.H, self.W, self.C, self.OH, self.OW,
                self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.pb,
                self.pr, self.count_include_pad)

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        return parallel_kernel(module, fname, n_args, self.N * self.OH, self._task)

    def _task(self, fb, args, t):
        b = fb.b
        y, x = args[0], args[1]
        C = self.C
        max_mode = self.kind == "max"
        n = b.sdiv(t, i64(self.OH))
        oh = b.srem(t, i64(self.OH))
        hs, hlo, hhi = _window_rows(fb, b, oh, self.sh, self.pt, self.kh, self.dh, self.H)
        xn = b.mul(n, i64(self.H * self.W * C))
        V8 = ir.VectorType(F32, 8)
        accs = {1: [fb.alloca(F32)], 8: [fb.alloca(V8)], 32: [fb.alloca(V8) for _ in range(4)]}
        with fb.loop(0, self.OW) as ow:
            ws, wlo, whi = _window_rows(fb, b, ow, self.sw, self.pl, self.kw, self.dw, self.W)
            orow = b.mul(b.add(b.mul(t, i64(self.OW)), ow), i64(C))
            cntf = None
            if not max_mode:
                if self.count_include_pad:
                    cnt = padded_window_count(b, self, hs, ws)
                else:
                    cnt = b.mul(_max(b, b.sub(hhi, hlo), i64(0)), _max(b, b.sub(whi, wlo), i64(0)))
                cntf = b.sitofp(_max(b, cnt, i64(1)), F32)

            def block(c, width):
                # ``width`` 32: four independent 8-lane chains (a max or add waits for the
                # previous one of its chain: one chain alone is latency-bound)
                vw, nv = (8, 4) if width == 32 else (width, 1)
                acc = accs[width]
                for q in range(nv):
                    b.store(_splat(fb, -math.inf if max_mode else 0.0, vw), acc[q])
                with fb.loop(hlo, hhi) as i:
                    ih = b.add(hs, b.mul(i, i64(self.dh)))
                    with fb.loop(wlo, whi) as j:
                        iw = b.add(ws, b.mul(j, i64(self.dw)))
                        xo = b.add(xn, b.add(b.mul(b.add(b.mul(ih, i64(self.W)), iw), i64(C)), c))
                        for q in range(nv):
                            v = _vload(fb, x, b.add(xo, i64(8 * q)), vw)
                            b.store(_max_or_add(b, b.load(acc[q]), v, max_mode), acc[q])
                for q in range(nv):
                    v = b.load(acc[q])
                    if cntf is not None:
                        v = b.fdiv(v, cntf if vw == 1 else _splat8(b, cntf))
                    _vstore(fb, v, y, b.add(orow, b.add(c, i64(8 * q))), vw)
            wide = C // 32 * 32
            if wide:
                with fb.loop(0, wide, 32) as c:
                    block(c, 32)
            _channel_blocks(fb, C - wide, lambda c, width: block(b.add(c, i64(wide)), width))


@dataclass
class GlobalPoolNhwc(Kernel):
    """global average / max pooling of [N, H, W, C] into [N, 1, 1, C]: one task per image
    and block of 64 channels, 8 channels per register."""

    kind: str
    N: int
    size: int
    C: int
    name: str = "gpool_nhwc"

    def key(self):
        return ("gpool_nhwc", self.kind, self.N, self.size, self.C)

    @property
    def blocks(self) -> int:
        return -(-self.C // 64)

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        return parallel_kernel(module, fname, n_args, self.N * self.blocks, self._task)

    def _task(self, fb, args, t):
        b = fb.b
        y, x = args[0], args[1]
        C = self.C
        avg = self.kind == "avg"
        n = b.sdiv(t, i64(self.blocks))
        c0 = b.mul(b.srem(t, i64(self.blocks)), i64(64))
        c1 = _min(b, b.add(c0, i64(64)), i64(C))
        xn = b.mul(n, i64(self.size * C))
        V8 = ir.VectorType(F32, 8)
        accs = {1: fb.alloca(F32), 8: fb.alloca(V8)}

        def block(c, width):
            acc = accs[width]
            b.store(_splat(fb, 0.0 if avg else -math.inf, width), acc)
            with fb.loop(0, self.size) as p:
                xo = b.add(xn, b.add(b.mul(p, i64(C)), c))
                b.store(_max_or_add(b, b.load(acc), _vload(fb, x, xo, width), not avg), acc)
            v = b.load(acc)
            if avg:
                v = b.fdiv(v, _splat(fb, float(max(self.size, 1)), width))
            _vstore(fb, v, y, b.add(b.mul(n, i64(C)), c), width)

        # the channel block [c0, c1): whole groups of 8, then the rest one by one
        full_end = b.add(c0, b.mul(b.sdiv(b.sub(c1, c0), i64(8)), i64(8)))
        with fb.loop(c0, full_end, 8) as c:
            block(c, 8)
        with fb.loop(full_end, c1) as c:
            block(c, 1)


# -- large matrix products through the same kernel -----------------------------------------
def pack_b_panels(b):
    """B [K, N] -> panels [ceil(N/16)][K][16] (what ``pack_weights_nhwc`` makes of a 1x1 conv)."""
    import numpy as np
    b = np.asarray(b, np.float32)
    return pack_weights_nhwc(np.ascontiguousarray(b.T)[:, :, None, None], 1)


@dataclass
class MatMulPacked(Kernel):
    """``out[i] = act(A[i] @ B[i] + bias)`` over a batch of products, for products large
    enough that both threads pay: a 1x1 channels-last convolution over the M rows of A.
    A constant B comes pre-packed (``b_packed``); otherwise each distinct B is packed into
    16-column panels in scratch first (one pass over B, about 1/M of the product's work).
    Batch strides are in elements (0 = broadcast), as in kernels.MatMul."""

    M: int
    N: int
    K: int
    batch: tuple = ()
    a_batch_strides: tuple = ()
    b_batch_strides: tuple = ()
    b_packed: bool = False
    has_bias: bool = False
    activation: str = "none"
    act_params: tuple = ()
    relu: bool = False
    name: str = "matmul_packed"

    def key(self):
        return ("mm_packed", self.M, self.N, self.K, self.batch, self.a_batch_strides,
                self.b_batch_strides, self.b_packed, self.has_bias, self.activation,
                self.act_params, self.relu)

    @property
    def panels(self) -> int:
        return -(-self.N // NR)

    @property
    def scratch_bytes(self) -> int:
        return 0 if self.b_packed else self.panels * NR * self.K * 4

    def conv(self) -> ConvNhwc:
        return ConvNhwc(N=1, H=1, W=self.M, C=self.K, OH=1, OW=self.M, M=self.N, kh=1, kw=1,
                        has_bias=self.has_bias, activation=self.activation,
                        act_params=self.act_params, relu=self.relu)

    def emit(self, module, fname, n_args):
        from .kernels import contiguous_strides
        conv = self.conv()
        fb, lib, state, pp = library_call(module, fname, n_args, conv.library_symbol(),
                                          conv.params(), "mmpacked")
        b = fb.b
        F32P = F32.as_pointer()
        out, a, bm = fb.args[0], fb.args[1], fb.args[2]
        bias, _ = epilogue_args(fb, self.has_bias, False)
        packed = bm if self.b_packed else fb.args[-1]
        shared_b = all(s == 0 for s in self.b_batch_strides)
        if not self.b_packed and shared_b:
            self._pack(fb, bm, packed)

        def product(idx):
            ao = fb.mul_add(list(zip(idx, self.a_batch_strides)))
            oo = fb.mul_add(list(zip(idx, contiguous_strides(self.batch))))
            oo = b.mul(oo, i64(self.M * self.N)) if idx else oo
            if not self.b_packed and not shared_b:
                self._pack(fb, fb.ptr(bm, fb.mul_add(list(zip(idx, self.b_batch_strides)))),
                           packed)
            b.call(lib, [state, pp, fb.ptr(out, oo), fb.ptr(a, ao), b.bitcast(packed, F32P),
                         bias, ir.Constant(F32P, None)])
        fb.loop_nest(self.batch, product)
        return fb.finish()

    def _pack(self, fb, src, dst):
        """dst[p][k][q] = src[k, 16p + q] (zero past N); full panels copy 16 at a time."""
        b = fb.b
        K, N = self.K, self.N
        full = N // NR
        V8P = ir.VectorType(F32, 8).as_pointer()
        with fb.loop(0, full) as p:
            base = b.mul(p, i64(K * NR))
            with fb.loop(0, K) as k:
                for h in range(2):
                    v = b.load(b.bitcast(fb.ptr(src, b.add(b.mul(k, i64(N)),
                                                           b.add(b.mul(p, i64(NR)), i64(8 * h)))),
                                         V8P), align=4)
                    b.store(v, b.bitcast(fb.ptr(dst, b.add(base, b.add(b.mul(k, i64(NR)),
                                                                        i64(8 * h)))), V8P),
                            align=4)
        rest = N - full * NR
        if rest:
            base = full * K * NR
            with fb.loop(0, K) as k:
                for q in range(NR):
                    v = fb.load(src, b.add(b.mul(k, i64(N)), i64(full * NR + q))) if q < rest \
                        else f32(0.0)
                    fb.store(v, dst, b.add(b.mul(k, i64(NR)), i64(base + q)))
