"""Conversions between the 16-bit floats and float32 for the cpu backend's f16 / bf16
support (lower_f16.py): the kernels compute in float32, the tensors between them stay
16-bit.  float16 uses LLVM's ``half`` (F16C ``vcvtph2ps`` / ``vcvtps2ph`` where the host
has them); bfloat16 is the top half of a float32: widening is a shift, narrowing rounds
to nearest even on the bits (NaN stays a quiet NaN), as ml_dtypes does."""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from .codegen import F32, I8, I32, FnBuilder
from .kernels import Kernel

HALF = ir.HalfType()
I16 = ir.IntType(16)


@dataclass
class HalfCast(Kernel):
    """out[i] = convert(x[i]) for ``n`` elements; ``src`` / ``dst`` in f16, bf16, f32."""

    n: int
    src: str
    dst: str
    name: str = "halfcast"

    def key(self):
        return ("halfcast", self.n, self.src, self.dst)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8.as_pointer()] * n_args)
        out, x = fb.args[0], fb.args[1]
        b = fb.b
        with fb.loop(0, self.n) as i:
            if self.src == "f16":
                v = b.fpext(fb.load(x, i, HALF), F32)
            elif self.src == "bf16":
                v = b.bitcast(b.shl(b.zext(fb.load(x, i, I16), I32), ir.Constant(I32, 16)), F32)
            else:
                v = fb.load(x, i, F32)
            if self.dst == "f16":
                fb.store(b.fptrunc(v, HALF), out, i, HALF)
            elif self.dst == "bf16":
                bits = b.bitcast(v, I32)
                lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
                r = b.lshr(b.add(bits, b.add(lsb, ir.Constant(I32, 0x7FFF))), ir.Constant(I32, 16))
                nan = b.lshr(b.or_(bits, ir.Constant(I32, 0x00400000)), ir.Constant(I32, 16))
                r = b.select(b.fcmp_unordered("uno", v, v), nan, r)
                fb.store(b.trunc(r, I16), out, i, I16)
            else:
                fb.store(v, out, i, F32)
        return fb.finish()
