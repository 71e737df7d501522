"""The native kernels: each is a small object holding static shapes and attributes that
emits one LLVM function taking its buffers as pointer arguments (outputs first, then
inputs, then scratch).  ``key()`` describes the generated code (used to share identical
kernels within a module)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import llvmlite.ir as ir

from . import jit, vmath
from .shapetrace import as_int, select, test, tmax, tmin
from .codegen import (F32, I64, INT, INT_OF_SIZE, FnBuilder, Sgemm, f32, i64, memcpy, memset0)
from .window import Window2d


def prod(xs) -> int:
    p = 1
    for x in xs:
        p *= as_int(x)
    return p


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= as_int(d)
    return st[::-1]


def broadcast_strides(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Element strides of a contiguous ``in_shape`` read as broadcast to ``out_shape``."""
    pad = len(out_shape) - len(in_shape)
    shape = [1] * pad + list(in_shape)
    st = contiguous_strides(shape)
    # a size-1 dim read against a larger one: stride 0 (a value choice, not traced as a
    # decision: shapetrace.select)
    return [select(test(s, "==", 1) * test(o, "!=", 1), 0, t) for s, o, t in zip(shape, out_shape, st)]


def collapse(out_shape: Sequence[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent dims that every operand walks contiguously; drop size-1 dims.  While
    emitting a dynamic module (codegen.dynamic_emission) nothing is merged or dropped:
    which dims could be depends on the shapes, and the code must not."""
    from .codegen import is_dynamic_emission
    if is_dynamic_emission():
        if not out_shape:
            return [1], [[0] for _ in strides]
        return [as_int(d) for d in out_shape], [list(s) for s in strides]
    dims = [(int(d), [s[i] for s in strides]) for i, d in enumerate(out_shape) if d != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    merged = [dims[0]]
    for d, st in dims[1:]:
        pd, pst = merged[-1]
        if all(a == b * d for a, b in zip(pst, st)):
            merged[-1] = (pd * d, st)
        else:
            merged.append((d, st))
    shape = [d for d, _ in merged]
    per_operand = [[st[k] for _, st in merged] for k in range(len(strides))]
    return shape, per_operand


class Kernel:
    """Base: ``n_out`` outputs, then inputs, then ``scratch_bytes`` of scratch (if any)."""

    name = "kernel"
    parallel = False
    scratch_bytes = 0
    #: a fallible kernel's function returns i64: 0, or nonzero when its run-time input
    #: (e.g. gather indices) is invalid; the segment then stops and the executable raises
    #: ExecutionError with ``failure()``
    fallible = False

    def failure(self) -> str:
        return "invalid input"

    def key(self) -> tuple:
        raise NotImplementedError

    def emit(self, module: ir.Module, fname: str, n_args: int) -> ir.Function:
        raise NotImplementedError


def _fb(module, fname, n_args):
    return FnBuilder(module, fname, [F32.as_pointer()] * n_args)


# -- elementwise, fused ---------------------------------------------------------------------
# An expression is ("in", k) | ("const", value) | (op_name, (children...), attrs_tuple)

def _value_type(inputs: list) -> ir.Type:
    for v in inputs:
        if v is not None:
            return v.type
    return F32


def emit_expr(fb: FnBuilder, expr, inputs: list, ty: ir.Type | None = None) -> ir.Value:
    """``expr`` over ``inputs``, all ``float`` or all ``<N x float>`` (the transcendental
    functions are vmath's polynomial code, so the same expression runs on any lane count)."""
    ty = _value_type(inputs) if ty is None else ty
    b = fb.b
    kind = expr[0]
    if kind == "in":
        return inputs[expr[1]]
    if kind == "const":
        return vmath.const(ty, expr[1])
    if kind == "none":
        return None
    if kind == "tanh" and expr[1][0][0] == "softplus":   # Mish's gate, one exp and no log
        return vmath.tanh_softplus(fb, emit_expr(fb, expr[1][0][1][0], inputs, ty))
    args = [emit_expr(fb, e, inputs, ty) for e in expr[1]]
    attrs = dict(expr[2])

    def c(v):
        return vmath.const(ty, v)

    if kind in ("add", "sum"):
        v = args[0]
        for a in args[1:]:
            v = b.fadd(v, a)
        return v
    if kind == "mean":
        v = args[0]
        for a in args[1:]:
            v = b.fadd(v, a)
        return b.fdiv(v, c(len(args))) if len(args) > 1 else v
    if kind == "sub":
        return b.fsub(args[0], args[1])
    if kind == "mul":
        return b.fmul(args[0], args[1])
    if kind == "div":
        return b.fdiv(args[0], args[1])
    if kind == "neg":
        return b.fneg(args[0])
    if kind == "relu":
        x = args[0]
        return b.select(b.fcmp_ordered("<", x, c(0)), c(0), x)
    if kind in ("max", "min"):
        v = args[0]
        for a in args[1:]:
            # NaN propagates (ONNX Max/Min): pick a when it is NaN or wins
            cmp = b.fcmp_unordered(">" if kind == "max" else "<", v, a)
            v = b.select(cmp, v, a)
            v = b.select(b.fcmp_unordered("uno", a, a), a, v)
        return v
    if kind in ("abs", "sqrt", "floor", "ceil"):
        return vmath.intrinsic(fb, "fabs" if kind == "abs" else kind, args[0])
    if kind == "reciprocal":
        return b.fdiv(c(1.0), args[0])
    if kind in ("exp", "log", "sigmoid", "tanh", "erf", "softplus"):
        return getattr(vmath, kind)(fb, args[0])
    if kind == "leaky_relu":
        x = args[0]
        return b.select(b.fcmp_ordered("<", x, c(0)), b.fmul(x, c(attrs.get("alpha", 0.01))), x)
    if kind == "clip":
        x = args[0]
        if len(args) > 1 and args[1] is not None:
            x = b.select(b.fcmp_ordered("<", x, args[1]), args[1], x)
        if len(args) > 2 and args[2] is not None:
            x = b.select(b.fcmp_ordered(">", x, args[2]), args[2], x)
        return x
    if kind == "identity":
        return args[0]
    if kind in ("hard_sigmoid", "hard_swish"):
        x = args[0]
        alpha = attrs.get("alpha", 0.2 if kind == "hard_sigmoid" else 1.0 / 6.0)
        beta = attrs.get("beta", 0.5)
        t = b.fadd(b.fmul(x, c(alpha)), c(beta))   # two roundings, as the reference
        t = b.select(b.fcmp_ordered("<", t, c(0.0)), c(0.0), t)
        t = b.select(b.fcmp_ordered(">", t, c(1.0)), c(1.0), t)
        t = b.select(b.fcmp_unordered("uno", x, x), x, t)
        return t if kind == "hard_sigmoid" else b.fmul(x, t)
    if kind == "swish":
        x = args[0]
        return b.fmul(x, vmath.sigmoid(fb, b.fmul(x, c(attrs.get("alpha", 1.0)))))
    if kind == "mish":
        return b.fmul(args[0], vmath.tanh_softplus(fb, args[0]))
    if kind == "gelu":
        x = args[0]
        e = vmath.erf(fb, b.fmul(x, c(1.0 / math.sqrt(2.0))))
        return b.fmul(b.fmul(x, c(0.5)), b.fadd(c(1.0), e))
    if kind == "gelu_tanh":
        x = args[0]
        inner = b.fmul(c(math.sqrt(2.0 / math.pi)),
                       b.fadd(x, b.fmul(c(0.044715), b.fmul(x, b.fmul(x, x)))))
        th = vmath.tanh(fb, inner)
        return b.fmul(b.fmul(x, c(0.5)), b.fadd(c(1.0), th))
    raise NotImplementedError(kind)


@dataclass
class Elementwise(Kernel):
    """out = expr(inputs...) with numpy broadcasting, one pass over memory."""

    out_shape: tuple
    in_shapes: list
    expr: Any
    name: str = "elementwise"
    #: write the output with non-temporal (streaming) stores: set by the lowering for a
    #: graph output too large to stay in cache (``stream_min_bytes``)
    stream: bool = False

    def key(self):
        return ("ew", self.out_shape, tuple(map(tuple, self.in_shapes)), self.expr, self.stream)

    def emit(self, module, fname, n_args):
        """A wrapper passing the (collapsed) shape and strides to a shape-generic loop nest
        shared by every elementwise kernel of the module with the same expression, rank and
        innermost stride kinds (0: broadcast, 1: contiguous, 2: other)."""
        strides = [contiguous_strides(self.out_shape)] + [
            broadcast_strides(s, self.out_shape) for s in self.in_shapes]
        shape, per = collapse(self.out_shape, strides)
        r = len(shape)
        inner = tuple(0 if p[-1] == 0 else 1 if p[-1] == 1 else 2 for p in per)
        n_in = len(self.in_shapes)
        lanes = ew_lanes()
        # streaming wants whole cache lines written by vector stores: long contiguous rows
        stream = self.stream and inner[0] == 1 and all(kind in (0, 1) for kind in inner[1:]) \
            and int(shape[-1]) >= EW_STREAM_MIN_ROW
        var = ("ew", self.expr, r, inner, n_in, lanes, stream)
        gen = _generic(module, var, lambda m, name: _build_ew_generic(m, name, self.expr, r, inner,
                                                                        n_in, lanes, stream))
        fb = _fb(module, fname, n_args)
        if prod(self.out_shape) > 0:
            params = [as_int(d) for d in shape] + [as_int(x) for st in per for x in st]
            params += list(_ew_split(shape))
            from .library import param_block
            pp = fb.b.bitcast(param_block(module, params, "ew"), I64.as_pointer())
            fb.b.call(gen, [pp] + list(fb.args[:1 + n_in]))
        return fb.finish()


def _generic(module, var, build):
    """The module's shape-generic function for ``var`` (built once, never inlined so the
    wrappers stay small and the loop nest is optimized once)."""
    cache = module.__dict__.setdefault("_gx_generic", {})
    fn = cache.get(var)
    if fn is None:
        name = module.get_unique_name(f"gx_g{len(cache)}_{var[0]}")
        fn = build(module, name)
        fn.attributes.add("noinline")
        cache[var] = fn
    return fn


EW_PARALLEL_MIN = 1 << 15   # elements; below this a parallel split costs more than it saves
#: innermost rows shorter than this are never streamed (each row has a scalar head and
#: tail, and a cache line written partly by non-temporal and partly by cached stores is slow)
EW_STREAM_MIN_ROW = 1024
EW_MAX_TASKS = 8


def _ew_split(shape) -> tuple[int, int]:
    """(tasks, chunk of dim 0 per task) for an elementwise loop nest over ``shape``."""
    total, d0 = prod(shape), as_int(shape[0])
    # one task when small; written as value choices so a traced emission serves both
    serial = tmax(test(total, "<", EW_PARALLEL_MIN), test(d0, "<", 2))
    tasks = tmax(1, tmin(EW_MAX_TASKS, d0))
    chunk = tmax(1, -(-d0 // tasks))
    return select(serial, 1, -(-d0 // chunk)), select(serial, d0, chunk)


def ew_lanes() -> int:
    """Vector width of the elementwise loops: 16 on AVX-512 hosts, else 8 (the same choice,
    and the same ``GALAXIR_CPU_WIDE=0/1`` override, as the NHWC GEMM tiles)."""
    from .kernels_nhwc import wide_tiles
    return 16 if wide_tiles() else 8


def _build_ew_generic(module, name, expr, r, inner, n_in, lanes=8, stream=False):
    """``name(params, out, ins...)``: params = sizes[r], strides[(1+n_in) x r], tasks, chunk;
    dim 0 is split into ``tasks`` chunks run over the thread pool.  When every operand is
    contiguous or broadcast along the innermost dim, that loop runs ``<2*lanes x float>``
    then ``<lanes x float>`` vectors (then a scalar tail), so the expression's polynomial
    math runs on all lanes.  ``stream``: the vector stores are non-temporal (an output
    larger than the cache: no read-for-ownership of its lines, no eviction of the inputs),
    after a scalar head that aligns them, and the task ends with ``sfence`` so the stores
    are visible before the pool reports the task done."""
    from .codegen import I8P
    from .parallel import define_parallel_for
    tb = FnBuilder(module, name + "_task", [I8P.as_pointer(), I64], noalias=False)
    b = tb.b
    ctx, t = tb.args
    pp = b.bitcast(b.load(b.gep(ctx, [i64(0)], inbounds=True)), I64.as_pointer())
    ptrs = [b.bitcast(b.load(b.gep(ctx, [i64(1 + k)], inbounds=True)), F32.as_pointer())
            for k in range(1 + n_in)]
    fb = tb

    def P(k):
        return b.load(b.gep(pp, [i64(k)], inbounds=True))

    sizes = [P(d) for d in range(r)]
    strides = [[P(r + k * r + d) for d in range(r)] for k in range(1 + n_in)]
    chunk = P(r + (1 + n_in) * r + 1)
    lo0 = b.mul(t, chunk)
    hi0 = _min(b, b.add(lo0, chunk), sizes[0])

    def body(depth, bases):
        lo, hi = (lo0, hi0) if depth == 0 else (i64(0), sizes[depth])
        if depth == r - 1:
            hoisted = {}
            for k in range(1, 1 + n_in):
                if inner[k] == 0:
                    hoisted[k] = fb.load(ptrs[k], bases[k])

            def scalars(lo, hi):
                with fb.loop(lo, hi) as i:
                    def at(k):
                        if inner[k] == 1:
                            return b.add(bases[k], i)
                        return b.add(bases[k], b.mul(i, strides[k][depth]))
                    vals = [hoisted[k] if k in hoisted else fb.load(ptrs[k], at(k))
                            for k in range(1, 1 + n_in)]
                    v = emit_expr(fb, expr, vals, F32)
                    fb.store(v, ptrs[0], at(0) if inner[0] else bases[0])

            if inner[0] == 1 and all(kind in (0, 1) for kind in inner[1:]):
                hi = _max(b, hi, lo)
                align = 4
                if stream:
                    # scalars up to the first output element on a vector-size boundary
                    align = 4 * lanes
                    addr = b.ptrtoint(fb.ptr(ptrs[0], b.add(bases[0], lo)), I64)
                    skip = b.lshr(b.and_(b.sub(i64(0), addr), i64(align - 1)), i64(2))
                    head = _min(b, b.add(lo, skip), hi)
                    scalars(lo, head)
                    lo = head
                # two vectors per step (independent chains for the out-of-order core),
                # then one, then scalars
                for width in (2 * lanes, lanes):
                    V = ir.VectorType(F32, width)
                    vend = b.sub(hi, b.srem(b.sub(hi, lo), i64(width)))
                    vhoisted = {k: _broadcast(b, h, width) for k, h in hoisted.items()}

                    def vptr(k, i, V=V):
                        return b.bitcast(fb.ptr(ptrs[k], b.add(bases[k], i)), V.as_pointer())

                    with fb.loop(lo, vend, width) as i:
                        vals = [vhoisted[k] if k in vhoisted else b.load(vptr(k, i), align=4)
                                for k in range(1, 1 + n_in)]
                        st = b.store(emit_expr(fb, expr, vals, V), vptr(0, i), align=align)
                        if stream:
                            st.set_metadata("nontemporal", module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
                    lo = vend
            scalars(lo, hi)
            return
        with fb.loop(lo, hi) as i:
            body(depth + 1, [b.add(bases[k], b.mul(i, strides[k][depth])) for k in range(1 + n_in)])

    body(0, [i64(0)] * (1 + n_in))
    if stream:
        _sfence(tb)
    task = tb.finish()
    pfor = define_parallel_for(module)
    gb = FnBuilder(module, name, [I64.as_pointer()] + [F32.as_pointer()] * (1 + n_in))
    b = gb.b
    with b.goto_block(gb.entry):
        arr = b.alloca(I8P, size=i64(2 + n_in))
    for k, a in enumerate(gb.args):
        b.store(b.bitcast(a, I8P), b.gep(arr, [i64(k)], inbounds=True))
    n = b.load(b.gep(gb.args[0], [i64(r + (1 + n_in) * r)], inbounds=True))
    b.call(pfor, [task, arr, n])
    return gb.finish()


# -- matmul / gemm -------------------------------------------------------------------------
@dataclass
class MatMul(Kernel):
    """Batched ``out[b] = alpha * op(A[b]) @ op(B[b]) + beta * C`` through sgemm; batch
    strides (elements, 0 = broadcast) are static.  ``c_shape`` (optional) is broadcast into
    the output first (Gemm's C)."""

    M: int
    N: int
    K: int
    batch: tuple = ()
    a_batch_strides: tuple = ()
    b_batch_strides: tuple = ()
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 0.0
    c_shape: tuple | None = None
    name: str = "matmul"
    activation: str = "none"
    act_params: tuple = ()
    relu: bool = False

    def key(self):
        return ("mm", self.M, self.N, self.K, self.batch, self.a_batch_strides,
                self.b_batch_strides, self.trans_a, self.trans_b, self.alpha, self.beta, self.c_shape,
                self.activation, self.act_params, self.relu)

    def emit(self, module, fname, n_args):
        fb = _fb(module, fname, n_args)
        out, a, bm = fb.args[0], fb.args[1], fb.args[2]
        M, N, K = self.M, self.N, self.K
        beta = 0.0
        if self.c_shape is not None:
            c = fb.args[3]
            full = tuple(self.batch) + (M, N)
            st = broadcast_strides(self.c_shape, full)
            shape, per = collapse(full, [contiguous_strides(full), st])

            def copy_c(idx):
                v = fb.load(c, fb.mul_add(list(zip(idx, per[1]))))
                if self.beta != 1.0:
                    v = fb.b.fmul(v, f32(self.beta))
                fb.store(v, out, fb.mul_add(list(zip(idx, per[0]))))
            fb.loop_nest(shape, copy_c)
            beta = 1.0
        if M * N == 0:
            return fb.finish()
        if K == 0:
            if self.c_shape is None:
                memset0(fb, out, M * N * 4 * prod(self.batch))
            return fb.finish()
        gemm = Sgemm(fb)
        lda = M if self.trans_a else K
        ldb = K if self.trans_b else N

        def product(idx):
            ao = fb.mul_add(list(zip(idx, self.a_batch_strides)))
            bo = fb.mul_add(list(zip(idx, self.b_batch_strides)))
            oo = fb.mul_add(list(zip(idx, contiguous_strides(self.batch))))
            oo = fb.b.mul(oo, fb.dim(M * N)) if idx else oo
            gemm.call(M, N, K, fb.ptr(a, ao), lda, self.trans_a, fb.ptr(bm, bo), ldb,
                      self.trans_b, fb.ptr(out, oo), N, self.alpha, beta)
        fb.loop_nest(self.batch, product)
        expr = _act_expr_of(self)
        if expr != ("in", 0):  # the activation epilogue: one pass over the product
            with fb.loop(0, M * N * prod(self.batch)) as i:
                fb.store(emit_expr(fb, expr, [fb.load(out, i)]), out, i)
        return fb.finish()


# -- convolution ---------------------------------------------------------------------------
@dataclass
class Conv2d(Kernel):
    """NCHW conv: im2col (skipped for 1x1/stride 1/no pad) + sgemm per (image, group), then
    bias and an optional relu on the tile while it is still in cache.  Depthwise-like convs
    (few input channels per group) use a direct loop instead."""

    N: int
    C: int
    H: int
    W: int
    M: int
    OH: int
    OW: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    group: int
    has_bias: bool
    relu: bool
    activation: str = "none"
    act_params: tuple = ()
    has_z: bool = False
    name: str = "conv"

    def key(self):
        return ("conv",) + tuple(getattr(self, f) for f in (
            "N", "C", "H", "W", "M", "OH", "OW", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl",
            "group", "has_bias", "relu", "activation", "act_params", "has_z"))

    def act_expr(self):
        return _act_expr_of(self)

    @property
    def pointwise(self) -> bool:
        return (self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.pt == self.pl == 0
                and self.OH == self.H and self.OW == self.W)

    @property
    def direct(self) -> bool:
        cg = self.C // self.group
        mg = self.M // self.group
        return cg * self.kh * self.kw <= 16 and mg <= 4 and self.group > 1

    @property
    def scratch_bytes(self) -> int:
        if self.pointwise or self.direct:
            return 0
        return (self.C // self.group) * self.kh * self.kw * self.OH * self.OW * 4

    def emit(self, module, fname, n_args):
        fb = _fb(module, fname, n_args)
        if self.direct:
            self._emit_direct(fb)
        else:
            self._emit_gemm(fb)
        return fb.finish()

    def _epilogue(self, fb, out, bias, m_start, rows, plane, z=None):
        """out[m, :] = act(out[m, :] + bias[m] + z) for ``rows`` channels from ``m_start``."""
        expr = self.act_expr()
        if not (self.has_bias or z is not None or expr != ("in", 0)):
            return
        b = fb.b
        with fb.loop(0, rows) as r:
            m = b.add(m_start, r) if not isinstance(m_start, INT) else b.add(i64(m_start), r)
            bv = fb.load(bias, m) if self.has_bias else None
            rowoff = b.mul(r, i64(plane))
            with fb.loop(0, plane) as p:
                ix = b.add(rowoff, p)
                v = fb.load(out, ix)
                if bv is not None:
                    v = b.fadd(v, bv)
                if z is not None:
                    v = b.fadd(v, fb.load(z, ix))
                v = emit_expr(fb, expr, [v])
                fb.store(v, out, ix)

    def _emit_gemm(self, fb):
        b = fb.b
        out, x, w = fb.args[0], fb.args[1], fb.args[2]
        bias = fb.args[3] if self.has_bias else None
        z = fb.args[3 + self.has_bias] if self.has_z else None
        scratch = fb.args[-1] if self.scratch_bytes else None
        G = self.group
        Cg, Mg = self.C // G, self.M // G
        K = Cg * self.kh * self.kw
        P = self.OH * self.OW
        gemm = Sgemm(fb)
        with fb.loop(0, self.N) as n:
            with fb.loop(0, G) as g:
                xo = b.add(b.mul(n, i64(self.C * self.H * self.W)), b.mul(g, i64(Cg * self.H * self.W)))
                oo = b.add(b.mul(n, i64(self.M * P)), b.mul(g, i64(Mg * P)))
                wo = b.mul(g, i64(Mg * K))
                if self.pointwise:
                    col = fb.ptr(x, xo)
                else:
                    self._im2col(fb, fb.ptr(x, xo), scratch)
                    col = scratch
                dst = fb.ptr(out, oo)
                gemm.call(Mg, P, K, fb.ptr(w, wo), K, False, col, P, False, dst, P)
                zdst = fb.ptr(z, oo) if z is not None else None
                self._epilogue(fb, dst, bias, b.mul(g, i64(Mg)), Mg, P, zdst)

    def _im2col(self, fb, x, col):
        """col[(c, i, j), (oh, ow)] = x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 outside)."""
        b = fb.b
        Cg = self.C // self.group
        H, W, OH, OW = self.H, self.W, self.OH, self.OW
        P = OH * OW
        with fb.loop(0, Cg) as c:
            for i in range(self.kh):
                for j in range(self.kw):
                    row = b.add(b.mul(c, i64(self.kh * self.kw * P)), i64((i * self.kw + j) * P))
                    # output columns whose input column is inside [0, W)
                    off_w = j * self.dw - self.pl
                    lo = max(0, -(off_w // self.sw) if off_w < 0 else 0)
                    while lo < OW and lo * self.sw + off_w < 0:
                        lo += 1
                    hi = OW
                    while hi > lo and (hi - 1) * self.sw + off_w >= W:
                        hi -= 1
                    off_h = i * self.dh - self.pt
                    with fb.loop(0, OH) as oh:
                        ih = b.add(b.mul(oh, i64(self.sh)), i64(off_h))
                        dst = b.add(row, b.mul(oh, i64(OW)))
                        inside = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(H)))
                        then, other, end = fb.block("in"), fb.block("out"), fb.block("join")
                        b.cbranch(inside, then, other)
                        b.position_at_end(then)
                        src = b.add(b.mul(c, i64(H * W)), b.mul(ih, i64(W)))
                        if lo > 0:
                            memset0(fb, fb.ptr(col, dst), lo * 4)
                        if hi > lo:
                            if self.sw == 1:
                                memcpy(fb, fb.ptr(col, b.add(dst, i64(lo))),
                                       fb.ptr(x, b.add(src, i64(lo + off_w))), (hi - lo) * 4)
                            else:
                                with fb.loop(lo, hi) as ow:
                                    v = fb.load(x, b.add(src, b.add(b.mul(ow, i64(self.sw)), i64(off_w))))
                                    fb.store(v, col, b.add(dst, ow))
                        if hi < OW:
                            memset0(fb, fb.ptr(col, b.add(dst, i64(hi))), (OW - hi) * 4)
                        b.branch(end)
                        b.position_at_end(other)
                        memset0(fb, fb.ptr(col, dst), OW * 4)
                        b.branch(end)
                        b.position_at_end(end)

    def _emit_direct(self, fb):
        b = fb.b
        out, x, w = fb.args[0], fb.args[1], fb.args[2]
        bias = fb.args[3] if self.has_bias else None
        G = self.group
        Cg, Mg = self.C // G, self.M // G
        H, W, OH, OW = self.H, self.W, self.OH, self.OW
        P = OH * OW
        with fb.loop(0, self.N) as n:
            with fb.loop(0, self.M) as m:
                g = b.sdiv(m, i64(Mg)) if Mg > 1 else m
                ob = b.add(b.mul(n, i64(self.M * P)), b.mul(m, i64(P)))
                init = fb.load(bias, m) if bias is not None else f32(0)
                with fb.loop(0, P) as p:
                    fb.store(init, out, b.add(ob, p))
                for c in range(Cg):
                    xb = b.add(b.mul(n, i64(self.C * H * W)), b.mul(b.add(b.mul(g, i64(Cg)), i64(c)), i64(H * W)))
                    for i in range(self.kh):
                        for j in range(self.kw):
                            wv = fb.load(w, b.add(b.mul(m, i64(Cg * self.kh * self.kw)),
                                                  i64((c * self.kh + i) * self.kw + j)))
                            off_w = j * self.dw - self.pl
                            lo = 0
                            while lo < OW and lo * self.sw + off_w < 0:
                                lo += 1
                            hi = OW
                            while hi > lo and (hi - 1) * self.sw + off_w >= W:
                                hi -= 1
                            if hi <= lo:
                                continue
                            off_h = i * self.dh - self.pt
                            oh_lo = 0
                            while oh_lo < OH and oh_lo * self.sh + off_h < 0:
                                oh_lo += 1
                            oh_hi = OH
                            while oh_hi > oh_lo and (oh_hi - 1) * self.sh + off_h >= H:
                                oh_hi -= 1
                            if oh_hi <= oh_lo:
                                continue
                            with fb.loop(oh_lo, oh_hi) as oh:
                                ih = b.add(b.mul(oh, i64(self.sh)), i64(off_h))
                                xrow = b.add(xb, b.mul(ih, i64(W)))
                                orow = b.add(ob, b.mul(oh, i64(OW)))
                                with fb.loop(lo, hi) as ow:
                                    xv = fb.load(x, b.add(xrow, b.add(b.mul(ow, i64(self.sw)), i64(off_w))))
                                    dst = b.add(orow, ow)
                                    acc = fb.load(out, dst)
                                    fb.store(b.fadd(acc, b.fmul(xv, wv)), out, dst)
                expr = self.act_expr()
                if self.has_z or expr != ("in", 0):
                    z = fb.args[3 + self.has_bias] if self.has_z else None
                    with fb.loop(0, P) as p:
                        ix = b.add(ob, p)
                        v = fb.load(out, ix)
                        if z is not None:
                            v = b.fadd(v, fb.load(z, ix))
                        fb.store(emit_expr(fb, expr, [v]), out, ix)


# -- pooling -------------------------------------------------------------------------------
@dataclass
class Pool2d(Window2d, Kernel):
    """max / average pooling over NCHW planes with pads, strides, dilations, ceil mode."""

    kind: str  # "max" | "avg"
    planes: int
    pb: int  # pads after the last row / column
    pr: int
    count_include_pad: bool
    name: str = "pool"

    def key(self):
        return ("pool", self.kind, self.planes) + self.window_key() + (
            self.pb, self.pr, self.count_include_pad)

    def emit(self, module, fname, n_args):
        fb = _fb(module, fname, n_args)
        b = fb.b
        out, x = fb.args[0], fb.args[1]
        H, W, OH, OW = self.H, self.W, self.OH, self.OW
        max_mode = self.kind == "max"
        acc = fb.alloca(F32)
        with fb.loop(0, self.planes) as pl:
            xb = b.mul(pl, i64(H * W))
            ob = b.mul(pl, i64(OH * OW))
            # rows are emitted generically; columns too, with a runtime-computed window
            with fb.loop(0, OH) as oh:
                hs = self.first_row(b, oh)
                with fb.loop(0, OW) as ow:
                    ws = self.first_col(b, ow)
                    b.store(f32(-math.inf if max_mode else 0.0), acc)
                    cnt = fb.alloca(I64)
                    b.store(i64(0), cnt)
                    with fb.loop(0, self.kh) as i:
                        ih = b.add(hs, b.mul(i, i64(self.dh)))
                        ok_h = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(H)))
                        with fb.if_(ok_h):
                            with fb.loop(0, self.kw) as j:
                                iw = b.add(ws, b.mul(j, i64(self.dw)))
                                ok_w = b.and_(b.icmp_signed(">=", iw, i64(0)), b.icmp_signed("<", iw, i64(W)))
                                with fb.if_(ok_w):
                                    v = fb.load(x, b.add(xb, b.add(b.mul(ih, i64(W)), iw)))
                                    a = b.load(acc)
                                    if max_mode:
                                        nv = b.select(b.fcmp_unordered(">", v, a), v, a)
                                    else:
                                        nv = b.fadd(a, v)
                                    b.store(nv, acc)
                                    b.store(b.add(b.load(cnt), i64(1)), cnt)
                    res = b.load(acc)
                    if not max_mode:
                        if self.count_include_pad:
                            n = padded_window_count(b, self, hs, ws)
                        else:
                            n = b.load(cnt)
                        n = _max(b, n, i64(1))
                        res = b.fdiv(res, b.sitofp(n, F32))
                    fb.store(res, out, b.add(ob, b.add(b.mul(oh, i64(OW)), ow)))
        return fb.finish()


def padded_window_count(b, pool, hs, ws):
    """Taps of the window starting at (hs, ws) that lie inside the image or its padding
    (average pooling's count_include_pad divisor); ``pool`` has the window fields."""
    he = _min(b, b.add(hs, i64((pool.kh - 1) * pool.dh + 1)), i64(pool.H + pool.pb))
    we = _min(b, b.add(ws, i64((pool.kw - 1) * pool.dw + 1)), i64(pool.W + pool.pr))
    nh = b.sdiv(b.add(b.sub(he, hs), i64(pool.dh - 1)), i64(pool.dh))
    nw = b.sdiv(b.add(b.sub(we, ws), i64(pool.dw - 1)), i64(pool.dw))
    return b.mul(nh, nw)


def _min(b, x, y):
    """Signed min of i64 values or Python ints (two ints fold to an int)."""
    if isinstance(x, INT) and isinstance(y, INT):
        return min(x, y)
    x, y = (i64(v) if isinstance(v, INT) else v for v in (x, y))
    return b.select(b.icmp_signed("<", x, y), x, y)


def _max(b, x, y):
    """Signed max of i64 values or Python ints (two ints fold to an int)."""
    if isinstance(x, INT) and isinstance(y, INT):
        return max(x, y)
    x, y = (i64(v) if isinstance(v, INT) else v for v in (x, y))
    return b.select(b.icmp_signed(">", x, y), x, y)


@dataclass
class GlobalPool(Kernel):
    kind: str  # "avg" | "max"
    planes: int
    size: int
    name: str = "global_pool"

    def key(self):
        return ("gpool", self.kind, self.planes, self.size)

    def emit(self, module, fname, n_args):
        fb = _fb(module, fname, n_args)
        b = fb.b
        out, x = fb.args[0], fb.args[1]
        acc = fb.alloca(F32)
        with fb.loop(0, self.planes) as p:
            base = b.mul(p, i64(self.size))
            b.store(f32(0.0 if self.kind == "avg" else -math.inf), acc)
            with fb.loop(0, self.size) as i:
                v = fb.load(x, b.add(base, i))
                a = b.load(acc)
                if self.kind == "avg":
                    b.store(b.fadd(a, v, flags=("reassoc", "nsz")), acc)
                else:
                    b.store(b.select(b.fcmp_unordered(">", v, a), v, a), acc)
            r = b.load(acc)
            if self.kind == "avg":
                r = b.fdiv(r, f32(max(self.size, 1)))
            fb.store(r, out, p)
        return fb.finish()


@dataclass
class Softmax(Kernel):
    """softmax / log_softmax over the middle dim of (outer, D, inner)."""

    outer: int
    D: int
    inner: int
    log: bool = False
    name: str = "softmax"

    def key(self):
        return ("softmax", self.outer, self.D, self.inner, self.log)

    def emit(self, module, fname, n_args):
        fb = _fb(module, fname, n_args)
        b = fb.b
        out, x = fb.args[0], fb.args[1]
        mx = fb.alloca(F32)
        sm = fb.alloca(F32)
        D, inner = self.D, self.inner
        with fb.loop(0, self.outer) as o:
            with fb.loop(0, inner) as q:
                base = b.add(b.mul(o, fb.dim(D * inner)), q)
                b.store(f32(-math.inf), mx)
                with fb.loop(0, D) as d:
                    v = fb.load(x, b.add(base, b.mul(d, fb.dim(inner))))
                    a = b.load(mx)
                    b.store(b.select(b.fcmp_unordered(">", v, a), v, a), mx)
                m = b.load(mx)
                b.store(f32(0.0), sm)
                with fb.loop(0, D) as d:
                    ix = b.add(base, b.mul(d, fb.dim(inner)))
                    e = fb.intrinsic("llvm.exp.f32", F32, [b.fsub(fb.load(x, ix), m)])
                    if not self.log:
                        fb.store(e, out, ix)
                    b.store(b.fadd(b.load(sm), e, flags=("reassoc", "nsz")), sm)
                s = b.load(sm)
                if self.log:
                    ls = b.fadd(m, fb.intrinsic("llvm.log.f32", F32, [s]))
                    with fb.loop(0, D) as d:
                        ix = b.add(base, b.mul(d, fb.dim(inner)))
                        fb.store(b.fsub(fb.load(x, ix), ls), out, ix)
                else:
                    inv = b.fdiv(f32(1.0), s)
                    with fb.loop(0, D) as d:
                        ix = b.add(base, b.mul(d, fb.dim(inner)))
                        fb.store(b.fmul(fb.load(out, ix), inv), out, ix)
        return fb.finish()


@dataclass
class LRN(Kernel):
    """out = x / (bias + alpha/size * sum_window x^2) ** beta across channels: axis 1
    (N, C, plane...), or the last axis when ``channels_last`` (N, plane..., C)."""

    N: int
    C: int
    plane: int
    size: int
    alpha: float
    beta: float
    bias: float
    channels_last: bool = False
    name: str = "lrn"

    def key(self):
        return ("lrn", self.N, self.C, self.plane, self.size, self.alpha, self.beta, self.bias,
                self.channels_last)

    def _scaled(self, fb, x, window_sum):
        """x / (bias + alpha/size * window_sum) ** beta."""
        b = fb.b
        t = b.fadd(f32(self.bias), b.fmul(f32(self.alpha / self.size), window_sum))
        if self.beta == 0.75:
            s = fb.intrinsic("llvm.sqrt.f32", F32, [t])
            d = b.fmul(s, fb.intrinsic("llvm.sqrt.f32", F32, [s]))
        elif self.beta == 0.5:
            d = fb.intrinsic("llvm.sqrt.f32", F32, [t])
        elif self.beta == 1.0:
            d = t
        else:
            d = fb.intrinsic("llvm.pow.f32", F32, [t, f32(self.beta)])
        return b.fdiv(x, d)

    def _emit_channels_last(self, fb, out, x):
        """Per pixel: the squares of its C contiguous channels into a zero-padded row, then
        each window is a fixed run of ``size`` loads (the loop over channels vectorizes).
        The window is summed from its first channel up, as the channels-first loop does."""
        b = fb.b
        lo = (self.size - 1) // 2
        C, size = self.C, self.size
        with b.goto_block(fb.entry):
            sq = b.alloca(F32, size=i64(C + size - 1))
            sq.align = 32
        memset0(fb, sq, (C + size - 1) * 4)
        with fb.loop(0, self.N * self.plane) as p:
            base = b.mul(p, i64(C))
            with fb.loop(0, C) as c:
                v = fb.load(x, b.add(base, c))
                fb.store(b.fmul(v, v), sq, b.add(c, i64(lo)))
            with fb.loop(0, C) as c:
                s = f32(0.0)
                for k in range(size):
                    s = b.fadd(s, fb.load(sq, b.add(c, i64(k))))
                ix = b.add(base, c)
                fb.store(self._scaled(fb, fb.load(x, ix), s), out, ix)

    def emit(self, module, fname, n_args):
        fb = _fb(module, fname, n_args)
        b = fb.b
        out, x = fb.args[0], fb.args[1]
        if self.channels_last:
            self._emit_channels_last(fb, out, x)
            return fb.finish()
        lo = (self.size - 1) // 2
        hi = self.size - 1 - lo
        P, C = self.plane, self.C
        with fb.loop(0, self.N) as n:
            with fb.loop(0, C) as c:
                ob = b.add(b.mul(n, i64(C * P)), b.mul(c, i64(P)))
                with fb.loop(0, P) as p:
                    fb.store(f32(0.0), out, b.add(ob, p))
                c0 = _max(b, b.sub(c, i64(lo)), i64(0))
                c1 = _min(b, b.add(c, i64(hi + 1)), i64(C))
                with fb.loop(c0, c1) as cc:
                    xb = b.add(b.mul(n, i64(C * P)), b.mul(cc, i64(P)))
                    with fb.loop(0, P) as p:
                        v = fb.load(x, b.add(xb, p))
                        ix = b.add(ob, p)
                        fb.store(b.fadd(fb.load(out, ix), b.fmul(v, v)), out, ix)
                with fb.loop(0, P) as p:
                    ix = b.add(ob, p)
                    fb.store(self._scaled(fb, fb.load(x, ix), fb.load(out, ix)), out, ix)
        return fb.finish()


# -- data movement -------------------------------------------------------------------------
@dataclass
class Concat(Kernel):
    """out = concat(inputs, axis): per input, ``outer`` block copies."""

    outer: int
    chunks: tuple  # bytes per outer index of each input
    name: str = "concat"

    def key(self):
        return ("concat", self.outer, self.chunks)

    def emit(self, module, fname, n_args):
        """A wrapper handing (outer, total, n, chunks...) and the source pointers to one
        generic copy loop per module."""
        I8P_ = ir.IntType(8).as_pointer()
        gen = _generic(module, ("concat",), _build_concat_generic)
        fb = FnBuilder(module, fname, [I8P_] * n_args)
        b = fb.b
        n = len(self.chunks)
        from .library import param_block
        pp = b.bitcast(param_block(module, [self.outer, sum(self.chunks), n, *self.chunks],
                                   "concat"), I64.as_pointer())
        with b.goto_block(fb.entry):
            arr = b.alloca(I8P_, size=i64(max(n, 1)))
        for k in range(n):
            b.store(fb.args[1 + k], b.gep(arr, [i64(k)], inbounds=True))
        b.call(gen, [pp, fb.args[0], arr])
        return fb.finish()


def _build_concat_generic(module, name):
    I8 = ir.IntType(8)
    I8P_ = I8.as_pointer()
    fb = FnBuilder(module, name, [I64.as_pointer(), I8P_, I8P_.as_pointer()], noalias=False)
    b = fb.b
    pp, out, srcs = fb.args

    def P(k):
        return b.load(b.gep(pp, [k if not isinstance(k, INT) else i64(k)], inbounds=True))

    outer, total, n = P(0), P(1), P(2)
    off = fb.alloca(I64)
    b.store(i64(0), off)
    with fb.loop(0, n) as k:
        chunk = P(b.add(k, i64(3)))
        src = b.load(b.gep(srcs, [k], inbounds=True))
        o0 = b.load(off)
        with fb.loop(0, outer) as o:
            memcpy(fb, fb.ptr(out, b.add(b.mul(o, total), o0), I8),
                   fb.ptr(src, b.mul(o, chunk), I8), chunk)
        b.store(b.add(o0, chunk), off)
    return fb.finish()


@dataclass
class Transpose(Kernel):
    """out = transpose(x, perm) for any element size (moved as integers)."""

    in_shape: tuple
    perm: tuple
    itemsize: int
    name: str = "transpose"

    def key(self):
        return ("transpose", self.in_shape, self.perm, self.itemsize)

    def emit(self, module, fname, n_args):
        ty = INT_OF_SIZE[self.itemsize]
        fb = FnBuilder(module, fname, [ty.as_pointer()] * n_args)
        out, x = fb.args[0], fb.args[1]
        out_shape = [self.in_shape[p] for p in self.perm]
        in_st = contiguous_strides(self.in_shape)
        strides = [contiguous_strides(out_shape), [in_st[p] for p in self.perm]]
        shape, per = collapse(out_shape, strides)

        def move(idx):
            v = fb.load(x, fb.mul_add(list(zip(idx, per[1]))), ty)
            fb.store(v, out, fb.mul_add(list(zip(idx, per[0]))), ty)
        if not prod(out_shape):
            return fb.finish()
        d = transpose_tile_dim(shape, per[1], self.itemsize)
        if d is None:
            fb.loop_nest(shape, move)
        else:
            self._tiled(fb, shape, d, move)
        return fb.finish()

    @staticmethod
    def _tiled(fb, shape, d, move):
        """Tiles of TRANSPOSE_TILE x TRANSPOSE_TILE over the output's last dim and the dim
        ``d`` the input walks contiguously: each tile reads and writes whole cache lines
        (walking the output alone reads the input a large stride apart, which a power-of-two
        row length maps onto a few cache sets: 8x slower on [3199, 512] -> [512, 3199])."""
        b, T, last = fb.b, TRANSPOSE_TILE, len(shape) - 1
        other = [k for k in range(len(shape)) if k not in (d, last)]

        def block_end(start, n):
            end = b.add(start, i64(T))
            return b.select(b.icmp_signed("<", end, i64(n)), end, i64(n))

        def tiles(oidx):
            with fb.loop(0, -(-shape[d] // T)) as bi:
                i0 = b.mul(bi, i64(T))
                with fb.loop(0, -(-shape[last] // T)) as bj:
                    j0 = b.mul(bj, i64(T))
                    with fb.loop(i0, block_end(i0, shape[d])) as i:
                        with fb.loop(j0, block_end(j0, shape[last])) as j:
                            idx = [None] * len(shape)
                            for k, v in zip(other, oidx):
                                idx[k] = v
                            idx[d], idx[last] = i, j
                            move(idx)
        fb.loop_nest([shape[k] for k in other], tiles)


#: the side of a Transpose tile, in elements
TRANSPOSE_TILE = 16


def transpose_tile_dim(shape, in_strides, itemsize: int = 4) -> int | None:
    """The dim a Transpose tiles with the output's last dim: the one the input walks
    contiguously, when the plain loop would read the input a multiple of 1 KiB apart (a
    few cache sets; at other strides the plain loop measured as fast or faster) and both
    dims are at least a tile long; None: the plain loop nest (also in a dynamic module,
    whose dims are run-time values)."""
    from .codegen import is_dynamic_emission
    if is_dynamic_emission() or len(shape) < 2 or in_strides[-1] == 1:
        return None
    if (in_strides[-1] * itemsize) % 1024:
        return None
    for k, st in enumerate(in_strides[:-1]):
        if st == 1 and shape[k] >= TRANSPOSE_TILE and shape[-1] >= TRANSPOSE_TILE:
            return k
    return None


@dataclass
class Copy(Kernel):
    """A contiguous copy (materializes an alias that must own its buffer)."""

    nbytes: int
    name: str = "copy"

    def key(self):
        return ("copy", self.nbytes)

    def emit(self, module, fname, n_args):
        fb = FnBuilder(module, fname, [ir.IntType(8).as_pointer()] * n_args)
        if self.nbytes:
            memcpy(fb, fb.args[0], fb.args[1], self.nbytes)
        return fb.finish()


class LinearEpilogue:
    """The epilogue of a GEMM-like kernel (fields relu, activation, act_params): relu,
    clip and leaky_relu share one piecewise-linear code path whose bounds and slope come
    from the parameter block, the other activations get their own library variant."""

    def _act(self):
        if self.relu and self.activation == "none":
            return "relu", ()
        return self.activation, tuple(float(p) for p in self.act_params)

    def act_class(self) -> tuple:
        """("lin", ()) or (activation, params): what the generated code depends on."""
        act, params = self._act()
        return ("lin", ()) if act in LINEAR_ACTS else (act, params)

    def linear_params(self) -> tuple[float, float, float]:
        """(lo, hi, alpha) of the piecewise-linear epilogue: clip(v, lo, hi), then v*alpha
        where v < 0 (none = (-inf, inf, 1))."""
        act, params = self._act()
        if act == "relu":
            return (0.0, math.inf, 1.0)
        if act == "clip":
            return (float(params[0]), float(params[1]), 1.0)
        if act == "leaky_relu":
            return (-math.inf, math.inf, float(params[0]))
        return (-math.inf, math.inf, 1.0)



# -- packed GEMM (generated micro-kernel) ---------------------------------------------------
MR, NR = 6, 16  # register tile: 6 rows x 16 columns = 12 ymm accumulators


def pack_a(a: "np.ndarray") -> "np.ndarray":
    """Row-major A[M, K] -> panels [ceil(M/6), K, 6] (zero rows pad the last panel)."""
    import numpy as np
    M, Kd = a.shape
    T = -(-M // MR)
    p = np.zeros((T * MR, Kd), np.float32)
    p[:M] = a
    return np.ascontiguousarray(p.reshape(T, MR, Kd).transpose(0, 2, 1))


@dataclass
class PackedGemm(LinearEpilogue, Kernel):
    """C[M, N] = act(Ap @ B + bias[row] + Z) with A pre-packed (see ``pack_a``) and B read
    through a ``source``: ("dense", ldb, trans) for a matrix, or ("conv", C, H, W, OW, kh, kw,
    sh, sw, dh, dw, pt, pl) for the implicit im2col of an NCHW image.  Every output element
    is one sequential chain of FMAs over k, whatever its position in a tile, so equal inputs
    give bit-equal outputs across channels (as onnxruntime's kernels do).
    ``batch`` repeats the product over images: B and C advance by ``b_step``/``c_step``.

    The code is shape-generic: one library function per variant (source kind, epilogue)
    serves every conv/gemm of the process; shapes reach it in a constant parameter block.
    """

    M: int
    N: int
    K: int
    source: tuple
    has_bias: bool = False
    relu: bool = False
    batch: int = 1
    b_step: int = 0
    c_step: int = 0
    a_step: int = 0
    groups: int = 1   # A (and bias) advance with (image % groups)
    activation: str = "none"
    act_params: tuple = ()
    has_z: bool = False  # residual Z (same layout as C) added before the activation
    name: str = "gemm"

    def key(self):
        return ("pgemm", self.M, self.N, self.K, self.source, self.has_bias, self.relu,
                self.batch, self.b_step, self.c_step, self.a_step, self.groups,
                self.activation, self.act_params, self.has_z)

    @property
    def n_tasks(self) -> int:
        panels = -(-self.N // NR)
        return panels * self.m_chunks * self.batch

    @property
    def m_chunks(self) -> int:
        tiles = -(-self.M // MR)
        panels = -(-self.N // NR)
        want = max(1, -(-16 // max(panels * self.batch, 1)))
        return max(1, min(tiles, want))

    # -- variant and parameters ----------------------------------------------------------------
    def _src_kind(self):
        if self.source[0] == "dense":
            return "dense_t" if self.source[2] else "dense_n"
        _, C, H, W, OW, kh, kw, sh, sw, dh, dw, pt, pl = self.source
        if kh == kw == 1 and sh == sw == 1 and pt == pl == 0 and OW == W:
            return "pointwise"
        return "conv"

    def variant(self) -> tuple:
        """What the generated code depends on: B's source family, the residual, and the
        activation class ("lin" covers none/relu/clip/leaky_relu, chosen at run time)."""
        kind = self._src_kind()
        return ("conv" if kind == "pointwise" else kind, self.has_z) + self.act_class()

    def params(self) -> list[int]:
        tiles = -(-self.M // MR)
        panels = -(-self.N // NR)
        mch = self.m_chunks
        p = [self.M, self.N, self.K, self.batch, self.b_step, self.c_step, self.a_step,
             self.groups, mch, -(-tiles // mch), panels, tiles, self.n_tasks, int(self.has_bias)]
        p.extend(_f32_bits(v) for v in self.linear_params())
        p.append(int(self._src_kind() == "pointwise"))
        if self.source[0] == "dense":
            p.append(self.source[1])
        else:
            p.extend(self.source[1:])
        return p

    def emit(self, module, fname, n_args):
        from . import library
        var = self.variant()
        vname = "pgemm_" + "_".join(str(x) for x in var[:3]) + (
            "_" + "_".join(f"{v:g}" for v in var[3]) if var[3] else "")
        sym = library.ensure(vname, lambda m, n: build_pgemm_library(m, n, var))
        fb, lib, state, pp = library_call(module, fname, n_args, sym, self.params(), "pgemm")
        bias, z = epilogue_args(fb, self.has_bias, self.has_z)
        fb.b.call(lib, [state, pp, fb.args[0], fb.args[1], fb.args[2], bias, z])
        return fb.finish()


# parameter block layout of the generic packed GEMM
(GP_M, GP_N, GP_K, GP_BATCH, GP_BSTEP, GP_CSTEP, GP_ASTEP, GP_GROUPS, GP_MCH, GP_TPER, GP_PANELS,
 GP_TILES, GP_NTASKS, GP_HAS_BIAS, GP_LO, GP_HI, GP_ALPHA, GP_POINTWISE, GP_SRC) = range(19)
LINEAR_ACTS = ("none", "relu", "clip", "leaky_relu")


def _f32_bits(v: float) -> int:
    import numpy as np
    return int(np.array(v, np.float32).view(np.int32))


def _linear_act_v8(fb, v, lo, hi, alpha):
    """clip(v, lo, hi), then v*alpha where v < 0 (lo, hi, alpha are splat vectors)."""
    b = fb.b
    V8 = ir.VectorType(F32, 8)
    zero = ir.Constant(V8, [0.0] * 8)
    v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
    v = b.select(b.fcmp_ordered(">", v, hi), hi, v)
    return b.select(b.fcmp_ordered("<", v, zero), b.fmul(v, alpha), v)


def build_task_library(module, name, ntasks_slot: int, emit_task):
    """Define the library entry ``name(state, params, p0..p4)`` (five float buffers) that
    runs ``emit_task(fb, params, [p0..p4], t)`` for t < params[ntasks_slot] on the pool."""
    from .codegen import I8P
    from .parallel import define_parallel_for_state
    P64 = I64.as_pointer()
    F32P = F32.as_pointer()
    tb = FnBuilder(module, name + "_task", [I8P.as_pointer(), I64], noalias=False)
    b = tb.b
    ctx, t = tb.args
    raw = [b.load(b.gep(ctx, [i64(k)], inbounds=True)) for k in range(6)]
    emit_task(tb, b.bitcast(raw[0], P64), [b.bitcast(r, F32P) for r in raw[1:]], t)
    task = tb.finish()
    pfor = define_parallel_for_state(module)
    fb = FnBuilder(module, name, [P64, P64] + [F32P] * 5, noalias=False, linkage="external")
    fb.fn.attributes.add("noinline")
    b = fb.b
    state, pp = fb.args[0], fb.args[1]
    with b.goto_block(fb.entry):
        arr = b.alloca(I8P, size=i64(6))
    for k, a in enumerate(fb.args[1:]):
        b.store(b.bitcast(a, I8P), b.gep(arr, [i64(k)], inbounds=True))
    n = b.load(b.gep(pp, [i64(ntasks_slot)], inbounds=True))
    b.call(pfor, [state, task, arr, n])
    fb.finish()


def library_call(module, fname: str, n_args: int, symbol: str, params: list[int], tag: str):
    """The start of a kernel whose work is a call of a library function (one per variant,
    built by ``build_task_library``, shapes in a parameter block): ``(fb, lib, state, pp)``,
    the wrapper's builder, the declared function, the pool state and the parameter block."""
    from . import library
    from .parallel import pool_global
    P64 = I64.as_pointer()
    lib = library.declare(module, symbol, [P64, P64] + [F32.as_pointer()] * 5)
    fb = _fb(module, fname, n_args)
    state = fb.b.load(pool_global(module))
    pp = fb.b.bitcast(library.param_block(module, params, tag), P64)
    return fb, lib, state, pp


def epilogue_args(fb, has_bias: bool, has_z: bool) -> tuple:
    """(bias, z) of a wrapper whose arguments are (out, x, weights[, bias][, z]): null
    pointers for the absent ones."""
    null = ir.Constant(F32.as_pointer(), None)
    bias = fb.args[3] if has_bias else null
    z = fb.args[3 + has_bias] if has_z else null
    return bias, z


def build_pgemm_library(module, name, variant):
    """Define ``name(state, params, C, B, Ap, bias, Z)`` for one packed-GEMM variant."""
    build_task_library(module, name, GP_NTASKS,
                       lambda tb, params, ptrs, t: _pgemm_task(tb, variant, params, *ptrs, t))


class EpilogueCode:
    """Emits the epilogue of a tile: bias, then residual, then the activation, on
    ``<8 x float>`` vectors or on scalars.  For the "lin" class the bounds and slope are
    read from the parameter block slots ``lo_slot, lo_slot+1, lo_slot+2``."""

    def __init__(self, fb, act: str, act_params: tuple, params=None, lo_slot: int = 0):
        self.fb, self.act, self.act_params = fb, act, act_params
        b = fb.b
        if act == "lin":
            def pf(k):
                v = b.load(b.gep(params, [i64(k)], inbounds=True))
                return b.bitcast(b.trunc(v, ir.IntType(32)), F32)
            self.scalars = [pf(lo_slot + k) for k in range(3)]
            self.vectors = [_splat8(b, x) for x in self.scalars]

    def vector(self, v):
        if self.act == "lin":
            return _linear_act_v8(self.fb, v, *self.vectors)
        return apply_activation_v8(self.fb, v, self.act, self.act_params)

    def scalar(self, v):
        b = self.fb.b
        if self.act != "lin":
            return emit_expr(self.fb, activation_expr(self.act, self.act_params), [v])
        lo, hi, alpha = self.scalars
        v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
        v = b.select(b.fcmp_ordered(">", v, hi), hi, v)
        return b.select(b.fcmp_ordered("<", v, f32(0.0)), b.fmul(v, alpha), v)


def _sfence(fb) -> None:
    """Order the task's non-temporal stores before whatever it does next (x86 ``sfence``;
    a sequentially consistent fence elsewhere)."""
    if jit.target_triple().startswith(("x86_64", "i686", "i386")):
        fb.intrinsic("llvm.x86.sse.sfence", ir.VoidType(), [])
    else:
        fb.b.fence("seq_cst")


def _broadcast(b, s, lanes: int):
    """``<lanes x float>`` with every lane ``s``."""
    V = ir.VectorType(F32, lanes)
    return b.shuffle_vector(b.insert_element(ir.Constant(V, ir.Undefined), s, ir.Constant(ir.IntType(32), 0)),
                            ir.Constant(V, ir.Undefined),
                            ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _splat8(b, s):
    return _broadcast(b, s, 8)


def _act_expr_of(kern):
    """The epilogue expression of a kernel with ``relu``/``activation``/``act_params``."""
    if kern.relu and kern.activation == "none":
        return activation_expr("relu")
    return activation_expr(kern.activation, kern.act_params)


def activation_expr(name: str, params=()):
    """The elementwise expression (see ``emit_expr``) of a fused-op activation on ("in", 0)."""
    x = ("in", 0)
    if name == "none":
        return x
    if name in ("relu", "tanh", "sigmoid"):
        return (name, (x,), ())
    if name == "silu":
        return ("mul", (x, ("sigmoid", (x,), ())), ())
    if name == "clip":
        lo, hi = params
        return ("clip", (x, ("const", lo) if math.isfinite(lo) else ("none",),
                         ("const", hi) if math.isfinite(hi) else ("none",)), ())
    if name == "leaky_relu":
        return ("leaky_relu", (x,), (("alpha", float(params[0])),))
    if name == "hard_sigmoid":
        return ("hard_sigmoid", (x,), (("alpha", float(params[0])), ("beta", float(params[1]))))
    if name == "hard_swish":
        return ("hard_swish", (x,), ())
    if name == "gelu":
        return ("gelu", (x,), ())
    if name == "gelu_tanh":
        return ("gelu_tanh", (x,), ())
    if name == "mish":
        return ("mish", (x,), ())
    raise NotImplementedError(name)


def apply_activation_v8(fb, v, name, params=()):
    """``name`` applied to a ``<N x float>`` (8 or 16 lanes) as one vector expression: the
    transcendental ones through vmath's polynomial code, not lane by lane through libm."""
    if name == "none":
        return v
    return emit_expr(fb, activation_expr(name, params), [v])


def _pgemm_task(fb, variant, params, c, bm, ap, bias, z, t):
    src_kind, has_z, act, act_params = variant
    b = fb.b
    V8 = ir.VectorType(F32, 8)

    def P(k):
        return b.load(b.gep(params, [i64(k)], inbounds=True))

    epi = EpilogueCode(fb, act, act_params, params, GP_LO)
    has_bias = b.icmp_signed("!=", P(GP_HAS_BIAS), i64(0))
    zslot = fb.alloca(F32)
    b.store(f32(0.0), zslot)

    M, N, Kd = P(GP_M), P(GP_N), P(GP_K)
    panels, mch, tiles_per, tiles = P(GP_PANELS), P(GP_MCH), P(GP_TPER), P(GP_TILES)
    groups = P(GP_GROUPS)
    # task -> (image, panel, m chunk)
    pm = b.mul(panels, mch)
    img = b.sdiv(t, pm)
    rest = b.srem(t, pm)
    pj = b.sdiv(rest, mch)
    mc = b.srem(rest, mch)
    j0 = b.mul(pj, i64(NR))
    coff = b.mul(img, P(GP_CSTEP))
    cb = fb.ptr(c, coff)
    zb = fb.ptr(z, coff) if has_z else None
    bb = fb.ptr(bm, b.mul(img, P(GP_BSTEP)))
    gi = b.srem(img, groups)
    ab = fb.ptr(ap, b.mul(gi, P(GP_ASTEP)))
    bias = b.select(has_bias, fb.ptr(bias, b.mul(gi, M)), zslot)
    bias_step = b.select(has_bias, i64(1), i64(0))
    # pack the B panel: bp[k*16 + q] = B[k, j0 + q] (0 past N)
    bp = b.alloca(F32, size=b.mul(Kd, i64(NR)))  # dynamic: once per task call, not in a loop
    bp.align = 32
    _pack_b_generic(fb, src_kind, params, P, bb, bp, j0, N, Kd)
    t0 = b.mul(mc, tiles_per)
    t1 = _min(b, b.add(t0, tiles_per), tiles)
    accs = [[fb.alloca(V8) for _ in range(2)] for _ in range(MR)]
    with fb.b.goto_block(fb.entry):
        tile = fb.b.alloca(F32, size=i64(MR * NR))
        tile.align = 32
    zero = ir.Constant(V8, [0.0] * 8)
    fma = _fma_v8(fb.module)
    full_cols = b.icmp_signed("<=", b.add(j0, i64(NR)), N)
    with fb.loop(t0, t1) as ti:
        for r in range(MR):
            for h in range(2):
                b.store(zero, accs[r][h])
        abase = b.mul(ti, b.mul(Kd, i64(MR)))
        with fb.loop(0, Kd) as k:
            bk = b.mul(k, i64(NR))
            bv = [b.load(b.bitcast(fb.ptr(bp, b.add(bk, i64(8 * h))), V8.as_pointer()), align=32)
                  for h in range(2)]
            ak = b.add(abase, b.mul(k, i64(MR)))
            for r in range(MR):
                splat = _splat8(b, fb.load(ab, b.add(ak, i64(r))))
                for h in range(2):
                    acc = b.load(accs[r][h])
                    b.store(b.call(fma, [splat, bv[h], acc]), accs[r][h])
        # epilogue: the tile goes to the stack, then one (not unrolled) loop over its valid
        # rows adds bias and residual, applies the activation and stores
        for r in range(MR):
            for h in range(2):
                b.store(b.load(accs[r][h]), b.bitcast(fb.ptr(tile, i64(r * NR + 8 * h)),
                                                      V8.as_pointer()), align=32)
        row0 = b.mul(ti, i64(MR))
        rows = _min(b, i64(MR), b.sub(M, row0))
        with fb.loop(0, rows) as r:
            row = b.add(row0, r)
            tr = b.mul(r, i64(NR))
            bs = fb.load(bias, b.mul(row, bias_step))
            bvl = _splat8(b, bs)
            rowoff = b.add(b.mul(row, N), j0)
            then, other, end = fb.block("full"), fb.block("part"), fb.block("stored")
            b.cbranch(full_cols, then, other)
            b.position_at_end(then)
            for h in range(2):
                v = b.load(b.bitcast(fb.ptr(tile, b.add(tr, i64(8 * h))), V8.as_pointer()), align=32)
                v = b.select(has_bias, b.fadd(v, bvl), v)
                if has_z:
                    v = b.fadd(v, b.load(b.bitcast(fb.ptr(zb, b.add(rowoff, i64(8 * h))),
                                                   V8.as_pointer()), align=4))
                v = epi.vector(v)
                b.store(v, b.bitcast(fb.ptr(cb, b.add(rowoff, i64(8 * h))), V8.as_pointer()), align=4)
            b.branch(end)
            b.position_at_end(other)
            with fb.loop(0, b.sub(N, j0)) as q:
                sv = fb.load(tile, b.add(tr, q))
                sv = b.select(has_bias, b.fadd(sv, bs), sv)
                if has_z:
                    sv = b.fadd(sv, fb.load(zb, b.add(rowoff, q)))
                fb.store(epi.scalar(sv), cb, b.add(rowoff, q))
            b.branch(end)
            b.position_at_end(end)


def _pack_b_generic(fb, kind, params, P, src, bp, j0, N, Kd):
    b = fb.b
    V8 = ir.VectorType(F32, 8)
    if kind in ("dense_n", "dense_t"):
        ldb = P(GP_SRC)
        trans = kind == "dense_t"
        with fb.loop(0, NR) as q:
            col = b.add(j0, q)
            ok = b.icmp_signed("<", col, N)
            colc = b.select(ok, col, i64(0))
            with fb.loop(0, Kd) as k:
                idx = b.add(b.mul(colc, ldb), k) if trans else b.add(b.mul(k, ldb), colc)
                v = b.select(ok, fb.load(src, idx), f32(0.0))
                fb.store(v, bp, b.add(b.mul(k, i64(NR)), q))
        return
    if kind == "conv":
        pw, gen, done = fb.block("pw"), fb.block("im2col"), fb.block("packed")
        b.cbranch(b.icmp_signed("!=", P(GP_POINTWISE), i64(0)), pw, gen)
        b.position_at_end(pw)
        _pack_b_generic(fb, "pointwise", params, P, src, bp, j0, N, Kd)
        b.branch(done)
        b.position_at_end(gen)
        _pack_b_generic(fb, "im2col", params, P, src, bp, j0, N, Kd)
        b.branch(done)
        b.position_at_end(done)
        return
    if kind == "pointwise":
        full = b.icmp_signed("<=", b.add(j0, i64(NR)), N)
        then, other, end = fb.block("pfull"), fb.block("ppart"), fb.block("pdone")
        b.cbranch(full, then, other)
        b.position_at_end(then)
        with fb.loop(0, Kd) as k:
            base = b.add(b.mul(k, N), j0)
            for h in range(2):
                v = b.load(b.bitcast(fb.ptr(src, b.add(base, i64(8 * h))), V8.as_pointer()), align=4)
                b.store(v, b.bitcast(fb.ptr(bp, b.add(b.mul(k, i64(NR)), i64(8 * h))), V8.as_pointer()), align=32)
        b.branch(end)
        b.position_at_end(other)
        with fb.loop(0, NR) as q:
            col = b.add(j0, q)
            ok = b.icmp_signed("<", col, N)
            colc = b.select(ok, col, i64(0))
            with fb.loop(0, Kd) as k:
                v = b.select(ok, fb.load(src, b.add(b.mul(k, N), colc)), f32(0.0))
                fb.store(v, bp, b.add(b.mul(k, i64(NR)), q))
        b.branch(end)
        b.position_at_end(end)
        return
    # implicit im2col: k = (c, i, j); column p = oh * OW + ow
    C, H, W, OW, kh, kw, sh, sw, dh, dw, pt, pl = (P(GP_SRC + i) for i in range(12))
    ih0, iw0 = [], []
    big = i64(-(1 << 40))
    for q in range(NR):
        p = b.add(j0, i64(q))
        ok = b.icmp_signed("<", p, N)
        oh = b.sdiv(p, OW)
        ow = b.srem(p, OW)
        ih0.append(b.select(ok, b.sub(b.mul(oh, sh), pt), big))
        iw0.append(b.select(ok, b.sub(b.mul(ow, sw), pl), big))
    HW = b.mul(H, W)
    khw = b.mul(kh, kw)
    with fb.loop(0, C) as ch:
        cbase = b.mul(ch, HW)
        kc = b.mul(ch, khw)
        with fb.loop(0, kh) as i:
            ki = b.add(kc, b.mul(i, kw))
            di = b.mul(i, dh)
            with fb.loop(0, kw) as j:
                k = b.add(ki, j)
                dj = b.mul(j, dw)
                kb = b.mul(k, i64(NR))
                for q in range(NR):
                    ih = b.add(ih0[q], di)
                    iw = b.add(iw0[q], dj)
                    ok = b.and_(b.icmp_unsigned("<", ih, H), b.icmp_unsigned("<", iw, W))
                    idx = b.select(ok, b.add(cbase, b.add(b.mul(ih, W), iw)), i64(0))
                    v = b.select(ok, fb.load(src, idx), f32(0.0))
                    fb.store(v, bp, b.add(kb, i64(q)))



def _fma_vec(module, lanes: int):
    """The ``llvm.fma`` intrinsic on ``<lanes x float>``."""
    name = f"llvm.fma.v{lanes}f32"
    fn = module.globals.get(name)
    if fn is None:
        V = ir.VectorType(F32, lanes)
        fn = ir.Function(module, ir.FunctionType(V, [V, V, V]), name)
    return fn


def _fma_v8(module):
    return _fma_vec(module, 8)


def gemv_rows() -> int:
    """Rows of W a Gemv task streams at once: their 4 accumulators each must stay in
    registers (32 vector registers with AVX-512, 16 without)."""
    return 4 if jit.has_feature("avx512f") else 2


@dataclass
class Gemv(Kernel):
    """out[m, n] = act(sum_k a[m, k] * W[n, k] + bias[n]) for few rows m (fully connected
    layers at small batch): one vectorized dot product per output, the same for every n."""

    M: int
    N: int
    K: int
    has_bias: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    relu: bool = False
    name: str = "gemv"
    rows_per_task: int = 32
    activation: str = "none"
    act_params: tuple = ()

    def key(self):
        return ("gemv", self.M, self.N, self.K, self.has_bias, self.alpha, self.beta, self.relu,
                self.activation, self.act_params)

    @property
    def n_tasks(self):
        return -(-self.N // self.rows_per_task)

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        return parallel_kernel(module, fname, n_args, self.n_tasks, self._emit_task)

    def _emit_task(self, fb, args, t):
        """Rows of W in groups of ``gemv_rows()`` (several independent streams from memory,
        one load of ``a`` for all of them), then the rows left one by one; each output is
        the same sum in the same order either way (4 vector accumulators over k mod 32,
        then the lanes, then the tail of k), so equal rows give equal outputs."""
        b = fb.b
        out, a, w = args[0], args[1], args[2]
        bias = args[3] if self.has_bias else None
        n0 = b.mul(t, i64(self.rows_per_task))
        n1 = _min(b, b.add(n0, i64(self.rows_per_task)), i64(self.N))
        rows = gemv_rows()
        n_grouped = b.add(n0, b.mul(b.sdiv(b.sub(n1, n0), i64(rows)), i64(rows)))
        with fb.loop(0, self.M) as m:
            with fb.loop(n0, n_grouped, rows) as n:
                self._rows(fb, out, a, w, bias, m, n, rows)
            with fb.loop(n_grouped, n1) as n:
                self._rows(fb, out, a, w, bias, m, n, 1)

    def _rows(self, fb, out, a, w, bias, m, n, rows: int):
        """out[m, n:n+rows] (see _emit_task)."""
        b = fb.b
        V8 = ir.VectorType(F32, 8)
        V8P = V8.as_pointer()
        Kd = self.K
        kv = Kd // 32 * 32
        zero = ir.Constant(V8, [0.0] * 8)
        fma = _fma_v8(fb.module)
        acc = [[fb.alloca(V8) for _ in range(4)] for _ in range(rows)]
        sacc = [fb.alloca(F32) for _ in range(rows)]
        for row in acc:
            for x in row:
                b.store(zero, x)
        ab = b.mul(m, i64(Kd))
        wbs = [b.mul(b.add(n, i64(r)), i64(Kd)) for r in range(rows)]
        with fb.loop(0, kv, 32) as k:
            for u in range(4):
                off = b.add(k, i64(8 * u))
                av = b.load(b.bitcast(fb.ptr(a, b.add(ab, off)), V8P), align=4)
                for r in range(rows):
                    wv = b.load(b.bitcast(fb.ptr(w, b.add(wbs[r], off)), V8P), align=4)
                    b.store(b.call(fma, [av, wv, b.load(acc[r][u])]), acc[r][u])
        for r in range(rows):
            v = b.fadd(b.fadd(b.load(acc[r][0]), b.load(acc[r][1])),
                       b.fadd(b.load(acc[r][2]), b.load(acc[r][3])))
            s = b.extract_element(v, ir.Constant(ir.IntType(32), 0))
            for e in range(1, 8):
                s = b.fadd(s, b.extract_element(v, ir.Constant(ir.IntType(32), e)))
            b.store(s, sacc[r])
        if kv < Kd:
            with fb.loop(kv, Kd) as k:
                ak = fb.load(a, b.add(ab, k))
                for r in range(rows):
                    b.store(b.fadd(b.load(sacc[r]), b.fmul(ak, fb.load(w, b.add(wbs[r], k)))), sacc[r])
        for r in range(rows):
            nr = b.add(n, i64(r))
            s = b.load(sacc[r])
            if self.alpha != 1.0:
                s = b.fmul(s, f32(self.alpha))
            if bias is not None:
                bv = fb.load(bias, nr)
                if self.beta != 1.0:
                    bv = b.fmul(bv, f32(self.beta))
                s = b.fadd(s, bv)
            s = emit_expr(fb, _act_expr_of(self), [s])
            fb.store(s, out, b.add(b.mul(m, i64(self.N)), nr))
