"""Native int8 depthwise conv (NCHW, one input and one output channel per group).

The generic int8 GEMM (kernels_int8.QGemm) runs a depthwise conv as one GEMM of a single
row per channel, which keeps almost every lane of its tile idle.  Here each (image,
channel) plane is first copied into scratch with its padding (the zero point), as uint8
(VNNI; int8 input flipped, which shifts its zero point by 128) or zero-extended to int16
(AVX2).  A 32-bit word of that copy at element ``i`` holds ``g`` consecutive inputs
``x[i .. i+g-1]``: 4 bytes for ``vpdpbusd`` (VNNI), 2 int16 for ``vpmaddwd`` (AVX2), which
is exactly what output column ``ow`` needs for taps ``g*p .. g*p+g-1`` at
``i = s*ow + g*p``.  A vector of 8 words at ``s*ow0 + g*p`` thus serves the output columns
``ow0 + e*l`` (lane ``l``, ``e = g / s``): the kernel computes ``e`` such vectors (columns
``ow0 + v``, ``v < e``) per block of ``8e`` columns with plain loads and no shuffles, and
interleaves the ``e`` byte vectors in the store.  Hence strides 1 and 2 (and 4 on VNNI),
no dilation; other depthwise convs stay on the GEMM.

Both accumulate ``sum x_u * w'`` (``w' = w - zw``: int8 for VNNI, int16 for AVX2) exactly
in int32; ``bias - zx_u * sum w'`` (a constant per channel: the padding holds ``zx_u``)
corrects it, and the store requantizes ``y = clamp(rint(acc * multiplier) + zy, lo, hi)``
in float64 as the GEMM's store does, so both paths and the GEMM give bit-equal results.
Planes are split over the pool (one scratch slot per task).
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from .codegen import F64, I8, I32, i64, memcpy, memset
from .kernels import Kernel
from .window import Window2d
from .kernels_int8 import I16, TASKS, _wrap32

LANES = 8       # int32 words per vector (ymm)


def group_of(vnni: bool) -> int:
    return 4 if vnni else 2


def fits(stride: int, dilation: int, vnni: bool) -> bool:
    """Do a tap group's words for consecutive lanes lie next to each other?"""
    return dilation == 1 and group_of(vnni) % stride == 0


def vnni_weights_fit(w: np.ndarray, zw: np.ndarray) -> bool:
    """VNNI needs ``w - zw`` in int8."""
    d = w.reshape(w.shape[0], -1).astype(np.int64) - np.asarray(zw, np.int64).reshape(-1, 1)
    return bool(d.min(initial=0) >= -128 and d.max(initial=0) <= 127)


