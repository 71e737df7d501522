"""The panel product of kernels_gemm (``emit_pack_panels`` / ``emit_panel_gemm``) with its
sizes read at run time, for a dynamic module (issue 15).

Fused attention on short sequences packs K and V per head into panels and multiplies
with 6 (or 12) row tiles instead of calling sgemm; the static emitters unroll on the
sizes (the panel count, the last panel's columns, the last tile's rows), so a dynamic
module used to take sgemm (one thread, about 8 us per call).  Here every size is an IR
value: full tiles and panels are loops with run-time bounds, the last panel's columns go
through the staging buffer with a run-time count, and the last tile's rows past the end
are clamped to the last row, so the emitted code is the same for every length.  Sizes come in as anything ``FnBuilder.dim``
takes (ints, traced numbers) or as i64 IR values.
"""
from __future__ import annotations

import llvmlite.ir as ir

from .codegen import F32, INT, i64
from .kernels import _broadcast, _fma_vec
from .kernels_gemm import _transpose8_halves, lanes, tile_rows


def _v(fb, x):
    """An i64 IR value for a size (run-time slot) or an IR value as it is."""
    return fb.dim(x) if isinstance(x, INT) or hasattr(x, "__index__") else x


def emit_pack_panels_rt(fb, dst, dst_off, src, src_off, kd, n, sk, sc, wide: bool) -> None:
    """``emit_pack_panels`` with run-time ``kd``, ``n`` and strides: the B read transposed
    (``sk`` 1: K of ``Q @ K^T``) in 8 x 8 in-register transposes with scalar edges, any
    other B one row at a time (V of ``P V``: contiguous reads)."""
    b = fb.b
    nw = 2 * lanes(wide)
    # a unit k stride is the layout (attention's field ``kt``), the same for every shape
    transposed = type(sk) is int and sk == 1
    dst_off, soff, kd, n = _v(fb, dst_off), _v(fb, src_off), _v(fb, kd), _v(fb, n)
    sk, sc = _v(fb, sk), _v(fb, sc)
    pstride = b.mul(kd, i64(nw))          # floats per packed panel
    if transposed:
        V8P = ir.VectorType(F32, 8).as_pointer()
        V4P = ir.VectorType(F32, 4).as_pointer()
        n8 = b.and_(n, i64(-8))
        k8 = b.and_(kd, i64(-8))
        with fb.loop(0, n8, 8) as c0:
            p = b.udiv(c0, i64(nw))
            d0 = b.add(dst_off, b.add(b.mul(p, pstride), b.urem(c0, i64(nw))))
            s0 = b.add(soff, b.mul(c0, sc))
            with fb.loop(0, k8, 8) as k0:
                dk = b.add(d0, b.mul(k0, i64(nw)))
                outs = _transpose8_halves(b, lambda r, h: b.load(b.bitcast(fb.ptr(
                    src, b.add(s0, b.add(k0, b.add(b.mul(i64(r), sc), i64(4 * h))))), V4P),
                    align=4))
                for j, v in enumerate(outs):
                    b.store(v, b.bitcast(fb.ptr(dst, b.add(dk, i64(j * nw))), V8P), align=4)
            with fb.loop(0, 8) as q:
                with fb.loop(k8, kd) as k:
                    fb.store(fb.load(src, b.add(b.add(s0, b.mul(q, sc)), k)), dst,
                             b.add(b.add(d0, q), b.mul(k, i64(nw))))
        with fb.loop(n8, n) as col:
            p = b.udiv(col, i64(nw))
            d0 = b.add(dst_off, b.add(b.mul(p, pstride), b.urem(col, i64(nw))))
            s0 = b.add(soff, b.mul(col, sc))
            with fb.loop(0, kd) as k:
                fb.store(fb.load(src, b.add(s0, k)), dst, b.add(d0, b.mul(k, i64(nw))))
        return
    with fb.loop(0, kd) as k:  # row k of B: columns ``sc`` apart (contiguous for V)
        srow = b.add(soff, b.mul(k, sk))
        drow = b.add(dst_off, b.mul(k, i64(nw)))
        with fb.loop(0, n) as col:
            d = b.add(drow, b.add(b.mul(b.udiv(col, i64(nw)), pstride), b.urem(col, i64(nw))))
            fb.store(fb.load(src, b.add(srow, b.mul(col, sc))), dst, d)


def emit_panel_gemm_rt(fb, out, out_off, ldo, a, a_off, lda, bp, bp_off, rows, kd, n,
                       wide: bool) -> None:
    """``emit_panel_gemm`` with run-time ``rows``, ``kd``, ``n``, offsets and strides."""
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
    out_off, a_off, ldo, lda = _v(fb, out_off), _v(fb, a_off), _v(fb, ldo), _v(fb, lda)
    bp_off, rows, kd, n = _v(fb, bp_off), _v(fb, rows), _v(fb, kd), _v(fb, n)
    full_p = b.udiv(n, i64(nw))
    rem_c = b.urem(n, i64(nw))
    pstride = b.mul(kd, i64(nw))

    last = b.sub(rows, i64(1))

    def tile(r0, nr):
        ri = [b.add(r0, i64(r)) for r in range(nr)]
        ri = [b.select(b.icmp_signed("<", x, rows), x, last) for x in ri]
        rowp = [fb.ptr(a, b.add(a_off, b.mul(x, lda))) for x in ri]
        orow = [b.add(out_off, b.mul(x, ldo)) for x in ri]

        def panel(pj, ncols):  # ncols None: a whole panel
            wpanel = fb.ptr(bp, b.add(bp_off, b.mul(pj, pstride)))
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
            if ncols is None:
                for r in range(nr):
                    for h in range(2):
                        b.store(b.load(accs[2 * r + h]),
                                b.bitcast(fb.ptr(out, b.add(orow[r], b.add(col, i64(h * L)))), VP),
                                align=4)
                return
            for r in range(nr):
                for h in range(2):
                    b.store(b.load(accs[2 * r + h]),
                            b.bitcast(b.gep(stage, [i64(r * nw + h * L)], inbounds=True), VP),
                            align=64)
            for r in range(nr):
                with fb.loop(0, ncols) as q:
                    fb.store(b.load(b.gep(stage, [b.add(i64(r * nw), q)], inbounds=True)), out,
                             b.add(orow[r], b.add(col, q)))

        with fb.loop(0, full_p) as pj:
            panel(pj, None)
        with fb.if_(b.icmp_unsigned("!=", rem_c, i64(0))):
            panel(full_p, rem_c)

    # every tile MR rows, the last one's rows past ``rows`` clamped to the last row: they
    # recompute and store that row's values again (the same FMA order: the same bits), so
    # one tile body serves every row count (a tile per remainder size, as the static
    # emitter has, costs several times the attention kernel's compile time)
    ntiles = b.udiv(b.add(rows, i64(MR - 1)), i64(MR))
    with fb.loop(0, b.mul(ntiles, i64(MR)), MR) as r0:
        tile(r0, MR)
