"""LLVM IR generation helpers for the cpu backend's kernels.

Every kernel is an LLVM function ``void name(ptr %0, ptr %1, ...)`` whose arguments are the
buffers it reads and writes.  For a module with static input shapes, shapes are constants
LLVM can unroll and vectorize.  For a module with symbolic input dims the LLVM module is
emitted in *dynamic* mode (``begin_dynamic``): every shape-dependent integer a kernel asks
for through ``FnBuilder.dim`` (and every ``library.param_block``) is read at run time from
per-specialization data, so every set of input shapes with the same kernel structure emits
the same LLVM IR and shares one compile (docs/performance.md, "Dynamic shapes").  Those
integers may be ``shapetrace.Traced`` numbers: then the first shape of a structure records
how each is computed, and later shapes get theirs without emitting IR (dynreuse.py); the
emitters treat ``INT`` (int or traced) as a Python-side integer.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Sequence

import llvmlite.ir as ir

from .shapetrace import Traced, concrete

#: what the emitters treat as a Python-side integer (a shape value) rather than an IR value:
#: ``int``, or a number being traced (shapetrace.py)
INT = (int, Traced)

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
        self._dyn_base = None
        self.fn.gx_builder = self  # for dim_of (a cycle the collector frees)

    def dim(self, v) -> ir.Value:
        """A shape-dependent integer: the constant ``v`` in a static module; in a dynamic
        module (``begin_dynamic``) a load, in the entry block, of its slot in the
        specialization's run-time integer array (values computed in Python from the shapes
        are fine: the IR records only the slot)."""
        if not isinstance(v, INT) and not hasattr(v, "__index__"):
            return v  # already an IR value
        vals = dynamic_values(self.module)
        if vals is None:
            return i64(v)
        k = len(vals)
        vals.append(v if isinstance(v, Traced) else int(v))
        b = self.b
        with b.goto_block(self.entry):
            if self._dyn_base is None:
                self._dyn_base = b.load(dyn_pointer(self.module))
            return b.load(b.gep(self._dyn_base, [i64(k)], inbounds=True))

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
        start = self.dim(start) if isinstance(start, INT) else start
        stop = self.dim(stop) if isinstance(stop, INT) else stop
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
        index = self.dim(index) if isinstance(index, INT) else index
        return self.b.gep(base, [index], inbounds=True)

    def load(self, base, index, ty=F32):
        return self.b.load(self.ptr(base, index, ty), align=_align(ty))

    def store(self, value, base, index, ty=F32):
        self.b.store(value, self.ptr(base, index, ty), align=_align(ty))

    def mul_add(self, terms: Sequence[tuple], const: int = 0):
        """sum(idx * stride) + const, skipping zero strides (idx are i64 values); in a
        dynamic module every stride and the constant are run-time values (which are 0 or
        1 depends on the shapes)."""
        if dynamic_values(self.module) is not None:
            acc = self.dim(const)
            for idx, stride in terms:
                acc = self.b.add(acc, self.b.mul(idx, self.dim(stride)))
            return acc
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


# -- dynamic mode: shape-dependent integers read at run time -------------------------------
#: the global the loader points at a specialization's int64 array of shape values
DYN_POINTER = "gx_dynp"


def begin_dynamic(module: ir.Module) -> None:
    """Emit ``module`` in dynamic mode: ``FnBuilder.dim`` and ``library.param_block``
    record their values (``dynamic_values`` / ``dynamic_blocks``) instead of baking them in."""
    module.__dict__["_gx_dyn"] = []
    module.__dict__["_gx_dyn_blocks"] = {}


_emitting = threading.local()


@contextmanager
def dynamic_emission(on: bool = True):
    """While it is active, shape-dependent *Python* decisions of the kernels take the
    structure-stable choice (``collapse`` keeps every dim, ...), so the emitted code has
    the same structure for every set of shapes (the values are run-time data)."""
    prev = getattr(_emitting, "on", False)
    _emitting.on = on
    try:
        yield
    finally:
        _emitting.on = prev


def is_dynamic_emission() -> bool:
    return getattr(_emitting, "on", False)


def dynamic_values(module: ir.Module) -> list | None:
    """The run-time integer array of a dynamic module (None: static module)."""
    return module.__dict__.get("_gx_dyn")


def dynamic_blocks(module: ir.Module) -> dict:
    """name -> values of the mutable parameter blocks of a dynamic module."""
    return module.__dict__.get("_gx_dyn_blocks", {})


def dyn_pointer(module: ir.Module) -> ir.GlobalVariable:
    """The module's ``gx_dynp`` (i64*): external, so LLVM never folds its contents."""
    g = module.globals.get(DYN_POINTER)
    if g is None:
        g = ir.GlobalVariable(module, I64.as_pointer(), DYN_POINTER)
        g.initializer = ir.Constant(I64.as_pointer(), None)
    return g


def dim_of(builder: ir.IRBuilder, v) -> ir.Value:
    """``FnBuilder.dim`` of the function ``builder`` is in (for helpers given a builder)."""
    if not isinstance(v, INT):
        return v
    fb = getattr(builder.function, "gx_builder", None)
    return fb.dim(v) if fb is not None else i64(v)


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
    nbytes = fb.dim(nbytes) if isinstance(nbytes, INT) else nbytes
    fn = fb.module.globals.get("llvm.memcpy.p0.p0.i64")
    if fn is None:
        fn = fb.module.declare_intrinsic("llvm.memcpy", [I8P, I8P, I64])
    b.call(fn, [b.bitcast(dst, I8P), b.bitcast(src, I8P), nbytes, ir.Constant(I1, 0)])


def memset(fb: FnBuilder, dst, byte: int, nbytes) -> None:
    """Set ``nbytes`` (an int or an i64 value) bytes at ``dst`` to ``byte``."""
    b = fb.b
    nbytes = fb.dim(nbytes) if isinstance(nbytes, INT) else nbytes
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

    def _i32(self, v):
        """An i32 argument: a constant, or (dynamic module) the run-time value."""
        if not isinstance(v, INT):
            return self.fb.b.trunc(v, I32)  # an i64 computed at run time
        if dynamic_values(self.fb.module) is None:
            return ir.Constant(I32, v)
        return self.fb.b.trunc(self.fb.dim(v), I32)

    def call(self, M: int, N: int, K: int, a, lda: int, trans_a: bool, b_, ldb: int,
             trans_b: bool, c, ldc: int, alpha: float = 1.0, beta: float = 0.0) -> None:
        fb, b = self.fb, self.fb.b
        ta = self._slot("ta", I8, ir.Constant(I8, ord("T" if trans_b else "N")))
        tb = self._slot("tb", I8, ir.Constant(I8, ord("T" if trans_a else "N")))
        m = self._slot("m", I32, self._i32(N))
        n = self._slot("n", I32, self._i32(M))
        k = self._slot("k", I32, self._i32(K))
        al = self._slot("alpha", F32, f32(alpha))
        be = self._slot("beta", F32, f32(beta))
        la = self._slot("lda", I32, self._i32(max(1, ldb)))
        lb = self._slot("ldb", I32, self._i32(max(1, lda)))
        lc = self._slot("ldc", I32, self._i32(max(1, ldc)))
        b.call(self.fn, [ta, tb, m, n, k, al, b.bitcast(b_, F32P), la, b.bitcast(a, F32P), lb, be,
                         b.bitcast(c, F32P), lc])
