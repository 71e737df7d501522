"""Native global average pooling of 8-bit NCHW planes (int8_global_average_pool): the
exact integer sum of each plane (a vectorized loop), minus ``n * zx``, requantized as the
int8 GEMM's store does (``clamp(rint(acc * factor) + zy)`` in float64), so the result is
bit-equal to the numpy reference.  Planes are split over the pool when there are many."""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from .codegen import F64, I8, I32, i64
from .kernels import Kernel
from .kernels_int8 import TASKS, _clamp_f, _smin

CHUNK = 1 << 15   # input bytes per task, at least


@dataclass
class QGlobalAvgPool(Kernel):
    """Buffers: out (8-bit [planes]), x (8-bit [planes][n])."""

    planes: int
    n: int
    x_signed: bool
    zx: int
    factor: float
    zy: int
    lo: int
    hi: int
    name: str = "qgap"

    def key(self):
        return ("qgap",) + tuple(getattr(self, f) for f in self.__dataclass_fields__)

    @property
    def per_task(self) -> int:
        want = max(1, min(TASKS, self.planes * self.n // CHUNK))
        return -(-self.planes // want)

    def n_tasks(self) -> int:
        return -(-self.planes // self.per_task)

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        return parallel_kernel(module, fname, n_args, self.n_tasks(), self._task)

    def _task(self, fb, args, t):
        b = fb.b
        out, x = args[0], args[1]
        p_lo = b.mul(t, i64(self.per_task))
        p_hi = _smin(b, b.add(p_lo, i64(self.per_task)), i64(self.planes))
        acc = fb.alloca(I32)
        with fb.loop(p_lo, p_hi) as p:
            b.store(ir.Constant(I32, -self.n * self.zx), acc)
            base = b.mul(p, i64(self.n))
            with fb.loop(0, self.n) as k:
                v = fb.load(x, b.add(base, k), I8)
                v = b.sext(v, I32) if self.x_signed else b.zext(v, I32)
                b.store(b.add(b.load(acc), v), acc)
            d = b.fmul(b.sitofp(b.load(acc), F64), ir.Constant(F64, self.factor))
            d = fb.intrinsic("llvm.rint.f64", F64, [d])
            d = b.fadd(d, ir.Constant(F64, float(self.zy)))
            d = _clamp_f(b, d, float(self.lo), float(self.hi))
            fb.store(b.trunc(b.fptosi(d, I32), I8), out, p, I8)