def pack_weights(w: np.ndarray, zw: np.ndarray, bias, zxu: int, vnni: bool):
    """Weights ``w[C, 1, kh, kw]`` as one int32 word per (channel, kernel row, tap group)
    (``g`` int8 or int16 values of ``w - zw``, zero past ``kw``), and the int32 correction
    per channel ``bias - zxu * sum(w - zw)``."""
    C, _, kh, kw = w.shape
    g = group_of(vnni)
    ng = -(-kw // g)
    d = w.reshape(C, kh, kw).astype(np.int64) - np.asarray(zw, np.int64).reshape(-1, 1, 1)
    full = np.zeros((C, kh, ng * g), np.int64)
    full[:, :, :kw] = d
    words = full.astype(np.int8 if vnni else np.int16).reshape(-1).view(np.int32)
    b = np.zeros(C, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(C)
    corr = b - zxu * d.sum(axis=(1, 2))
    return np.ascontiguousarray(words), _wrap32(corr)


@dataclass
class QDepthwise(Window2d, Kernel):
    """Buffers: out (8-bit NCHW), x (8-bit NCHW), weight words (int32 [C][kh][ng]),
    corrections (int32 [C]), multipliers (float64 [C]), scratch."""

    vnni: bool
    x_signed: bool
    zx: int
    y_signed: bool
    zy: int
    lo: int
    hi: int
    batch: int
    C: int
    name: str = "qdepthwise"

    def key(self):
        return ("qdepthwise", self.vnni, self.x_signed, self.zx, self.y_signed, self.zy,
                self.lo, self.hi, self.batch, self.C) + self.window_key() + (self.name,)

    @property
    def g(self) -> int:
        return group_of(self.vnni)

    @property
    def ng(self) -> int:
        return -(-self.kw // self.g)

    @property
    def e(self) -> int:
        """Vectors per block: lane l of vector v is output column ow0 + v + e*l."""
        return self.g // self.sw

    @property
    def block(self) -> int:
        return LANES * self.e

    @property
    def owpad(self) -> int:
        return -(-self.OW // self.block) * self.block

    @property
    def elem(self) -> int:
        """Bytes per element of the padded plane."""
        return 1 if self.vnni else 2

    @property
    def row_lanes(self) -> int:
        """Lanes per output row in a vector: ``LANES``, or fewer for a narrow plane
        (stride-1 rows): then one vector spans ``LANES / row_lanes`` output rows, lane
        ``l`` being row ``l // row_lanes``, column ``v + e * (l % row_lanes)``, and the
        padded rows are ``g * row_lanes / sh`` elements apart (so the lanes' words are
        still next to each other; a row's right padding is the next row's left)."""
        right = max(0, (self.OW - 1) * self.sw + (self.kw - 1) * self.dw - self.pl - self.W + 1)
        for r in (1, 2, 4):
            wq, rem = divmod(self.g * r, self.sh)
            if not rem and self.e * r >= self.OW and wq >= self.W + max(self.pl, right):
                return r
        return LANES

    @property
    def rows_per_vector(self) -> int:
        return LANES // self.row_lanes

    @property
    def ohpad(self) -> int:
        return -(-self.OH // self.rows_per_vector) * self.rows_per_vector

    @property
    def hp(self) -> int:
        """Rows of the padded plane: every input row an output row (or a row of the last
        vector past the image) reads."""
        return self.rows_read(self.ohpad)

    @property
    def wq(self) -> int:
        """Elements per padded row: the image with its left padding, and every element
        the last block's loads reach (narrow planes: see row_lanes)."""
        if self.row_lanes < LANES:
            return self.g * self.row_lanes // self.sh
        last = self.sw * (self.owpad - self.block + self.e - 1) + self.g * (self.ng - 1) \
            + self.g * LANES
        return max(self.pl + self.W, last)

    @property
    def plane_bytes(self) -> int:
        """The padded rows and the elements loads of garbage lanes reach past them."""
        slack = self.sw * (self.e - 1) + self.g * (self.ng + LANES)
        return -(-(self.hp * self.wq + slack) * self.elem // 64) * 64

    @property
    def planes(self) -> int:
        return self.batch * self.C

    @property
    def slots(self) -> int:
        return min(self.planes, TASKS)

    @property
    def scratch_bytes(self) -> int:
        return self.slots * self.plane_bytes

    @property
    def zxu(self) -> int:
        return (self.zx + 128) if self.x_signed else self.zx

    def n_tasks(self) -> int:
        return self.slots

    # code -------------------------------------------------------------------------------------
    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        return parallel_kernel(module, fname, n_args, self.slots, self._task)

    def _task(self, fb, args, t):
        b = fb.b
        out, x, wk, corr, mult, scratch = args[0], args[1], args[2], args[3], args[4], args[-1]
        plane = b.gep(scratch, [b.mul(t, i64(self.plane_bytes))])
        # the elements past the last row (read by lanes past the image only): defined once
        self._fill(fb, plane, self.hp * self.wq, self.plane_bytes // self.elem - self.hp * self.wq)
        with fb.loop(t, self.planes, self.slots) as p:
            c = b.srem(p, i64(self.C))
            xin = b.gep(x, [b.mul(p, i64(self.H * self.W))])
            self._pad_plane(fb, xin, plane)
            o = b.gep(out, [b.mul(p, i64(self.OH * self.OW))])
            self._plane(fb, plane, o, wk, corr, mult, c)

    def _fill(self, fb, row, a, n):
        """Elements [a, a + n) of ``row`` = ``zx_u``."""
        b = fb.b
        if n <= 0:
            return
        if self.vnni:
            memset(fb, b.gep(row, [i64(a)]), self.zxu & 0xFF, n)
        else:
            with fb.loop(a, a + n) as k:
                fb.store(ir.Constant(I16, self.zxu), row, k, I16)

    def _pad_plane(self, fb, xin, plane):
        """The plane with its padding (``zx_u``) into scratch: uint8 (int8 flipped) for
        VNNI, zero-extended to int16 for AVX2."""
        b = fb.b
        ty = I8 if self.vnni else I16
        lo, hi = self.pl, self.pl + self.W
        fill = lambda row, a, n: self._fill(fb, row, a, n)  # noqa: E731

        with fb.loop(0, self.hp) as r:
            row = b.gep(plane, [b.mul(r, i64(self.wq * self.elem))])
            ih = b.sub(r, i64(self.pt))
            inside = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(self.H)))
            yes, no, end = fb.block("row"), fb.block("padrow"), fb.block("rowdone")
            b.cbranch(inside, yes, no)
            b.position_at_end(yes)
            src = b.gep(xin, [b.mul(ih, i64(self.W))])
            fill(row, 0, lo)
            if self.vnni and not self.x_signed:
                memcpy(fb, b.gep(row, [i64(lo)]), src, self.W)
            else:
                with fb.loop(0, self.W) as k:
                    v = fb.load(src, k, I8)
                    if self.x_signed:
                        v = b.xor(v, ir.Constant(I8, 0x80))
                    fb.store(v if self.vnni else b.zext(v, I16), row, b.add(k, i64(lo)), ty)
            fill(row, hi, self.wq - hi)
            b.branch(end)
            b.position_at_end(no)
            fill(row, 0, self.wq)
            b.branch(end)
            b.position_at_end(end)

    def _dot(self, fb, acc, u, sv):
        b = fb.b
        vty = ir.VectorType(I32, LANES)
        if self.vnni:
            return fb.intrinsic("llvm.x86.avx512.vpdpbusd.256", vty, [acc, u, sv])
        wty = ir.VectorType(I16, 2 * LANES)
        return b.add(acc, fb.intrinsic("llvm.x86.avx2.pmadd.wd", vty,
                                       [b.bitcast(u, wty), b.bitcast(sv, wty)]))

    def _plane(self, fb, plane, o, wk, corr, mult, c):
        b = fb.b
        vty = ir.VectorType(I32, LANES)
        ng, kh, e = self.ng, self.kh, self.e
        wbase = b.mul(c, i64(kh * ng))
        words = [[_splat(b, fb.load(wk, b.add(wbase, i64(i * ng + p)), I32), vty)
                  for p in range(ng)] for i in range(kh)]
        rc = _splat(b, fb.load(corr, c, I32), vty)
        m = _splat(b, fb.load(mult, c, F64), ir.VectorType(F64, LANES))
        ety = I8 if self.vnni else I16

        def rows_at(oh):
            """Kernel row i's padded row for output row ``oh``, as element pointers."""
            return [b.bitcast(b.gep(plane, [b.mul(b.add(b.mul(oh, i64(self.sh)),
                                                        i64(i * self.dh)),
                                                 i64(self.wq * self.elem))]), ety.as_pointer())
                    for i in range(kh)]

        def block(rows, ow0):
            """The ``e`` requantized byte vectors of columns ow0 + v + e*l."""
            ys = []
            for v in range(e):
                acc = rc
                col = b.mul(b.add(ow0, i64(v)), i64(self.sw))
                for i in range(kh):
                    for p in range(ng):
                        at = b.gep(rows[i], [b.add(col, i64(p * self.g))])
                        u = b.load(b.bitcast(at, vty.as_pointer()), align=1)
                        acc = self._dot(fb, acc, u, words[i][p])
                ys.append(self._requantize(fb, acc, m))
            return ys

        if self.row_lanes < LANES:
            self._narrow(fb, o, rows_at, block)
            return
        full = (self.OW // self.block) * self.block
        with fb.loop(0, self.OH) as oh:
            orow = b.gep(o, [b.mul(oh, i64(self.OW))])
            rows = rows_at(oh)
            if full:
                with fb.loop(0, full, self.block) as ow0:
                    y = _interleave(b, block(rows, ow0))
                    ptr = b.bitcast(b.gep(orow, [ow0]), y.type.as_pointer())
                    b.store(y, ptr, align=1)
            if self.OW > full:
                y = _interleave(b, block(rows, i64(full)))
                for lane in range(self.OW - full):
                    fb.store(b.extract_element(y, ir.Constant(I32, lane)), orow,
                             i64(full + lane), I8)

    def _narrow(self, fb, o, rows_at, block):
        """Narrow planes: a block of ``rows_per_vector`` output rows, lane by lane."""
        b = fb.b
        R, rl, e = self.rows_per_vector, self.row_lanes, self.e

        def store(oh0, n_rows):
            ys = block(rows_at(oh0), i64(0))
            base = b.mul(oh0, i64(self.OW))
            for v in range(e):
                for lane in range(LANES):
                    q, col = lane // rl, v + e * (lane % rl)
                    if q < n_rows and col < self.OW:
                        fb.store(b.extract_element(ys[v], ir.Constant(I32, lane)), o,
                                 b.add(base, i64(q * self.OW + col)), I8)

        whole = self.OH // R * R
        if whole:
            with fb.loop(0, whole, R) as oh0:
                store(oh0, R)
        if self.OH > whole:
            store(i64(whole), self.OH - whole)

    def _requantize(self, fb, acc, m):
        b = fb.b
        dty = ir.VectorType(F64, LANES)
        d = b.fmul(b.sitofp(acc, dty), m)
        d = fb.intrinsic("llvm.rint.v8f64", dty, [d])
        d = b.fadd(d, ir.Constant(dty, [float(self.zy)] * LANES))
        lo = ir.Constant(dty, [float(self.lo)] * LANES)
        hi = ir.Constant(dty, [float(self.hi)] * LANES)
        d = b.select(b.fcmp_ordered("<", d, lo), lo, d)
        d = b.select(b.fcmp_ordered(">", d, hi), hi, d)
        return b.trunc(b.fptosi(d, ir.VectorType(I32, LANES)), ir.VectorType(I8, LANES))


def _splat(b, s, vty):
    v = b.insert_element(ir.Constant(vty, None), s, ir.Constant(I32, 0))
    return b.shuffle_vector(v, ir.Constant(vty, None),
                            ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))


def _interleave(b, ys):
    """One byte vector of ``len(ys)`` vectors' lanes interleaved: out[v + e*l] = ys[v][l]."""
    e = len(ys)
    if e == 1:
        return ys[0]
    n = ys[0].type.count
    if e == 2:
        mask = [v * n + l for l in range(n) for v in range(2)]
        return b.shuffle_vector(ys[0], ys[1], ir.Constant(ir.VectorType(I32, 2 * n), mask))
    cat = [b.shuffle_vector(ys[k], ys[k + 1], ir.Constant(ir.VectorType(I32, 2 * n),
                                                           list(range(2 * n))))
           for k in (0, 2)]
    mask = [v * n + l for l in range(n) for v in range(4)]
    return b.shuffle_vector(cat[0], cat[1], ir.Constant(ir.VectorType(I32, 4 * n), mask))
