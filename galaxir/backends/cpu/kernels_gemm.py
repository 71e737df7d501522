"""Dense GEMM with a constant B: ``C[M, N] = act(A[M, K] @ B[K, N] + bias)`` for matmul,
linear and gemm with weights (a transformer's projections, ConvNeXt's MLP).

The conv library (kernels_nhwc.ConvNhwc) multiplies a 6 x 16 tile: with AVX-512 that is
six ``<16 x float>`` accumulators, fewer than the FMA latency times the FMA units of a
core that executes zmm FMAs at full width (Zen 5: 4 cycles x 2 units = 8 chains), and
each k step loads one B vector for six FMAs.  Here the tile is 6 rows x two vectors
(6 x 32 with AVX-512, 6 x 16 with AVX2): twelve independent accumulators and two B loads
per twelve FMAs.  B is packed once at compile time into panels ``[panel][K][2 * lanes]``
(zero past N); A is read in place (rows ``lda`` apart).

Work split: tasks are (row chunk, panel block); a panel block is as many panels as fit
about 256 KiB, so a task sweeps its tiles over a block that stays in L2.  Every output
element is one FMA chain over k in order, as in the conv kernel (equal inputs give equal
columns).  One library function per epilogue variant and width, shapes in the parameter
block.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from .codegen import F32, INT, i64
from .shapetrace import tmax, tmin
from .kernels import (EpilogueCode, Kernel, LinearEpilogue, _broadcast, _f32_bits, _fma_vec,
                      _min, build_task_library, epilogue_args, library_call)

MR = 6                      # tile rows
BLOCK_BYTES = 256 * 1024    # packed B per task block (L2-resident)
TASKS = 24                  # about this many tasks per product (load balance over the pool)

# parameter block
(G_M, G_N, G_K, G_LDA, G_PANELS, G_TILES, G_TPER, G_CHUNKS, G_PB, G_NBLOCKS, G_NTASKS,
 G_HAS_BIAS, G_LO, G_HI, G_ALPHA) = range(15)


def lanes(wide: bool) -> int:
    return 16 if wide else 8


def pack_b(b, wide: bool) -> np.ndarray:
    """B [K, N] -> panels [ceil(N / NW)][K][NW] with NW = 2 * lanes, zero past N."""
    b = np.asarray(b, np.float32)
    k, n = b.shape
    nw = 2 * lanes(wide)
    panels = -(-n // nw)
    out = np.zeros((panels, k, nw), np.float32)
    padded = np.zeros((k, panels * nw), np.float32)
    padded[:, :n] = b
    out[:] = padded.reshape(k, panels, nw).transpose(1, 0, 2)
    return out


@dataclass
class GemmPacked(LinearEpilogue, Kernel):
    """``out = act(A @ B + bias [+ z])``: A [M, K] (rows ``lda`` apart; 0 = K), B pre-packed
    by ``pack_b`` for the same ``wide``, bias one value per column, z (with ``has_z``, a
    residual such as a pointwise conv's skip connection) of the output's shape."""

    M: int
    N: int
    K: int
    wide: bool
    lda: int = 0
    has_bias: bool = False
    activation: str = "none"
    act_params: tuple = ()
    relu: bool = False
    has_z: bool = False
    mr: int = 0             # tile rows (0: MR); 12 only with 16 lanes (24 accumulators)
    name: str = "gemm_packed"

    def key(self):
        return ("gemm_packed", self.M, self.N, self.K, self.wide, self.lda, self.has_bias,
                self.activation, self.act_params, self.relu, self.has_z, self.mr)

    @property
    def tile_rows(self) -> int:
        return self.mr or MR

    @property
    def raw(self) -> bool:
        """No bias, residual or activation: whole tiles are stored straight from the
        accumulators (a small-depth product's tile store is a tenth of its work)."""
        return self.activation == "none" and not self.relu and not self.has_bias \
            and not self.has_z

    @property
    def nw(self) -> int:
        return 2 * lanes(self.wide)

    def params(self) -> list[int]:
        panels = -(-self.N // self.nw)
        tiles = -(-self.M // self.tile_rows)
        # value choices (tmin/tmax): a traced emission serves every outcome (shapetrace.py)
        pb = tmax(1, tmin(panels, BLOCK_BYTES // tmax(1, self.K * self.nw * 4)))
        nblocks = -(-panels // pb)
        chunks = tmax(1, tmin(tiles, -(-TASKS // nblocks)))
        tper = -(-tiles // chunks)
        chunks = -(-tiles // tper)
        p = [self.M, self.N, self.K, self.lda or self.K, panels, tiles, tper, chunks, pb, nblocks,
             chunks * nblocks, int(self.has_bias)]
        p.extend(_f32_bits(v) for v in self.linear_params())
        return p

    def library_symbol(self) -> str:
        from . import library
        act, params = self.act_class()
        if self.raw:
            act = "raw"
        vname = f"gemmpk_{act}" + ("_" + "_".join(f"{v:g}" for v in params) if params else "") + \
            ("_w16" if self.wide else "_w8") + ("_z" if self.has_z else "") + \
            (f"_mr{self.tile_rows}" if self.tile_rows != MR else "")
        variant = (act, params, self.has_z, self.tile_rows)
        wide = self.wide
        return library.ensure(vname, lambda m, n: build_task_library(
            m, n, G_NTASKS, lambda tb, pp, ptrs, t: _gemm_task(tb, variant, wide, pp, *ptrs, t)))

    def emit(self, module, fname, n_args):
        fb, lib, state, pp = library_call(module, fname, n_args, self.library_symbol(),
                                          self.params(), "gemmpk")
        bias, z = epilogue_args(fb, self.has_bias, self.has_z)
        fb.b.call(lib, [state, pp, fb.args[0], fb.args[1], fb.args[2], bias, z])
        return fb.finish()



def task_span(b, t, chunks, tper, tiles, pb, panels):
    """Task ``t``'s row tiles [t0, t1) and B panels [p0, p1): tasks are numbered
    chunk-fastest, ``tper`` tiles a chunk and ``pb`` panels a block (the GemmPacked
    parameter block's split, shared by every packed-GEMM task body)."""
    chunk = b.srem(t, chunks)
    blk = b.sdiv(t, chunks)
    t0 = b.mul(chunk, tper)
    t1 = _min(b, b.add(t0, tper), tiles)
    p0 = b.mul(blk, pb)
    p1 = _min(b, b.add(p0, pb), panels)
    return t0, t1, p0, p1


def tile_row_pointers(b, ti, MR, M, row_ptr):
    """Row tile ``ti``'s first row, its row count (MR but at the end) and a pointer per
    row (``row_ptr(row index)``): rows past M read row r0 again (valid memory); their
    results are never stored."""
    r0 = b.mul(ti, i64(MR))
    rows = _min(b, i64(MR), b.sub(M, r0))
    rowp = [row_ptr(b.select(b.icmp_signed("<", i64(r), rows), b.add(r0, i64(r)), r0))
            for r in range(MR)]
    return r0, rows, rowp

def _gemm_task(fb, variant, wide, params, c, a, bp, bias, z, t):
    act, act_params, has_z, MR = variant
    b = fb.b
    L = lanes(wide)
    NW = 2 * L
    V = ir.VectorType(F32, L)
    V8 = ir.VectorType(F32, 8)
    VP, V8P = V.as_pointer(), V8.as_pointer()

    def P(k):
        return b.load(b.gep(params, [i64(k)], inbounds=True))

    M, N, K, LDA = P(G_M), P(G_N), P(G_K), P(G_LDA)
    panels, tper, chunks, pb = P(G_PANELS), P(G_TPER), P(G_CHUNKS), P(G_PB)
    has_bias = b.icmp_signed("!=", P(G_HAS_BIAS), i64(0))
    epi = EpilogueCode(fb, "lin" if act == "raw" else act, act_params, params, G_LO)
    fma = _fma_vec(fb.module, L)
    zero = ir.Constant(V, [0.0] * L)
    accs = [fb.alloca(V) for _ in range(2 * MR)]
    with b.goto_block(fb.entry):
        tile = b.alloca(F32, size=i64(MR * NW))
        tile.align = 64
        zb = b.alloca(F32, size=i64(NW))
        zb.align = 64
    for j in range(NW // 8):
        b.store(ir.Constant(V8, [0.0] * 8), b.bitcast(fb.ptr(zb, j * 8), V8P), align=32)

    t0, t1, p0, p1 = task_span(b, t, chunks, tper, P(G_TILES), pb, panels)
    with fb.loop(t0, t1) as ti:
        r0, rows, rowp = tile_row_pointers(b, ti, MR, M, lambda rr: fb.ptr(a, b.mul(rr, LDA)))
        with fb.loop(p0, p1) as pj:
            wpanel = fb.ptr(bp, b.mul(pj, b.mul(K, i64(NW))))
            for acc in accs:
                b.store(zero, acc)
            with fb.loop(0, K) as k:
                wv = [b.load(b.bitcast(fb.ptr(wpanel, b.add(b.mul(k, i64(NW)), i64(h * L))), VP),
                             align=4) for h in range(2)]
                for r in range(MR):
                    x = b.load(b.gep(rowp[r], [k], inbounds=True), align=4)
                    sv = _broadcast(b, x, L)
                    for h in range(2):
                        acc = accs[2 * r + h]
                        b.store(b.call(fma, [sv, wv[h], b.load(acc)]), acc)
            _store_tile(fb, epi, accs, tile, zb, c, bias, has_bias, N, r0, rows, pj, L,
                        z if has_z else None, MR, raw=act == "raw")


def _store_tile(fb, epi, accs, tile, zb, c, bias, has_bias, N, r0, rows, pj, L, z=None, MR=MR,
                raw=False):
    """Bias, residual z (when given) and activation on the tile, then into C: whole tiles
    straight from the accumulators, edge tiles (rows < MR or a panel past N) through the
    stack."""
    b = fb.b
    NW = 2 * L
    V8 = ir.VectorType(F32, 8)
    V8P = V8.as_pointer()
    col = b.mul(pj, i64(NW))
    ncols = _min(b, i64(NW), b.sub(N, col))
    full_cols = b.icmp_signed("==", ncols, i64(NW))
    bptr = b.select(b.and_(has_bias, full_cols), fb.ptr(bias, col), zb)
    bv = [b.load(b.bitcast(fb.ptr(bptr, 8 * j), V8P), align=4) for j in range(NW // 8)]

    def part(r, j):
        """Columns 8j..8j+7 of tile row r as a <8 x float>."""
        h, q = divmod(8 * j, L)
        v = b.load(accs[2 * r + h])
        if L == 8:
            return v
        return b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                                ir.Constant(ir.VectorType(ir.IntType(32), 8), list(range(q, q + 8))))

    whole = b.and_(full_cols, b.icmp_signed("==", rows, i64(MR)))
    direct, staged, done = fb.block("gdirect"), fb.block("gstaged"), fb.block("gdone")
    b.cbranch(whole, direct, staged)
    b.position_at_end(direct)
    if raw:  # nothing to apply: whole accumulators into C
        VP = ir.VectorType(F32, L).as_pointer()
        for r in range(MR):
            rowoff = b.add(b.mul(b.add(r0, i64(r)), N), col)
            for h in range(2):
                b.store(b.load(accs[2 * r + h]),
                        b.bitcast(fb.ptr(c, b.add(rowoff, i64(h * L))), VP), align=4)
        b.branch(done)
        b.position_at_end(staged)
        for r in range(MR):
            for j in range(NW // 8):
                b.store(part(r, j), b.bitcast(fb.ptr(tile, r * NW + 8 * j), V8P), align=32)
        with fb.loop(0, rows) as r:
            rowoff = b.add(b.mul(b.add(r0, r), N), col)
            with fb.loop(0, ncols) as q:
                fb.store(fb.load(tile, b.add(b.mul(r, i64(NW)), q)), c, b.add(rowoff, q))
        b.branch(done)
        b.position_at_end(done)
        return
    for r in range(MR):
        rowoff = b.add(b.mul(b.add(r0, i64(r)), N), col)
        for j in range(NW // 8):
            v = b.fadd(part(r, j), bv[j])
            if z is not None:
                v = b.fadd(v, b.load(b.bitcast(fb.ptr(z, b.add(rowoff, i64(8 * j))), V8P), align=4))
            b.store(epi.vector(v), b.bitcast(fb.ptr(c, b.add(rowoff, i64(8 * j))), V8P), align=4)
    b.branch(done)
    b.position_at_end(staged)
    for r in range(MR):
        for j in range(NW // 8):
            b.store(part(r, j), b.bitcast(fb.ptr(tile, r * NW + 8 * j), V8P), align=32)
    bias_one = b.select(has_bias, fb.ptr(bias, col), zb)
    with fb.loop(0, rows) as r:
        rowoff = b.add(b.mul(b.add(r0, r), N), col)
        with fb.loop(0, ncols) as q:
            v = b.fadd(fb.load(tile, b.add(b.mul(r, i64(NW)), q)), fb.load(bias_one, q))
            if z is not None:
                v = b.fadd(v, fb.load(z, b.add(rowoff, q)))
            fb.store(epi.scalar(v), c, b.add(rowoff, q))
    b.branch(done)
    b.position_at_end(done)


# -- the same tile for specialized kernels (attention): sizes known at code generation ----------
def panel_floats(kd: int, n: int, wide: bool) -> int:
    """Floats of a [kd, n] matrix packed by ``emit_pack_panels``."""
    nw = 2 * lanes(wide)
    return -(-n // nw) * nw * kd


def emit_pack_panels(fb, dst, dst_off: int, src, src_off, kd: int, n: int, sk: int, sc: int,
                     wide: bool) -> None:
    """dst[dst_off + (p, k, q)] = src[src_off + k*sk + (p*NW + q)*sc] for the [kd, n] matrix,
    and 0 in the columns past n of the last panel: they only feed tile columns that are
    never stored, but scratch may hold anything, and a denormal or NaN there costs a
    microcode assist per FMA (Q K^T at 197 tokens ran 20 times slower on stale scratch)."""
    b = fb.b
    nw = 2 * lanes(wide)
    soff = i64(src_off) if isinstance(src_off, INT) else src_off
    if n % nw and kd:
        last = dst_off + (n // nw) * kd * nw
        with fb.loop(0, kd) as k:
            row = b.add(i64(last), b.mul(k, i64(nw)))
            with fb.loop(n % nw, nw) as q:
                fb.store(ir.Constant(F32, 0.0), dst, b.add(row, q))
    if sk == 1 and sc != 1 and n >= 8 and kd >= 8:
        _pack_transposed(fb, dst, dst_off, src, soff, kd, n, sc, nw)
        return
    if sc == 1:     # rows of B contiguous: copy each row's run per panel
        with fb.loop(0, kd) as k:
            srow = b.add(soff, b.mul(k, i64(sk)))
            for p in range(-(-n // nw)):
                d0 = b.add(i64(dst_off + p * kd * nw), b.mul(k, i64(nw)))
                with fb.loop(0, min(nw, n - p * nw)) as q:
                    fb.store(fb.load(src, b.add(b.add(srow, i64(p * nw)), q)), dst, b.add(d0, q))
        return
    with fb.loop(0, n) as col:
        p = b.udiv(col, i64(nw))
        q = b.urem(col, i64(nw))
        d0 = b.add(i64(dst_off), b.add(b.mul(p, i64(kd * nw)), q))
        s0 = b.add(soff, b.mul(col, i64(sc)))
        with fb.loop(0, kd) as k:
            fb.store(fb.load(src, b.add(s0, b.mul(k, i64(sk)))), dst, b.add(d0, b.mul(k, i64(nw))))


def _transpose8_halves(b, load4):
    """The 8 x 8 transpose of rows given as 4-float halves (``load4(r, h)``: row r, floats
    4h..4h+3): rows r and r + 4 are joined per half as they load (a 128-bit insert, which
    runs beside the loads), then 4 x 4 transposes within the 128-bit lanes, 16 shuffles
    (the unpack / 2-lane / 4-lane form takes 24, 8 of them on the one port that crosses
    lanes; K^T of 12 heads packs 2-4% faster)."""
    I32 = ir.IntType(32)

    def sh(x, y, mask):
        return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, len(mask)), mask))
    out = []
    for h in range(2):
        t = [sh(load4(r, h), load4(r + 4, h), list(range(8))) for r in range(4)]
        u0, u1 = sh(t[0], t[1], [0, 8, 1, 9, 4, 12, 5, 13]), sh(t[0], t[1], [2, 10, 3, 11, 6, 14, 7, 15])
        u2, u3 = sh(t[2], t[3], [0, 8, 1, 9, 4, 12, 5, 13]), sh(t[2], t[3], [2, 10, 3, 11, 6, 14, 7, 15])
        lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        out += [sh(u0, u2, lo), sh(u0, u2, hi), sh(u1, u3, lo), sh(u1, u3, hi)]
    return out


def _pack_transposed(fb, dst, dst_off: int, src, soff, kd: int, n: int, sc: int, nw: int) -> None:
    """``emit_pack_panels`` for a B read transposed (column c of B is a contiguous run of
    kd floats ``sc`` apart: K of ``Q @ K^T``): 8 columns x 8 k at a time, sixteen half-vector
    loads, an in-register transpose and eight vector stores into the panel rows (the
    scalar loop stored one float per load, ``nw`` floats apart); the edges scalar."""
    b = fb.b
    V8P = ir.VectorType(F32, 8).as_pointer()
    V4P = ir.VectorType(F32, 4).as_pointer()
    n8, k8 = n // 8 * 8, kd // 8 * 8
    with fb.loop(0, n8, 8) as c0:
        p = b.udiv(c0, i64(nw))
        d0 = b.add(i64(dst_off), b.add(b.mul(p, i64(kd * nw)), b.urem(c0, i64(nw))))
        s0 = b.add(soff, b.mul(c0, i64(sc)))
        with fb.loop(0, k8, 8) as k0:
            dk = b.add(d0, b.mul(k0, i64(nw)))
            outs = _transpose8_halves(b, lambda r, h: b.load(b.bitcast(
                fb.ptr(src, b.add(s0, b.add(k0, i64(r * sc + 4 * h)))), V4P), align=4))
            for j, v in enumerate(outs):
                b.store(v, b.bitcast(fb.ptr(dst, b.add(dk, i64(j * nw))), V8P), align=4)
        if k8 < kd:
            with fb.loop(0, 8) as q:
                with fb.loop(k8, kd) as k:
                    fb.store(fb.load(src, b.add(b.add(s0, b.mul(q, i64(sc))), k)), dst,
                             b.add(b.add(d0, q), b.mul(k, i64(nw))))
    if n8 < n:
        with fb.loop(n8, n) as col:
            p = b.udiv(col, i64(nw))
            d0 = b.add(i64(dst_off), b.add(b.mul(p, i64(kd * nw)), b.urem(col, i64(nw))))
            s0 = b.add(soff, b.mul(col, i64(sc)))
            with fb.loop(0, kd) as k:
                fb.store(fb.load(src, b.add(s0, k)), dst, b.add(d0, b.mul(k, i64(nw))))


PANEL_MR_WIDE = 12


def emit_prefetch_write(fb, ptr) -> None:
    """``prefetchw`` of the cache line at ``ptr`` (into L1, for writing)."""
    I8P = ir.IntType(8).as_pointer()
    I32 = ir.IntType(32)
    fb.intrinsic("llvm.prefetch.p0i8", ir.VoidType(),
                 [fb.b.bitcast(ptr, I8P), ir.Constant(I32, 1), ir.Constant(I32, 3), ir.Constant(I32, 1)])


def tile_rows(wide: bool) -> int:
    """Rows of the tile for products of small depth (attention's, a transposed K): 12
    with 16 lanes (24 zmm accumulators of the 32 registers: 24 FMAs per 2 B loads, 6-8%
    faster on attention than 6 rows), 6 with 8 lanes (16 ymm registers)."""
    return PANEL_MR_WIDE if wide else MR


def emit_panel_gemm(fb, out, out_off, ldo: int, a, a_off, lda: int, bp, bp_off: int, rows: int,
                    kd: int, n: int, wide: bool) -> None:
    """out[out_off + r*ldo + c] = sum_k a[a_off + r*lda + k] * B[k, c] for r < rows, c < n,
    B packed by ``emit_pack_panels`` at ``bp + bp_off``: 6-row tiles times 2-vector panels
    (the GemmPacked tile), every size a compile-time constant."""
    b = fb.b
    L = lanes(wide)
    nw = 2 * L
    V = ir.VectorType(F32, L)
    VP = V.as_pointer()
    fma = _fma_vec(fb.module, L)
    zero = ir.Constant(V, [0.0] * L)
    MR = tile_rows(wide)
    accs = [fb.alloca(V) for _ in range(2 * MR)]
    with b.goto_block(fb.entry):
        stage = b.alloca(F32, size=i64(MR * nw))
        stage.align = 64
    out_off = i64(out_off) if isinstance(out_off, INT) else out_off
    a_off = i64(a_off) if isinstance(a_off, INT) else a_off
    full_p, rem_c = n // nw, n % nw

    def tile(r0, nr):
        rowp = [fb.ptr(a, b.add(a_off, b.mul(b.add(r0, i64(r)), i64(lda)))) for r in range(nr)]
        orow = [b.add(out_off, b.mul(b.add(r0, i64(r)), i64(ldo))) for r in range(nr)]

        def panel(pj, ncols):
            wpanel = fb.ptr(bp, b.add(i64(bp_off), b.mul(pj, i64(kd * nw))))
            # the output lines of the next tile (the next panel, after the last one the
            # next rows' first), for writing, while this k loop runs: at attention's depth
            # (64) a tile's stores that missed L1 stalled on the read-for-ownership (Q K^T
            # at 128 tokens 10-12% faster; prefetching the tile's own lines gave 6-8%)
            nxt = b.mul(b.add(pj, i64(1)), i64(nw))
            more = b.icmp_signed("<", nxt, i64(n))
            for r in range(nr):     # (a row past the product: its own line, not a neighbour's)
                below = b.icmp_signed("<", b.add(r0, i64(nr + r)), i64(rows))
                down = b.select(below, i64(nr * ldo), i64(0))
                line = b.select(more, b.add(orow[r], nxt), b.add(orow[r], down))
                for h in range(0, nw, 16):
                    emit_prefetch_write(fb, fb.ptr(out, b.add(line, i64(h))))
            for acc in accs[:2 * nr]:
                b.store(zero, acc)
            with fb.loop(0, kd) as k:
                wv = [b.load(b.bitcast(fb.ptr(wpanel, b.add(b.mul(k, i64(nw)), i64(h * L))), VP),
                             align=4) for h in range(2)]
                for r in range(nr):
                    sv = _broadcast(b, b.load(b.gep(rowp[r], [k], inbounds=True), align=4), L)
                    for h in range(2):
                        acc = accs[2 * r + h]
                        b.store(b.call(fma, [sv, wv[h], b.load(acc)]), acc)
            col = b.mul(pj, i64(nw))
            if ncols == nw:
                for r in range(nr):
                    for h in range(2):
                        b.store(b.load(accs[2 * r + h]),
                                b.bitcast(fb.ptr(out, b.add(orow[r], b.add(col, i64(h * L)))), VP),
                                align=4)
                return
            for r in range(nr):
                for h in range(2):
                    b.store(b.load(accs[2 * r + h]),
                            b.bitcast(fb.ptr(stage, r * nw + h * L), VP), align=64)
            for r in range(nr):
                with fb.loop(0, ncols) as q:
                    fb.store(fb.load(stage, b.add(i64(r * nw), q)), out, b.add(orow[r], b.add(col, q)))

        if full_p:
            with fb.loop(0, full_p) as pj:
                panel(pj, nw)
        if rem_c:
            panel(i64(full_p), rem_c)

    if rows // MR:
        with fb.loop(0, rows // MR * MR, MR) as r0:
            tile(r0, MR)
    if rows % MR:
        tile(i64(rows // MR * MR), rows % MR)


@dataclass
class BatchedGemm(GemmPacked):
    """``out[i] = act(A[i] @ B[i] + bias)`` over a batch of products with a B known only at
    run time (attention's Q K^T and P V when not fused, a product of two activations):
    each distinct B is packed into the GemmPacked panels in scratch (one pass over B,
    about 1/M of the product's work), then the GemmPacked library function runs the
    product over the pool.  Batch strides in elements (0 = broadcast)."""

    batch: tuple = ()
    a_batch_strides: tuple = ()
    b_batch_strides: tuple = ()
    trans_b: bool = False   # B arrives as [..., N, K] (a transpose read in place)
    name: str = "batched_gemm"

    def key(self):
        return ("batched_gemm",) + super().key()[1:] + (self.batch, self.a_batch_strides,
                                                        self.b_batch_strides, self.trans_b)

    @property
    def _products(self) -> int:
        return int(np.prod(self.batch, dtype=np.int64))

    @property
    def _fits_per_product(self) -> bool:
        return (self.raw and self._products >= PRODUCT_MIN and
                any(s != 0 for s in self.b_batch_strides) and
                panel_floats(self.K, self.N, self.wide) * 4 <= BLOCK_BYTES)

    @property
    def per_product(self) -> bool:
        """Many small products of two activations (attention's Q K^T and P V per head):
        one pool job whose tasks each take whole products, packing their own B and running
        the tile with every size a constant (``emit_panel_gemm``, edge tiles of exactly the
        rows left).  Per product, the library path packs B on the calling thread and then
        starts a pool job of about one tile per task: at 12 heads of 128 x 128 x 64 those
        12 serial packs and 12 job starts cost 5-8% of the product."""
        from .codegen import is_dynamic_emission
        return self._fits_per_product and not is_dynamic_emission()

    @property
    def n_product_tasks(self) -> int:
        return min(self._products, PRODUCT_TASKS)

    @property
    def scratch_bytes(self) -> int:
        one = panel_floats(self.K, self.N, self.wide) * 4
        return _align64(one) * self.n_product_tasks if self._fits_per_product else one

    def emit(self, module, fname, n_args):
        from .kernels import contiguous_strides
        if self.per_product:
            return self._emit_per_product(module, fname, n_args)
        fb, lib, state, pp = library_call(module, fname, n_args, self.library_symbol(),
                                          self.params(), "gemmpk")
        b = fb.b
        F32P = F32.as_pointer()
        out, a, bm = fb.args[0], fb.args[1], fb.args[2]
        bias, _ = epilogue_args(fb, self.has_bias, False)
        packed = fb.args[-1]
        shared_b = all(s == 0 for s in self.b_batch_strides)
        sk, sc = (1, self.K) if self.trans_b else (self.N, 1)
        if shared_b:
            emit_pack_panels(fb, packed, 0, bm, 0, self.K, self.N, sk, sc, self.wide)
        out_st = contiguous_strides(self.batch)

        def product(idx):
            if not shared_b:
                emit_pack_panels(fb, packed, 0, bm,
                                 fb.mul_add(list(zip(idx, self.b_batch_strides))),
                                 self.K, self.N, sk, sc, self.wide)
            ao = fb.mul_add(list(zip(idx, self.a_batch_strides)))
            oo = fb.mul_add([(i, s * self.M * self.N) for i, s in zip(idx, out_st)])
            b.call(lib, [state, pp, fb.ptr(out, oo), fb.ptr(a, ao), b.bitcast(packed, F32P),
                         bias, ir.Constant(F32P, None)])
        fb.loop_nest(self.batch, product)
        return fb.finish()

    def _emit_per_product(self, module, fname, n_args):
        """Tasks over the batch: task t packs and multiplies products [t*chunk, (t+1)*chunk)
        in its own scratch slice."""
        from .kernels import contiguous_strides
        from .parallel import parallel_kernel
        total, tasks = self._products, self.n_product_tasks
        chunk = -(-total // tasks)
        slice_ = _align64(panel_floats(self.K, self.N, self.wide) * 4) // 4
        sk, sc = (1, self.K) if self.trans_b else (self.N, 1)
        out_st = contiguous_strides(self.batch)
        M, N, K = self.M, self.N, self.K

        def task(fb, args, t):
            b = fb.b
            F32P = F32.as_pointer()
            args = [b.bitcast(x, F32P) for x in args]
            out, a, bm, scratch = args[0], args[1], args[2], args[-1]
            s = fb.ptr(scratch, b.mul(t, i64(slice_)))
            lo = b.mul(t, i64(chunk))
            hi = _min(b, b.add(lo, i64(chunk)), i64(total))
            with fb.loop(lo, hi) as e:
                idx, rest = [], e
                for size in reversed(self.batch):
                    idx.append(b.urem(rest, i64(size)))
                    rest = b.udiv(rest, i64(size))
                idx.reverse()
                bo = fb.mul_add(list(zip(idx, self.b_batch_strides)))
                ao = fb.mul_add(list(zip(idx, self.a_batch_strides)))
                oo = fb.mul_add([(i, st * M * N) for i, st in zip(idx, out_st)])
                emit_pack_panels(fb, s, 0, bm, bo, K, N, sk, sc, self.wide)
                emit_panel_gemm(fb, out, oo, N, a, ao, self.lda or K, s, 0, M, K, N, self.wide)
        return parallel_kernel(module, fname, n_args, tasks, task)


#: tasks of a BatchedGemm.per_product job (the pool takes them in turn: 12 heads on 2
#: threads are 6 each), and the fewest products that take that path (fewer, larger
#: products split better by rows)
PRODUCT_TASKS = 16
PRODUCT_MIN = 4


def _align64(nbytes: int) -> int:
    return -(-nbytes // 64) * 64
