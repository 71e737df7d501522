"""Native kernels for the non-float32 ops dynamic transformer graphs run (lowering rules in
lower_typed.py): comparisons and logic, ``where``, ``cast``, integer arithmetic, ``sign``,
``round``, ``elu``, ``pow`` by a constant 2 / 3 / 0.5, ``range``, ``shape`` / ``size``,
``gather_elements`` and ``argmax`` / ``argmin``.

The float32 elementwise loops (kernels.Elementwise) compute in float only; the mask and
position subgraphs of torch exports compute in int64 and bool, so here every element has
its own dtype: operands are loaded as their dtype, the op is applied with that dtype's
semantics (the numpy reference's, galaxir/backends/numpy/kernels/elementwise.py: integer
division truncates and gives 0 for a zero divisor, the remainder takes the divisor's sign,
float -> integer casts give the x86 "integer indefinite" for NaN and out-of-range values
as numpy does), and stored as the result's dtype.  Shapes are static and broadcasting
strides are constants, so LLVM unrolls and vectorizes the innermost loop for the host.
Arguments are byte pointers: outputs first, then inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import llvmlite.ir as ir

from . import vmath
from .codegen import F32, F64, I8, I64, FnBuilder, i64
from .kernels import Kernel, broadcast_strides, collapse, contiguous_strides, prod

I8P = I8.as_pointer()

#: dtype name -> (LLVM type, kind): kind "b" bool (stored as a 0/1 byte), "i" signed,
#: "u" unsigned, "f" float
LLVM_DTYPES = {
    "bool": (I8, "b"), "int8": (I8, "i"), "uint8": (I8, "u"),
    "int16": (ir.IntType(16), "i"), "uint16": (ir.IntType(16), "u"),
    "int32": (ir.IntType(32), "i"), "uint32": (ir.IntType(32), "u"),
    "int64": (I64, "i"), "uint64": (I64, "u"),
    "float32": (F32, "f"), "float64": (F64, "f"),
}
COMPARE = {"equal": "==", "less": "<", "less_or_equal": "<=", "greater": ">",
           "greater_or_equal": ">="}
LOGIC = {"and", "or", "xor"}
ARITH = {"add", "sub", "mul", "div", "mod", "min", "max"}
UNARY = {"neg", "abs", "sign", "round", "not", "elu", "pow2", "pow3", "sqrt"}
#: every op TypedElementwise evaluates (with "where" and "cast")
OPS = set(COMPARE) | LOGIC | ARITH | UNARY | {"where", "cast"}


def _ty(dtype: str) -> ir.Type:
    return LLVM_DTYPES[dtype][0]


def _kind(dtype: str) -> str:
    return LLVM_DTYPES[dtype][1]


def _bits(dtype: str) -> int:
    t = _ty(dtype)
    return t.width if isinstance(t, ir.IntType) else (32 if t == F32 else 64)


def _iconst(dtype: str, v: int) -> ir.Constant:
    return ir.Constant(_ty(dtype), v)


def emit_cast(b: ir.IRBuilder, x, src: str, dst: str):
    """``x`` (of dtype ``src``) converted to ``dst`` as numpy's ``astype`` does on x86."""
    sk, dk = _kind(src), _kind(dst)
    st, dt = _ty(src), _ty(dst)
    if src == dst:
        return x
    if dk == "b":
        if sk == "f":
            return b.zext(b.fcmp_unordered("!=", x, ir.Constant(st, 0.0)), I8)
        return b.zext(b.icmp_unsigned("!=", x, ir.Constant(st, 0)), I8)
    if sk == "f" and dk == "f":
        return b.fpext(x, dt) if dt == F64 else b.fptrunc(x, dt)
    if sk != "f" and dk == "f":
        return b.sitofp(x, dt) if sk == "i" else b.uitofp(x, dt)
    if sk != "f":   # integer (or bool) -> integer
        if dt.width == st.width:
            return x
        if dt.width < st.width:
            return b.trunc(x, dt)
        return b.sext(x, dt) if sk == "i" else b.zext(x, dt)
    # float -> integer as numpy does it on x86-64 (ONNX leaves out-of-range values
    # undefined): truncation toward zero in a signed 32- or 64-bit register, NaN and
    # out-of-range giving the "integer indefinite" INT_MIN, then narrowed; unsigned 32/64
    # bit targets take values at or above 2^31 / 2^63 through the wider (or shifted) path
    def cvtt(v, wide):
        wt = ir.IntType(wide)
        lo, hi = ir.Constant(st, -float(2 ** (wide - 1))), ir.Constant(st, float(2 ** (wide - 1)))
        ok = b.and_(b.fcmp_ordered(">=", v, lo), b.fcmp_ordered("<", v, hi))
        safe = b.select(ok, v, ir.Constant(st, 0.0))
        return b.select(ok, b.fptosi(safe, wt), ir.Constant(wt, -(2 ** (wide - 1))))

    if dst == "uint32":
        big = b.fcmp_ordered(">=", x, ir.Constant(st, float(2 ** 31)))
        return b.select(big, b.trunc(cvtt(x, 64), dt), cvtt(x, 32))
    if dst == "uint64":
        big = b.fcmp_ordered(">=", x, ir.Constant(st, float(2 ** 63)))
        shifted = b.xor(cvtt(b.fsub(x, ir.Constant(st, float(2 ** 63))), 64),
                        ir.Constant(I64, -(2 ** 63)))
        return b.select(big, shifted, cvtt(x, 64))
    v = cvtt(x, 64 if dst == "int64" else 32)
    return b.trunc(v, dt) if dt.width < v.type.width else v


