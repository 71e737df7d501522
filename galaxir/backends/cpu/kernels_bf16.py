"""bfloat16 GEMM with ``vdpbf16ps`` (AVX512-BF16): ``C[M, N] = act(A[M, K] @ B[K, N] + bias)``
in float32 from a bfloat16 A and constant bfloat16 weights.

``vdpbf16ps acc, a, b`` adds ``a[2j] * b[2j] + a[2j+1] * b[2j+1]`` to each float lane j:
one instruction does the work of two FMAs.  So B is packed once, at compile time, into
the GemmPacked panels with k taken two at a time: ``[panel][ceil(K / 2)][32 lanes]`` of
32-bit pairs (low half B[2kk, n], high half B[2kk + 1, n]; zero past N and past K).  A
needs no packing: a bf16 row holds its pairs in order, so one 32-bit load broadcast to
the 16 lanes is A[m, 2kk..2kk+1]; an odd K's last element is loaded alone (the high half
zero, so a non-finite value past the row never meets the zero pad of B).

The tile, the work split and the tile store (bias, residual, activation, edge tiles) are
kernels_gemm.GemmPacked's: 6 rows x 2 vectors of 16 floats, twelve accumulators.  The
instruction flushes denormal inputs and outputs to zero and rounds the pair's sum once,
so results differ from the float32 kernel's by a few float32 ulps per k (far inside
bfloat16's own rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from .codegen import F32, I32, i64
from .kernels import EpilogueCode, build_task_library
from .kernels_gemm import (G_CHUNKS, G_K, G_LDA, G_LO, G_M, G_N, G_PANELS, G_PB, G_TILES,
                           G_TPER, G_HAS_BIAS, G_NTASKS, GemmPacked, _store_tile, task_span,
                           tile_row_pointers)

LANES = 16          # float lanes of one zmm accumulator
NW = 2 * LANES      # columns of a panel
I16 = ir.IntType(16)
DPBF16 = "llvm.x86.avx512bf16.dpbf16ps.512"


class BFloatType(ir.Type):
    """LLVM's ``bfloat`` (llvmlite.ir has no bfloat type): the intrinsic's operand lanes."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, BFloatType)

    def __hash__(self):
        return hash("bfloat")


BF16X32 = ir.VectorType(BFloatType(), 2 * LANES)


def bf16_bits(w) -> np.ndarray:
    """The uint16 bit patterns of ``w`` as bfloat16 (a float32 array is rounded to
    nearest even, as ml_dtypes does)."""
    import ml_dtypes
    w = np.asarray(w)
    if w.dtype != ml_dtypes.bfloat16:
        w = w.astype(np.float32).astype(ml_dtypes.bfloat16)
    return np.ascontiguousarray(w).view(np.uint16)


