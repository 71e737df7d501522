"""``dynamic_qmatmul`` (galaxir/passes/qdq_dynamic.py): dynamic quantization's whole matmul
chain in one kernel.  x's range and uint8 quantization (kernels_qtypes, vectorized), then
the packed int8 GEMM (kernels_int8.QGemm for zero point 0, split over the pool by row
chunks) with a float32 store: its per-column corrections take ``- zx * colsum[n]`` first
(so ``(x - zx) @ (w - zw)`` is exact in wrapping int32), and each tile is stored as
``float(acc) * (x_scale * w_scale[n]) (+ bias[n])``, the graph's operations in its order,
so the result is the unfused chain's bit for bit, with no int32 or float intermediate.
"""
from __future__ import annotations

from dataclasses import dataclass

from .codegen import F32, I8, I32, FnBuilder, i64
from .kernels import Kernel
from .kernels_int8 import QGemm, _smin
from .kernels_qtypes import dynamic_params, quantize_u8

I8P = I8.as_pointer()


def _round64(n: int) -> int:
    return -(-n // 64) * 64


@dataclass
class QGemmF32(QGemm):
    """kernels_int8.QGemm (matmul, ``out="i32"`` geometry) whose store writes float32
    ``float(acc) * scale[n] (+ bias[n])``.  Buffers: out, x, packed, corrections,
    scale (float32 [N]), [bias (float32 [N])], scratch."""

    bias: bool = False
    name: str = "qgemm_f32"

    def _matmul_task(self, fb, args, extra, t):
        b = fb.b
        out, x, pk, corr, _, packed, cbuf = self._bufs(fb, args)
        sc, bias = args[4], (args[5] if self.bias else None)
        per, _ = self._chunks(self.M, self.r_tile)
        m_lo = b.mul(t, i64(per))
        m_hi = _smin(b, b.add(m_lo, i64(per)), i64(self.M))
        self._pack_rows(fb, x, packed, m_lo, m_hi)
        self._gemm(fb, packed, pk, cbuf, m_lo, m_hi)
        npad, N = self.npad, self.N
        c32 = b.bitcast(cbuf, I32.as_pointer())
        with fb.loop(m_lo, m_hi) as m:
            row = b.mul(m, i64(npad))
            rs = b.load(b.gep(c32, [b.add(row, i64(N))])) if self.vnni else None
            with fb.loop(0, N) as n:
                acc = b.add(b.load(b.gep(c32, [b.add(row, n)])), fb.load(corr, n, I32))
                if self.vnni:      # the row sums of x times the columns' zero-point term
                    acc = b.sub(acc, b.mul(fb.load(corr, b.add(n, i64(N)), I32), rs))
                y = b.fmul(b.sitofp(acc, F32), fb.load(sc, n, F32))
                if bias is not None:
                    y = b.fadd(y, fb.load(bias, n, F32))
                fb.store(y, out, fb.mul_add([(m, N), (n, 1)]), F32)


@dataclass
class DynQMatMul(Kernel):
    """``inner``: a QGemmF32.  Buffers: out (float32 [M, N]), x (float32 [M, K]), packed
    weights, corrections (``n_corr`` int32, the first N per column), colsum (int32 [N]),
    w_scale (float32 [N]), [bias (float32 [N])], scratch: x quantized, the corrected
    corrections, x_scale * w_scale, the inner kernel's scratch."""

    inner: Kernel
    M: int
    K: int
    N: int
    n_corr: int
    bias: bool = False
    name: str = "dynamic_qmatmul"

    def key(self):
        return ("dynamic_qmatmul", self.inner.key(), self.M, self.K, self.N, self.n_corr, self.bias)

    def _offsets(self) -> tuple[int, int, int, int]:
        xq = 0
        corr = xq + _round64(self.M * self.K)
        scale = corr + _round64(4 * self.n_corr)
        inner = scale + _round64(4 * self.N)
        return xq, corr, scale, inner

    @property
    def scratch_bytes(self) -> int:
        return self._offsets()[3] + self.inner.scratch_bytes

    def emit(self, module, fname, n_args):
        has_scratch = bool(self.inner.scratch_bytes)
        inner = self.inner.emit(module, fname + "_packed", 5 + self.bias + has_scratch)
        fb = FnBuilder(module, fname, [I8P] * n_args)
        b = fb.b
        out, x, pk, corr, colsum, ws = fb.args[:6]
        bias = [fb.args[6]] if self.bias else []
        scratch = fb.args[-1]
        o_xq, o_corr, o_scale, o_inner = self._offsets()
        xq, corr2, scale = (b.gep(scratch, [i64(o)]) for o in (o_xq, o_corr, o_scale))
        s, z = dynamic_params(fb, x, self.M * self.K)
        quantize_u8(fb, x, xq, self.M * self.K, s, z)
        zi = b.fptosi(z, I32)
        with fb.loop(0, self.n_corr) as n:
            fb.store(fb.load(corr, n, I32), corr2, n, I32)
        with fb.loop(0, self.N) as n:
            fix = b.mul(zi, fb.load(colsum, n, I32))
            fb.store(b.sub(fb.load(corr2, n, I32), fix), corr2, n, I32)
            fb.store(b.fmul(s, fb.load(ws, n, F32)), scale, n, F32)    # x_scale * w_scale
        args = [out, xq, pk, corr2, scale] + bias + \
            ([b.gep(scratch, [i64(o_inner)])] if has_scratch else [])
        b.call(inner, [b.bitcast(a, t.type) for a, t in zip(args, inner.args)])
        return fb.finish()