def emit_op(fb: FnBuilder, op: str, args: list, dtypes: list, out: str, attrs: dict):
    """One element of ``op`` over ``args`` (of ``dtypes``), as a value of dtype ``out``."""
    b = fb.b
    dt = dtypes[0] if dtypes else out
    k = _kind(dt)
    if op == "cast":
        return emit_cast(b, args[0], dt, out)
    if op == "where":
        return b.select(b.icmp_unsigned("!=", args[0], ir.Constant(I8, 0)), args[1], args[2])
    if op in COMPARE:
        x, y = args
        if k == "f":
            c = b.fcmp_ordered(COMPARE[op], x, y)
        elif k == "i":
            c = b.icmp_signed(COMPARE[op], x, y)
        else:
            c = b.icmp_unsigned(COMPARE[op], x, y)
        return b.zext(c, I8)
    if op in LOGIC:
        fn = {"and": b.and_, "or": b.or_, "xor": b.xor}[op]
        return fn(args[0], args[1])
    if op == "not":
        return b.xor(args[0], ir.Constant(I8, 1))
    if k == "f":
        return _float_op(fb, op, args, dt, attrs)
    return _int_op(b, op, args, dt, bool(attrs.get("fmod")))


def _float_op(fb, op, args, dt, attrs):
    b = fb.b
    x = args[0]
    c = lambda v: ir.Constant(_ty(dt), v)  # noqa: E731
    if op == "add":
        return b.fadd(x, args[1])
    if op == "sub":
        return b.fsub(x, args[1])
    if op == "mul":
        return b.fmul(x, args[1])
    if op == "div":
        return b.fdiv(x, args[1])
    if op == "mod":   # fmod=1 only (lowering checks): C fmod
        return b.frem(x, args[1])
    if op in ("min", "max"):   # NaN propagates, as numpy's minimum/maximum
        y = args[1]
        pick = b.fcmp_unordered("<" if op == "min" else ">", x, y)
        v = b.select(pick, x, y)
        return b.select(b.fcmp_unordered("uno", y, y), y, v)
    if op == "neg":
        return b.fneg(x)
    if op == "abs":
        return vmath.intrinsic(fb, "fabs", x)
    if op == "sqrt":
        return vmath.intrinsic(fb, "sqrt", x)
    if op == "round":   # half to even, as np.round (the default rounding mode)
        return vmath.intrinsic(fb, "rint", x)
    if op == "sign":
        pos = b.select(b.fcmp_ordered(">", x, c(0.0)), c(1.0), c(0.0))
        v = b.select(b.fcmp_ordered("<", x, c(0.0)), c(-1.0), pos)
        return b.select(b.fcmp_unordered("uno", x, x), x, v)
    if op == "elu":
        alpha = c(float(attrs.get("alpha", 1.0)))
        e = b.fmul(alpha, b.fsub(vmath.exp(fb, x) if dt == "float32" else _exp64(fb, x), c(1.0)))
        return b.select(b.fcmp_ordered("<", x, c(0.0)), e, x)
    if op == "pow2":
        return b.fmul(x, x)
    if op == "pow3":
        return b.fmul(b.fmul(x, x), x)
    raise NotImplementedError(op)


def _exp64(fb, x):
    return vmath.intrinsic(fb, "exp", x)


