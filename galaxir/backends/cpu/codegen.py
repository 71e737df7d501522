"""LLVM IR generation helpers for the cpu backend's kernels.

Every kernel is an LLVM function ``void name(ptr %0, ptr %1, ...)`` whose arguments are the
buffers it reads and writes; shapes are static (the executable specializes on concrete
input shapes), so loop bounds and strides are constants LLVM can unroll and vectorize.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import llvmlite.ir as ir

VOID = ir.VoidType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
F64 = ir.DoubleType()
F32P = F32.as_pointer()
I8P = I8.as_pointer()

INT_OF_SIZE = {1: I8, 2: ir.IntType(16), 4: I32, 8: I64}


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


def f32(v: float) -> ir.Constant:
    return ir.Constant(F32, float(v))


class FnBuilder:
    """Builds one function: pointer arguments (marked noalias where told), and loop helpers
    that keep counters in allocas (SROA turns them into phis)."""

    def __init__(self, module: ir.Module, name: str, arg_types: Sequence[ir.Type],
                 noalias: bool = True, linkage: str = "internal", ret: ir.Type = VOID):
        self.module = module
        self.ret = ret
        self.fn = ir.Function(module, ir.FunctionType(ret, list(arg_types)), name)
        self.fn.linkage = linkage
        self.fn.attributes.add("nounwind")
        for a in self.fn.args:
            if isinstance(a.type, ir.PointerType) and noalias:
                a.add_attribute("noalias")
        self.entry = self.fn.append_basic_block("entry")
        self.body = self.fn.append_basic_block("body")
        self.b = ir.IRBuilder(self.body)
        self._n = 0

    @property
    def args(self):
        return self.fn.args

    def alloca(self, ty: ir.Type, init=None):
        with self.b.goto_block(self.entry):
            slot = self.b.alloca(ty)
        if init is not None:
            with self.b.goto_block(self.entry):
                self.b.store(init, slot)
        return slot

    def block(self, hint: str) -> ir.Block:
        self._n += 1
        return self.fn.append_basic_block(f"{hint}{self._n}")

    @contextmanager
    def loop(self, start, stop, step=1):
        """``for i in range(start, stop, step)`` (signed i64, step > 0)."""
        b = self.b
        start = i64(start) if isinstance(start, int) else start
        stop = i64(stop) if isinstance(stop, int) else stop
        var = self.alloca(I64)
        b.store(start, var)
        head, body, end = self.block("head"), self.block("loop"), self.block("end")
        b.branch(head)
        b.position_at_end(head)
        i = b.load(var)
        b.cbranch(b.icmp_signed("<", i, stop), body, end)
        b.position_at_end(body)
        yield i
        b.store(b.add(i, i64(step)), var)
        b.branch(head)
        b.position_at_end(end)

    def loop_nest(self, dims: Sequence[int], body) -> None:
        """``body(idx)`` inside one loop per dim, outermost first (idx: the loop variables;
        empty for no dims)."""
        idx: list = []

        def level(depth):
            if depth == len(dims):
                body(idx)
                return
            with self.loop(0, dims[depth]) as i:
                idx.append(i)
                level(depth + 1)
                idx.pop()
        level(0)

    @contextmanager
    def if_(self, cond):
        b = self.b
        then, end = self.block("then"), self.block("endif")
        b.cbranch(cond, then, end)
        b.position_at_end(then)
        yield
        b.branch(end)
        b.position_at_end(end)

    def finish(self) -> ir.Function:
        with self.b.goto_block(self.entry):
            self.b.branch(self.body)
        if self.ret == VOID:
            self.b.ret_void()
        else:
            self.b.ret(ir.Constant(self.ret, 0))
        return self.fn

    def fail_if(self, cond, code: int = 1) -> None:
        """Return ``code`` at once when ``cond`` holds (functions made with ``ret=I64``: the
        way a kernel refuses input that would make it read out of bounds)."""
        bad, ok = self.block("fail"), self.block("ok")
        self.b.cbranch(cond, bad, ok)
        self.b.position_at_end(bad)
        self.b.ret(ir.Constant(self.ret, code))
        self.b.position_at_end(ok)

    # -- memory -----------------------------------------------------------------------------
    def ptr(self, base, index, ty=F32):
        """Address of element ``index`` of a buffer of ``ty``."""
        base = self.b.bitcast(base, ty.as_pointer()) if base.type != ty.as_pointer() else base
        index = i64(index) if isinstance(index, int) else index
        return self.b.gep(base, [index], inbounds=True)

    def load(self, base, index, ty=F32):
        return self.b.load(self.ptr(base, index, ty), align=_align(ty))

    def store(self, value, base, index, ty=F32):
        self.b.store(value, self.ptr(base, index, ty), align=_align(ty))

    def mul_add(self, terms: Sequence[tuple], const: int = 0):
        """sum(idx * stride) + const, skipping zero strides (idx are i64 values)."""
        acc = i64(const)
        for idx, stride in terms:
            if stride == 0:
                continue
            t = idx if stride == 1 else self.b.mul(idx, i64(stride))
            acc = t if (isinstance(acc, ir.Constant) and acc.constant == 0) else self.b.add(acc, t)
        return acc

    def intrinsic(self, name: str, ret: ir.Type, args: Sequence):
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, [a.type for a in args]), name)
        return self.b.call(fn, list(args))


def _align(ty: ir.Type) -> int:
    if isinstance(ty, ir.FloatType):
        return 4
    if isinstance(ty, ir.DoubleType):
        return 8
    if isinstance(ty, ir.IntType):
        return max(1, ty.width // 8)
    return 1


def declare_extern(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name)
    return fn


def memcpy(fb: FnBuilder, dst, src, nbytes) -> None:
    b = fb.b
    nbytes = i64(nbytes) if isinstance(nbytes, int) else nbytes
    fn = fb.module.globals.get("llvm.memcpy.p0.p0.i64")
    if fn is None:
        fn = fb.module.declare_intrinsic("llvm.memcpy", [I8P, I8P, I64])
    b.call(fn, [b.bitcast(dst, I8P), b.bitcast(src, I8P), nbytes, ir.Constant(I1, 0)])


def memset(fb: FnBuilder, dst, byte: int, nbytes) -> None:
    """Set ``nbytes`` (an int or an i64 value) bytes at ``dst`` to ``byte``."""
    b = fb.b
    nbytes = i64(nbytes) if isinstance(nbytes, int) else nbytes
    fn = fb.module.globals.get("llvm.memset.p0.i64")
    if fn is None:
        fn = fb.module.declare_intrinsic("llvm.memset", [I8P, I64])
    b.call(fn, [b.bitcast(dst, I8P), ir.Constant(I8, byte), nbytes, ir.Constant(I1, 0)])


def memset0(fb: FnBuilder, dst, nbytes) -> None:
    memset(fb, dst, 0, nbytes)


def sgemm_fn(module: ir.Module) -> ir.Function:
    """The Fortran sgemm reached through the ``gx_sgemm`` symbol."""
    ip = I32.as_pointer()
    fnty = ir.FunctionType(VOID, [I8P, I8P, ip, ip, ip, F32P, F32P, ip, F32P, ip, F32P, F32P, ip])
    return declare_extern(module, "gx_sgemm", fnty)


class Sgemm:
    """Calls row-major ``C[M,N] = alpha * op(A) @ op(B) + beta * C`` through column-major
    Fortran sgemm (computing C^T = op(B)^T op(A)^T)."""

    def __init__(self, fb: FnBuilder):
        self.fb = fb
        self.fn = sgemm_fn(fb.module)
        self.slots = {}

    def _slot(self, key, ty, value):
        fb = self.fb
        if key not in self.slots:
            self.slots[key] = fb.alloca(ty)
        fb.b.store(value, self.slots[key])
        return self.slots[key]

    def call(self, M: int, N: int, K: int, a, lda: int, trans_a: bool, b_, ldb: int,
             trans_b: bool, c, ldc: int, alpha: float = 1.0, beta: float = 0.0) -> None:
        fb, b = self.fb, self.fb.b
        ta = self._slot("ta", I8, ir.Constant(I8, ord("T" if trans_b else "N")))
        tb = self._slot("tb", I8, ir.Constant(I8, ord("T" if trans_a else "N")))
        m = self._slot("m", I32, ir.Constant(I32, N))
        n = self._slot("n", I32, ir.Constant(I32, M))
        k = self._slot("k", I32, ir.Constant(I32, K))
        al = self._slot("alpha", F32, f32(alpha))
        be = self._slot("beta", F32, f32(beta))
        la = self._slot("lda", I32, ir.Constant(I32, max(1, ldb)))
        lb = self._slot("ldb", I32, ir.Constant(I32, max(1, lda)))
        lc = self._slot("ldc", I32, ir.Constant(I32, max(1, ldc)))
        b.call(self.fn, [ta, tb, m, n, k, al, b.bitcast(b_, F32P), la, b.bitcast(a, F32P), lb, be,
                         b.bitcast(c, F32P), lc])