def pack_b_bf16(b) -> np.ndarray:
    """B [K, N] -> uint32 panels [ceil(N / 32)][ceil(K / 2)][32]: each lane the pair
    (B[2kk, n], B[2kk + 1, n]) as bf16 bits, low half first; zero past N and K."""
    bits = bf16_bits(b)
    k, n = bits.shape
    k2, panels = -(-k // 2), -(-n // NW)
    padded = np.zeros((2 * k2, panels * NW), np.uint32)
    padded[:k, :n] = bits
    pairs = padded[0::2] | (padded[1::2] << 16)             # [k2, panels * NW]
    return np.ascontiguousarray(pairs.reshape(k2, panels, NW).transpose(1, 0, 2))


@dataclass
class GemmBf16(GemmPacked):
    """GemmPacked for a bfloat16 A (rows ``lda`` elements apart) and B packed by
    ``pack_b_bf16``; float32 out, bias and residual.  Always 16 lanes (AVX-512)."""

    name: str = "gemm_bf16"

    def key(self):
        return ("gemm_bf16",) + super().key()[1:]

    def library_symbol(self) -> str:
        from . import library
        act, params = self.act_class()
        if self.raw:
            act = "raw"
        vname = f"gemmbf16_{act}" + ("_" + "_".join(f"{v:g}" for v in params) if params else "") + \
            ("_z" if self.has_z else "") + (f"_mr{self.tile_rows}" if self.tile_rows != 6 else "")
        variant = (act, params, self.has_z, self.tile_rows)
        return library.ensure(vname, lambda m, n: build_task_library(
            m, n, G_NTASKS, lambda tb, pp, ptrs, t: _bf16_task(tb, variant, pp, *ptrs, t)))


def _dpbf16(fb):
    fn = fb.module.globals.get(DPBF16)
    if fn is None:
        V = ir.VectorType(F32, LANES)
        fn = ir.Function(fb.module, ir.FunctionType(V, [V, BF16X32, BF16X32]), DPBF16)
    return fn


def _bf16_task(fb, variant, params, c, a, bp, bias, z, t):
    act, act_params, has_z, MR = variant
    b = fb.b
    V = ir.VectorType(F32, LANES)
    VI = ir.VectorType(I32, LANES)
    VIP = VI.as_pointer()
    V8P = ir.VectorType(F32, 8).as_pointer()
    I16P, I32P = I16.as_pointer(), I32.as_pointer()

    def P(k):
        return b.load(b.gep(params, [i64(k)], inbounds=True))

    M, N, K, LDA = P(G_M), P(G_N), P(G_K), P(G_LDA)
    panels, tper, chunks, pb = P(G_PANELS), P(G_TPER), P(G_CHUNKS), P(G_PB)
    has_bias = b.icmp_signed("!=", P(G_HAS_BIAS), i64(0))
    epi = EpilogueCode(fb, "lin" if act == "raw" else act, act_params, params, G_LO)
    dp = _dpbf16(fb)
    zero = ir.Constant(V, [0.0] * LANES)
    accs = [fb.alloca(V) for _ in range(2 * MR)]
    with b.goto_block(fb.entry):
        tile = b.alloca(F32, size=i64(MR * NW))
        tile.align = 64
        zb = b.alloca(F32, size=i64(NW))
        zb.align = 64
    for j in range(NW // 8):
        b.store(ir.Constant(ir.VectorType(F32, 8), [0.0] * 8), b.bitcast(fb.ptr(zb, j * 8), V8P),
                align=32)
    a16 = b.bitcast(a, I16P)
    bp32 = b.bitcast(bp, I32P)
    k2 = b.sdiv(K, i64(2))              # whole pairs
    odd = b.icmp_signed("!=", b.and_(K, i64(1)), i64(0))
    kp = b.add(k2, b.and_(K, i64(1)))   # pair rows of a panel

    def splat(x32):
        v = b.insert_element(ir.Constant(VI, ir.Undefined), x32, ir.Constant(I32, 0))
        v = b.shuffle_vector(v, ir.Constant(VI, ir.Undefined), ir.Constant(VI, [0] * LANES))
        return b.bitcast(v, BF16X32)

    def step(wpanel, kk, rowp, load_a):
        wv = [b.bitcast(b.load(b.bitcast(b.gep(wpanel, [b.add(b.mul(kk, i64(NW)), i64(h * LANES))],
                                                inbounds=True), VIP), align=4), BF16X32)
              for h in range(2)]
        for r in range(MR):
            av = splat(load_a(rowp[r], kk))
            for h in range(2):
                acc = accs[2 * r + h]
                b.store(b.call(dp, [b.load(acc), av, wv[h]]), acc)

    def pair(row, kk):       # A[m, 2kk], A[m, 2kk + 1] as one 32-bit load
        return b.load(b.bitcast(b.gep(row, [b.mul(kk, i64(2))], inbounds=True), I32P), align=2)

    def last(row, kk):       # A[m, 2kk] alone (odd K), high half zero
        return b.zext(b.load(b.gep(row, [b.mul(kk, i64(2))], inbounds=True), align=2), I32)

    t0, t1, p0, p1 = task_span(b, t, chunks, tper, P(G_TILES), pb, panels)
    with fb.loop(t0, t1) as ti:
        r0, rows, rowp = tile_row_pointers(
            b, ti, MR, M, lambda rr: b.gep(a16, [b.mul(rr, LDA)], inbounds=True))
        with fb.loop(p0, p1) as pj:
            wpanel = b.gep(bp32, [b.mul(pj, b.mul(kp, i64(NW)))], inbounds=True)
            for acc in accs:
                b.store(zero, acc)
            with fb.loop(0, k2) as kk:
                step(wpanel, kk, rowp, pair)
            with fb.if_(odd):
                step(wpanel, k2, rowp, last)
            _store_tile(fb, epi, accs, tile, zb, c, bias, has_bias, N, r0, rows, pj, LANES,
                        z if has_z else None, MR, raw=act == "raw")