def _int_op(b, op, args, dt, fmod=False):
    k = _kind(dt)
    x = args[0]
    zero, one = _iconst(dt, 0), _iconst(dt, 1)
    if op == "add":
        return b.add(x, args[1])
    if op == "sub":
        return b.sub(x, args[1])
    if op == "mul":
        return b.mul(x, args[1])
    if op in ("min", "max"):
        y = args[1]
        cmp = (b.icmp_signed if k == "i" else b.icmp_unsigned)("<" if op == "min" else ">", x, y)
        return b.select(cmp, x, y)
    if op == "neg":
        return b.sub(zero, x)
    if op == "abs":
        return b.select(b.icmp_signed("<", x, zero), b.sub(zero, x), x) if k == "i" else x
    if op == "sign":
        if k == "u":
            return b.zext(b.icmp_unsigned("!=", x, zero), x.type)
        pos = b.zext(b.icmp_signed(">", x, zero), x.type)
        return b.sub(pos, b.zext(b.icmp_signed("<", x, zero), x.type))
    if op == "round":
        return x
    if op in ("div", "mod"):
        y = args[1]
        y0 = b.icmp_unsigned("==", y, zero)
        if k == "u":
            safe = b.select(y0, one, y)
            q = b.udiv(x, safe) if op == "div" else b.urem(x, safe)
            return b.select(y0, zero, q)
        m1 = b.icmp_signed("==", y, _iconst(dt, -1))     # INT_MIN / -1 is UB in LLVM
        safe = b.select(b.or_(y0, m1), one, y)
        if op == "div":
            q = b.select(m1, b.sub(zero, x), b.sdiv(x, safe))
            return b.select(y0, zero, q)
        r = b.srem(x, safe)
        r = b.select(b.or_(y0, m1), zero, r)
        if fmod:    # C remainder: the dividend's sign
            return r
        fix = b.and_(b.icmp_signed("!=", r, zero),
                     b.icmp_signed("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", y, zero)))
        return b.select(fix, b.add(r, y), r)
    raise NotImplementedError(op)


@dataclass
class TypedElementwise(Kernel):
    """``out = op(inputs...)`` with numpy broadcasting, each operand in its own dtype."""

    op: str
    out_shape: tuple
    in_shapes: tuple
    in_dtypes: tuple
    out_dtype: str
    attrs: tuple = ()
    name: str = "typed_elementwise"

    def key(self):
        return ("tew", self.op, self.out_shape, self.in_shapes, self.in_dtypes, self.out_dtype,
                self.attrs)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args)
        b = fb.b
        strides = [contiguous_strides(self.out_shape)] + [
            broadcast_strides(s, self.out_shape) for s in self.in_shapes]
        shape, per = collapse(self.out_shape, strides)
        out = b.bitcast(fb.args[0], _ty(self.out_dtype).as_pointer())
        ins = [b.bitcast(a, _ty(d).as_pointer()) for a, d in zip(fb.args[1:], self.in_dtypes)]
        attrs = dict(self.attrs)

        def body(idx):
            vals = []
            for k, (p, d) in enumerate(zip(ins, self.in_dtypes)):
                off = fb.mul_add(list(zip(idx, per[1 + k])))
                vals.append(b.load(b.gep(p, [off], inbounds=True)))
            v = emit_op(fb, self.op, vals, list(self.in_dtypes), self.out_dtype, attrs)
            off = fb.mul_add(list(zip(idx, per[0])))
            b.store(v, b.gep(out, [off], inbounds=True))

        if prod(self.out_shape) > 0:
            fb.loop_nest(list(shape), body)
        return fb.finish()


