"""Transposed 2-d convolution (ONNX ConvTranspose, DCGAN-style generators) on NCHW.

A transposed conv scatters every input pixel times its ``kh x kw`` kernel into the output.
Written as ``cols = W^T @ X`` per (image, group), with ``W^T`` the constant weights as a
``[M/g * kh * kw, C/g]`` matrix and ``X`` the image as ``[C/g, H * W]``, it is one GEMM into
scratch (``kernels_gemm.BatchedGemm``, the weights read in place; for planes under 64
pixels swapped, ``cols^T = X^T @ W`` on ``GemmPacked`` with the weights packed at compile
time; ``Gemv`` for a 1x1 input), then a *col2im* per output plane (one task each, so no
two tasks write the same element): each output row is summed in a phase-major row buffer
where every tap's input row is a contiguous run (vectorized adds), starting from the
bias, and written out with its phases interleaved.  Tap bounds are compile-time
constants, so the loops have no checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from .codegen import F32, i64
from .kernels import Gemv, Kernel
from .kernels_gemm import BatchedGemm, GemmPacked, pack_b
from .kernels_nhwc import MatMulPacked


def pack_conv_transpose_weights(w, groups: int):
    """Weights [C, M/g, kh, kw] -> W_g^T [g, M/g * kh * kw, C/g] (row-major per group)."""
    import numpy as np
    w = np.asarray(w, np.float32)
    C = w.shape[0]
    cg = C // groups
    rows = int(np.prod(w.shape[1:]))
    return np.ascontiguousarray(w.reshape(groups, cg, rows).transpose(0, 2, 1))


#: planes of fewer input pixels than this run their GEMM swapped (``ConvTranspose2d.swapped``)
SWAP_MAX_PIXELS = 64
SWAP_MR = 0   # 0: ConvTranspose2d.swap_rows chooses


def pack_swapped_weights(w, wide: bool):
    """Weights [C, M, kh, kw] (one group) as the packed B [C, M * kh * kw] of
    ``cols^T = x^T @ B`` (``ConvTranspose2d.swapped``)."""
    import numpy as np
    w = np.asarray(w, np.float32)
    return pack_b(w.reshape(w.shape[0], -1), wide)


def tap_range(k: int, s: int, p: int, d: int, n_in: int, n_out: int) -> tuple[int, int]:
    """[lo, hi): the input positions whose tap ``k`` lands inside the output
    (``o = i * s - p + k * d`` in [0, n_out))."""
    lo = max(0, -((k * d - p) // s))
    hi = min(n_in, (n_out - 1 + p - k * d) // s + 1)
    return lo, max(lo, hi)


@dataclass
class ConvTranspose2d(Kernel):
    """y[n, m, oh, ow] = bias[m] + sum over (c, ih, iw, i, j) with oh = ih*sh - pt + i*dh and
    ow = iw*sw - pl + j*dw of x[n, c, ih, iw] * w[c, m % (M/g), i, j] (c in m's group)."""

    N: int
    C: int
    H: int
    W: int
    M: int
    OH: int
    OW: int
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
    wide: bool = False  # 16-lane GEMM tiles (kernels_nhwc.wide_tiles)
    name: str = "conv_transpose"

    def key(self):
        return ("convT", self.N, self.C, self.H, self.W, self.M, self.OH, self.OW, self.kh,
                self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl, self.group,
                self.has_bias, self.wide)

    @property
    def rows(self) -> int:
        """Rows of cols per (image, group): (M/g) * kh * kw."""
        return self.M // self.group * self.kh * self.kw

    @property
    def cols_bytes(self) -> int:
        return self.N * self.group * self.rows * self.H * self.W * 4

    @property
    def scratch_bytes(self) -> int:
        extra = self.H * self.W * self.C * 4 if self.swapped else 0  # x^T of one image
        return self.cols_bytes + extra + self.gemm().scratch_bytes

    @property
    def swapped(self) -> bool:
        """A small plane (DCGAN's 4x4): the GEMM as ``cols^T [H*W, rows] = x^T @ W`` on
        GemmPacked with the weights packed at compile time (``pack_swapped_weights``): 16 pixels
        would fill only half a 2-vector panel, while the pixels as tile rows waste at most 5
        of them.  cols is then pixel-major; ``_col2im`` reads it with swapped strides."""
        return not self.from_vector and self.group == 1 and self.H * self.W < SWAP_MAX_PIXELS

    @property
    def from_vector(self) -> bool:
        """A 1x1 input (a generator's latent vector): cols is x @ W, a matrix-vector
        product per image, which the GEMM's 16-column panels would fill with zeros."""
        return self.H * self.W == 1 and self.group == 1 and self.N <= 4

    @property
    def swap_rows(self) -> int:
        """Tile rows of the swapped GEMM: with 16 lanes (32 registers) the one of 6, 8 and 12
        that wastes the fewest rows (16 pixels: 2 tiles of 8 instead of 3 of 6)."""
        if not self.wide:
            return 6
        P = self.H * self.W
        return min((-(-P // r) * r - P, -r, r) for r in (6, 8, 12))[2] if SWAP_MR == 0 else SWAP_MR

    def gemm(self):
        """cols[n, g] = W_g^T [rows, C/g] @ x[n, g] [C/g, H*W] for every (image, group)."""
        cg, P = self.C // self.group, self.H * self.W
        if self.from_vector:
            return Gemv(M=self.N, N=self.rows, K=self.C)
        if self.swapped:
            return GemmPacked(M=P, N=self.rows, K=self.C, wide=self.wide, mr=self.swap_rows)
        if P < 4 * 16:  # grouped, a few pixels: 16-column panels waste less than 2-vector ones
            return MatMulPacked(M=self.rows, N=P, K=cg, batch=(self.N, self.group),
                                a_batch_strides=(0, self.rows * cg),
                                b_batch_strides=(self.C * P, cg * P))
        return BatchedGemm(M=self.rows, N=P, K=cg, wide=self.wide, batch=(self.N, self.group),
                           a_batch_strides=(0, self.rows * cg),
                           b_batch_strides=(self.C * P, cg * P))

    def emit(self, module, fname, n_args):
        from .kernels import _fb
        from .parallel import parallel_kernel
        scatter = parallel_kernel(module, fname + "_col2im", n_args, self.N * self.M, self._col2im)
        fb = _fb(module, fname, n_args)
        b = fb.b
        x, wt, scratch = fb.args[1], fb.args[2], fb.args[-1]
        if self.from_vector:
            gemv = self.gemm().emit(module, fname + "_gemv", 3)
            b.call(gemv, [scratch, x, wt])
        elif self.swapped:
            gemm = self.gemm().emit(module, fname + "_gemm", 3)
            P, C = self.H * self.W, self.C
            xt = fb.ptr(scratch, self.cols_bytes // 4)
            with fb.loop(0, self.N) as n:  # x[n] [C, P] -> x^T [P, C], then one GEMM per image
                xn = b.mul(n, i64(C * P))
                with fb.loop(0, P) as p:
                    with fb.loop(0, C) as c:
                        fb.store(fb.load(x, b.add(xn, b.add(b.mul(c, i64(P)), p))),
                                 xt, b.add(b.mul(p, i64(C)), c))
                b.call(gemm, [fb.ptr(scratch, b.mul(n, i64(self.rows * P))), xt, wt])
        else:
            gemm = self.gemm().emit(module, fname + "_gemm", 4)
            b.call(gemm, [scratch, wt, x, fb.ptr(scratch, self.cols_bytes // 4)])
        b.call(scatter, list(fb.args))
        return fb.finish()

    @property
    def phase_len(self) -> int:
        """Columns per output-column phase in the row buffer (``_col2im``)."""
        return -(-self.OW // self.sw)

    def _col2im(self, fb, args, t):
        """One output plane, row by row.  Output column ``ow = sw * a + pw`` of tap j and input
        column iw has ``a = iw + e_j`` (``e_j = floor((j*dw - pl) / sw)``) and a phase pw
        fixed by j, so in a row buffer laid out phase by phase (``buf[pw][a]``) every tap's
        row adds into a contiguous run: a plain loop LLVM vectorizes.  The row is then
        written to the output with the phases interleaved (explicit shuffles for stride 2)."""
        b = fb.b
        y, bias, cols = args[0], (args[3] if self.has_bias else None), args[-1]
        mg = self.M // self.group
        P, OW, A, sw = self.H * self.W, self.OW, self.phase_len, self.sw
        n = b.sdiv(t, i64(self.M))
        m = b.srem(t, i64(self.M))
        g = b.sdiv(m, i64(mg))
        ml = b.srem(m, i64(mg))
        plane = fb.ptr(y, b.mul(t, i64(self.OH * OW)))
        init = fb.load(bias, m) if bias is not None else ir.Constant(F32, 0.0)
        if self.swapped:   # cols^T: [image][pixel][row]
            rs, ps = 1, self.rows
            rows = fb.ptr(cols, b.add(b.mul(n, i64(self.rows * P)), b.mul(ml, i64(self.kh * self.kw))))
        else:              # [image][group][row][pixel]
            rs, ps = P, 1
            rows = fb.ptr(cols, b.mul(b.add(b.mul(b.add(b.mul(n, i64(self.group)), g),
                                                  i64(self.rows)),
                                            b.mul(ml, i64(self.kh * self.kw))), i64(P)))
        with b.goto_block(fb.entry):
            buf = b.alloca(F32, size=i64(sw * A))
            buf.align = 64
        taps = []  # per j: (phase, e_j, input column range)
        for j in range(self.kw):
            wlo, whi = tap_range(j, sw, self.pl, self.dw, self.W, OW)
            off = j * self.dw - self.pl
            taps.append((off % sw, off // sw, wlo, whi))
        with fb.loop(0, self.OH) as oh:
            with fb.loop(0, sw * A) as q:
                fb.store(init, buf, q)
            for i in range(self.kh):
                if all(lo >= hi for _, _, lo, hi in taps):
                    continue
                tt = b.add(oh, i64(self.pt - i * self.dh))  # ih * sh when tap i hits this row
                ok = b.and_(b.icmp_signed(">=", tt, i64(0)),
                            b.icmp_signed("<", tt, i64(self.H * self.sh)))
                if self.sh > 1:
                    ok = b.and_(ok, b.icmp_signed("==", b.srem(tt, i64(self.sh)), i64(0)))
                with b.if_then(ok):
                    ih = b.sdiv(tt, i64(self.sh)) if self.sh > 1 else tt
                    src_i = fb.ptr(rows, b.add(b.mul(ih, i64(self.W * ps)), i64(i * self.kw * rs)))
                    for j, (pw, e, wlo, whi) in enumerate(taps):
                        if wlo >= whi:
                            continue
                        src = fb.ptr(src_i, i64(j * rs))
                        dst = fb.ptr(buf, i64(pw * A + e))
                        with fb.loop(wlo, whi) as iw:
                            sv = fb.load(src, b.mul(iw, i64(ps)) if ps != 1 else iw)
                            fb.store(b.fadd(fb.load(dst, iw), sv), dst, iw)
            orow = fb.ptr(plane, b.mul(oh, i64(OW)))
            self._write_row(fb, orow, buf)

    def _write_row(self, fb, orow, buf):
        """orow[sw * a + pw] = buf[pw * A + a] for every output column."""
        b = fb.b
        OW, A, sw = self.OW, self.phase_len, self.sw
        start = 0
        if sw == 2:
            L = 16 if self.wide else 8
            V = ir.VectorType(F32, L)
            V2 = ir.VectorType(F32, 2 * L)
            idx = [v for k in range(L) for v in (k, L + k)]
            nvec = OW // (2 * L)
            if nvec:
                with fb.loop(0, nvec * L, L) as a:
                    v0 = b.load(b.bitcast(fb.ptr(buf, a), V.as_pointer()), align=4)
                    v1 = b.load(b.bitcast(fb.ptr(buf, b.add(a, i64(A))), V.as_pointer()), align=4)
                    both = b.shuffle_vector(v0, v1, ir.Constant(ir.VectorType(ir.IntType(32), 2 * L), idx))
                    b.store(both, b.bitcast(fb.ptr(orow, b.mul(a, i64(2))), V2.as_pointer()), align=4)
            start = nvec * 2 * L
        if start < OW:
            with fb.loop(start, OW) as ow:
                q = b.add(b.mul(b.srem(ow, i64(sw)), i64(A)), b.sdiv(ow, i64(sw))) if sw > 1 else ow
                fb.store(fb.load(buf, q), orow, ow)