@dataclass
class Range(Kernel):
    """``out[i] = start + i * delta`` for the length ``n`` lowering inferred (start, limit and
    delta are read at run time; integers exactly, floats accumulated in their own dtype as
    ONNX does).  It first recomputes the length from the run-time scalars and fails, writing
    nothing, when it is not ``n`` (or delta is 0): a wrong static length cannot overrun."""

    n: int
    dtype: str
    name: str = "range"
    fallible = True

    def key(self):
        return ("range", self.n, self.dtype)

    def failure(self) -> str:
        return f"range: start/limit/delta do not give the {self.n} elements planned (or delta is 0)"

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args, ret=I64)
        b = fb.b
        ty, k = _ty(self.dtype), _kind(self.dtype)
        out, start, limit, delta = (b.bitcast(fb.args[j], ty.as_pointer()) for j in range(4))
        s, lim, d = b.load(start), b.load(limit), b.load(delta)
        if k == "f":
            # n = max(ceil((limit - start) / delta), 0), computed in double as the reference
            sd, ld, dd = (b.fpext(v, F64) if ty == F32 else v for v in (s, lim, d))
            fb.fail_if(b.fcmp_unordered("==", dd, ir.Constant(F64, 0.0)))
            q = vmath.intrinsic(fb, "ceil", b.fdiv(b.fsub(ld, sd), dd))
            q = b.select(b.fcmp_ordered("<", q, ir.Constant(F64, 0.0)), ir.Constant(F64, 0.0), q)
            fb.fail_if(b.fcmp_unordered("!=", q, ir.Constant(F64, float(self.n))))
        else:
            ext = (b.sext if k == "i" else b.zext) if ty.width < 64 else (lambda v, t: v)
            s64, l64, d64 = (ext(v, I64) for v in (s, lim, d))
            fb.fail_if(b.icmp_signed("==", d64, i64(0)))
            # ceil((l - s) / d) = -((s - l) // d) with floor division; n = max(that, 0)
            num = b.sub(s64, l64)
            q = b.sdiv(num, d64)
            r = b.srem(num, d64)
            adj = b.and_(b.icmp_signed("!=", r, i64(0)),
                         b.icmp_signed("!=", b.icmp_signed("<", r, i64(0)),
                                       b.icmp_signed("<", d64, i64(0))))
            fl = b.sub(q, b.zext(adj, I64))
            n = b.sub(i64(0), fl)
            n = b.select(b.icmp_signed("<", n, i64(0)), i64(0), n)
            fb.fail_if(b.icmp_signed("!=", n, fb.dim(self.n)))
        with fb.loop(0, self.n) as i:
            if k == "f":
                v = b.fadd(s, b.fmul(b.sitofp(i, ty), d))
            else:
                ii = b.trunc(i, ty) if ty.width < 64 else i
                v = b.add(s, b.mul(ii, d))
            b.store(v, b.gep(out, [i], inbounds=True))
        return fb.finish()


@dataclass
class ConstFill(Kernel):
    """Writes a fixed int64 vector (``shape`` / ``size`` of a tensor whose shape lowering
    knows: the values are the specialized shape, no input is read)."""

    values: tuple
    name: str = "shape"

    def key(self):
        return ("constfill", self.values)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args)
        b = fb.b
        out = b.bitcast(fb.args[0], I64.as_pointer())
        for j, v in enumerate(self.values):
            b.store(fb.dim(v), b.gep(out, [i64(j)], inbounds=True))
        return fb.finish()


@dataclass
class GatherElements(Kernel):
    """``out[..i..] = x[.. idx[..i..] ..]`` along ``axis`` (np.take_along_axis); every index
    is checked first (negative ones count from the end): a bad one fails the call."""

    out_shape: tuple
    x_shape: tuple
    axis: int
    itemsize: int
    index_bytes: int
    name: str = "gather_elements"
    fallible = True

    def key(self):
        return ("gather_elements", self.out_shape, self.x_shape, self.axis, self.itemsize,
                self.index_bytes)

    def failure(self) -> str:
        d = self.x_shape[self.axis]
        return f"gather_elements: an index is out of range [{-d}, {d - 1}]"

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args, ret=I64)
        b = fb.b
        ety = ir.IntType(8 * self.itemsize)
        ity = ir.IntType(8 * self.index_bytes)
        out = b.bitcast(fb.args[0], ety.as_pointer())
        x = b.bitcast(fb.args[1], ety.as_pointer())
        idx = b.bitcast(fb.args[2], ity.as_pointer())
        d = self.x_shape[self.axis]
        total = prod(self.out_shape)
        with fb.loop(0, total) as j:
            k = b.load(b.gep(idx, [j], inbounds=True))
            k = b.sext(k, I64) if self.index_bytes < 8 else k
            k = b.select(b.icmp_signed("<", k, i64(0)), b.add(k, i64(d)), k)
            fb.fail_if(b.icmp_unsigned(">=", k, i64(d)))
        ost = contiguous_strides(self.out_shape)
        xst = contiguous_strides(self.x_shape)

        def body(ii):
            o = fb.mul_add(list(zip(ii, ost)))
            k = b.load(b.gep(idx, [o], inbounds=True))
            k = b.sext(k, I64) if self.index_bytes < 8 else k
            k = b.select(b.icmp_signed("<", k, i64(0)), b.add(k, i64(d)), k)
            terms = [(v, s) for a, (v, s) in enumerate(zip(ii, xst)) if a != self.axis]
            src = b.add(fb.mul_add(terms), b.mul(k, i64(xst[self.axis])))
            b.store(b.load(b.gep(x, [src], inbounds=True)), b.gep(out, [o], inbounds=True))

        if total:
            fb.loop_nest(list(self.out_shape), body)
        return fb.finish()


@dataclass
class ArgReduce(Kernel):
    """argmax / argmin of ``x`` [outer, D, inner] along D into int64 [outer, inner]; the
    first index wins ties (the last with ``last``), a NaN wins over numbers as in numpy."""

    outer: int
    D: int
    inner: int
    dtype: str
    largest: bool
    last: bool
    name: str = "argreduce"

    def key(self):
        return ("argreduce", self.outer, self.D, self.inner, self.dtype, self.largest, self.last)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args)
        b = fb.b
        ty, k = _ty(self.dtype), _kind(self.dtype)
        out = b.bitcast(fb.args[0], I64.as_pointer())
        x = b.bitcast(fb.args[1], ty.as_pointer())
        best_v = fb.alloca(ty)
        best_i = fb.alloca(I64)
        op = ">" if self.largest else "<"
        with fb.loop(0, self.outer) as o:
            with fb.loop(0, self.inner) as n:
                base = b.add(b.mul(o, i64(self.D * self.inner)), n)
                first = i64(self.D - 1) if self.last else i64(0)
                b.store(b.load(b.gep(x, [b.add(base, b.mul(first, i64(self.inner)))])), best_v)
                b.store(first, best_i)
                with fb.loop(1, self.D) as step:
                    j = b.sub(i64(self.D - 1), step) if self.last else step
                    v = b.load(b.gep(x, [b.add(base, b.mul(j, i64(self.inner)))], inbounds=True))
                    cur = b.load(best_v)
                    if k == "f":
                        # take v when it beats cur, or is NaN while cur is not
                        better = b.fcmp_ordered(op, v, cur)
                        nan = b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", cur, cur))
                        take = b.or_(better, nan)
                    elif k == "i":
                        take = b.icmp_signed(op, v, cur)
                    else:
                        take = b.icmp_unsigned(op, v, cur)
                    b.store(b.select(take, v, cur), best_v)
                    b.store(b.select(take, j, b.load(best_i)), best_i)
                b.store(b.load(best_i), b.gep(out, [b.add(b.mul(o, i64(self.inner)), n)],
                                                inbounds=True))
        return fb.finish()


@dataclass
class Scan(Kernel):
    """cumsum / cumprod of ``x`` [outer, D, inner] along D, in the element type and in
    order (as numpy's ``accumulate``); ``exclusive`` shifts by one (identity first),
    ``reverse`` scans from the end.  RoBERTa-style position ids are a cumsum of the mask."""

    outer: int
    D: int
    inner: int
    dtype: str
    op: str            # "add" or "mul"
    exclusive: bool
    reverse: bool
    name: str = "scan"

    def key(self):
        return ("scan", self.outer, self.D, self.inner, self.dtype, self.op, self.exclusive,
                self.reverse)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [I8P] * n_args)
        b = fb.b
        ty, k = _ty(self.dtype), _kind(self.dtype)
        out = b.bitcast(fb.args[0], ty.as_pointer())
        x = b.bitcast(fb.args[1], ty.as_pointer())
        one = self.op == "mul"
        ident = ir.Constant(ty, float(one) if k == "f" else int(one))
        if k == "f":
            step_fn = b.fmul if one else b.fadd
        else:
            step_fn = b.mul if one else b.add
        acc = fb.alloca(ty)
        with fb.loop(0, self.outer) as o:
            with fb.loop(0, self.inner) as n:
                base = b.add(b.mul(o, i64(self.D * self.inner)), n)
                b.store(ident, acc)
                with fb.loop(0, self.D) as step:
                    j = b.sub(i64(self.D - 1), step) if self.reverse else step
                    at = b.add(base, b.mul(j, i64(self.inner)))
                    cur = b.load(acc)
                    nxt = step_fn(cur, b.load(b.gep(x, [at], inbounds=True)))
                    b.store(cur if self.exclusive else nxt, b.gep(out, [at], inbounds=True))
                    b.store(nxt, acc)
        return fb.finish()


__all__ = ["ArgReduce", "ConstFill", "Scan", "GatherElements", "LLVM_DTYPES", "OPS", "Range",
           "TypedElementwise", "emit_cast", "emit_op"]
