"""Native float32 reductions: reduce_sum, reduce_mean, reduce_max, reduce_min, reduce_prod,
reduce_l1, reduce_l2, reduce_log_sum, reduce_log_sum_exp and reduce_sum_square (lowering
rules in lower_reduce.py).

One kernel, ``Reduce``, parameterized by the reduction's ``pre`` (abs, square, exp),
``combine`` (add, mul, max, min), identity and ``finish`` (divide by the count, sqrt, log).
The input shape is collapsed first: size-1 dims dropped, adjacent dims that are both
reduced or both kept merged, so ``[N, C, H, W]`` over axes (2, 3) is ``[NC kept, HW
reduced]``.  The output is contiguous over the kept dims whatever ``keepdims`` says.  Two
loop orders, both reading the input in contiguous runs:

* the innermost dim is kept (``[N, C, HW]`` over axis 1): per output row of ``HW``, the
  row is set to the identity and every reduced slice is combined into it with ``<8 x
  float>`` loads and stores (rows of the input are independent lanes: no reassociation);
* the innermost dim is reduced (``[NC, HW]`` over axis 1): per output element,
  ``<32 x float>`` and ``<8 x float>`` accumulators (four and one registers with AVX2) and
  a scalar one for the tail, combined lane by lane at the end.

max and min propagate NaN (as numpy's do); an empty reduction (a zero-size reduced dim)
gives the identity through ``finish``, as the numpy reference does: 0 for sum, NaN for
mean, -inf for max, 1 for prod, -inf for log_sum and log_sum_exp.  log_sum_exp runs two
passes: the max ``m``, then ``log(sum(exp(x - s))) + s`` with ``s = m`` where finite and 0
otherwise (+inf when ``m`` is +inf); the max of a row-order reduction is kept in scratch.

Work over ``REDUCE_PARALLEL_MIN`` input elements is split over the thread pool along the
first kept dim (whose chunks are then independent outputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import llvmlite.ir as ir

from .codegen import F32, I32, INT, FnBuilder, f32, i64
from .kernels import Kernel, _fb, contiguous_strides, prod
from .kernels_seq import splat, vconst, vexp, vintr, vload, vstore, vty

REDUCE_PARALLEL_MIN = 1 << 15   # input elements; below this one thread does it all
REDUCE_MAX_TASKS = 8
ROW_WIDTHS = (8, 1)             # vector widths over an output row (innermost dim kept)
ACC_WIDTHS = (32, 8, 1)         # accumulator widths over an innermost reduced dim

#: kind -> (combine, identity, pre, finish); log_sum_exp is a max pass, then this
KINDS = {
    "sum": ("add", 0.0, None, None),
    "mean": ("add", 0.0, None, "mean"),
    "max": ("max", -math.inf, None, None),
    "min": ("min", math.inf, None, None),
    "prod": ("mul", 1.0, None, None),
    "l1": ("add", 0.0, "abs", None),
    "l2": ("add", 0.0, "square", "sqrt"),
    "sum_square": ("add", 0.0, "square", None),
    "log_sum": ("add", 0.0, None, "log"),
    "log_sum_exp": ("add", 0.0, "exp", "log"),   # of exp(x - shift), then + shift
}


def collapse_reduction(shape, reduced) -> tuple[tuple, tuple]:
    """(dims, reduced flags) with size-1 dims dropped and adjacent dims of the same kind
    merged; ``((1,), (False,))`` when nothing is left (a one-element reduction)."""
    dims: list[list] = []
    for d, r in zip(shape, reduced):
        if d == 1:
            continue
        if dims and dims[-1][1] == bool(r):
            dims[-1][0] *= int(d)
        else:
            dims.append([int(d), bool(r)])
    if not dims:
        return (1,), (False,)
    return tuple(d for d, _ in dims), tuple(r for _, r in dims)


def _combine(b: ir.IRBuilder, how: str, acc, v):
    if how == "add":
        return b.fadd(acc, v)
    if how == "mul":
        return b.fmul(acc, v)
    # max / min: take v when it wins or is NaN; a NaN already in acc never loses
    t = b.select(b.fcmp_ordered(">" if how == "max" else "<", v, acc), v, acc)
    return b.select(b.fcmp_unordered("uno", v, v), v, t)


def _hreduce(b: ir.IRBuilder, how: str, v, w: int):
    """Combine the ``w`` lanes of ``v`` (halving the vector each step) into a scalar."""
    while w > 1:
        h = w // 2
        lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h))))
        hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h, w))))
        v, w = _combine(b, how, lo, hi), h
    return b.extract_element(v, ir.Constant(I32, 0))


def _shift(fb: FnBuilder, m, w: int):
    """log_sum_exp's shift: the max where it is finite, else 0 (as the numpy reference)."""
    b = fb.b
    finite = b.fcmp_ordered("<", vintr(fb, "fabs", w, [m]), vconst(w, math.inf))
    return b.select(finite, m, vconst(w, 0.0))


def _chunks(fb: FnBuilder, lo, hi, widths, body) -> None:
    """``body(j, w)`` over j in [lo, hi): blocks of widths[0], then widths[1], ... (the last
    width is 1).  Static bounds emit only the loops that run."""
    b = fb.b
    static = isinstance(lo, INT) and isinstance(hi, INT)
    if not static:
        lo = i64(lo) if isinstance(lo, INT) else lo
        hi = i64(hi) if isinstance(hi, INT) else hi
    for w in widths:
        if static:
            end = lo + (hi - lo) // w * w
            if end > lo:
                with fb.loop(lo, end, w) as j:
                    body(j, w)
        else:
            end = hi if w == 1 else b.add(lo, b.mul(b.sdiv(b.sub(hi, lo), i64(w)), i64(w)))
            with fb.loop(lo, end, w) as j:
                body(j, w)
        lo = end


def _nest(fb: FnBuilder, dims, body, xb, ob) -> None:
    """Loops over ``dims`` = [(lo, hi, x stride, out stride)], outermost first, then
    ``body(x offset, out offset)``."""
    if not dims:
        body(xb, ob)
        return
    b = fb.b
    lo, hi, xs, os_ = dims[0]
    with fb.loop(lo, hi) as i:
        _nest(fb, dims[1:], body, b.add(xb, b.mul(i, i64(xs))), b.add(ob, b.mul(i, i64(os_))))


@dataclass
class Reduce(Kernel):
    """out = finish(combine over the reduced dims of pre(x)) for a collapsed input ``shape``
    (see ``collapse_reduction``) whose dims ``reduced`` marks; out(out, x[, scratch])."""

    kind: str        # a key of KINDS
    shape: tuple     # collapsed input dims
    reduced: tuple   # per dim: reduced (True) or kept
    name: str = "reduce"

    def key(self):
        return ("reduce", self.kind, self.shape, self.reduced)

    @property
    def count(self) -> int:
        return prod(d for d, r in zip(self.shape, self.reduced) if r)

    @property
    def rows(self) -> bool:
        """Is the innermost dim kept (row order), rather than reduced?"""
        return not self.reduced[-1]

    def _split(self) -> tuple[int, int]:
        """(tasks, chunk of the first kept dim per task)."""
        kept = [d for d, r in zip(self.shape, self.reduced) if not r]
        if not kept or prod(self.shape) < REDUCE_PARALLEL_MIN or kept[0] < 2:
            return 1, kept[0] if kept else 1
        chunk = -(-kept[0] // min(REDUCE_MAX_TASKS, kept[0]))
        if self.rows and len(kept) == 1:  # splitting the row: keep the vector blocks whole
            chunk = -(-chunk // ROW_WIDTHS[0]) * ROW_WIDTHS[0]
        return -(-kept[0] // chunk), chunk

    @property
    def n_tasks(self) -> int:
        return self._split()[0]

    @property
    def scratch_bytes(self) -> int:
        """log_sum_exp in row order keeps one row of maxima per task."""
        if self.kind == "log_sum_exp" and self.rows:
            return self.n_tasks * self.shape[-1] * 4
        return 0

    def emit(self, module, fname, n_args):
        from .parallel import parallel_kernel
        if self.n_tasks == 1:
            fb = _fb(module, fname, n_args)
            if prod(d for d, r in zip(self.shape, self.reduced) if not r) > 0:
                self._task(fb, fb.args, i64(0))
            return fb.finish()
        return parallel_kernel(module, fname, n_args, self.n_tasks, self._task)

    # -- the loop nests -----------------------------------------------------------------------
    def _task(self, fb: FnBuilder, args, t) -> None:
        """The outputs of chunk ``t`` of the first kept dim."""
        b = fb.b
        args = [b.bitcast(a, F32.as_pointer()) for a in args]
        out, x = args[0], args[1]
        scratch = args[2] if self.scratch_bytes else None
        tasks, chunk = self._split()
        xst = contiguous_strides(self.shape)
        kept_sizes = [d for d, r in zip(self.shape, self.reduced) if not r]
        ost = iter(contiguous_strides(kept_sizes))
        kept, red = [], []
        for k, (d, r) in enumerate(zip(self.shape, self.reduced)):
            if r:
                red.append([0, d, xst[k], 0])
            else:
                lo, hi = 0, d
                if not kept and tasks > 1:
                    lo = b.mul(t, i64(chunk))
                    hi = b.add(lo, i64(chunk))
                    hi = b.select(b.icmp_signed("<", hi, i64(d)), hi, i64(d))
                kept.append([lo, hi, xst[k], next(ost)])
        if self.rows:
            row = kept.pop()
            self._row_order(fb, out, x, scratch, t, kept, red, row)
        else:
            self._acc_order(fb, out, x, kept, red)

    def _pre(self, fb, v, w: int, shift=None):
        pre = KINDS[self.kind][2]
        if pre == "abs":
            return vintr(fb, "fabs", w, [v])
        if pre == "square":
            return fb.b.fmul(v, v)
        if pre == "exp":
            return vexp(fb, fb.b.fsub(v, shift), w)
        return v

    def _finish(self, fb, v, w: int, m=None):
        """The output from the combined value ``v`` (log_sum_exp: and the max ``m``)."""
        b = fb.b
        fin = KINDS[self.kind][3]
        if fin == "mean":
            return b.fdiv(v, vconst(w, float(self.count)))
        if fin == "sqrt":
            return vintr(fb, "sqrt", w, [v])
        if fin == "log":
            v = vintr(fb, "log", w, [v])
        if self.kind == "log_sum_exp":
            v = b.fadd(v, _shift(fb, m, w))
            v = b.select(b.fcmp_ordered("==", m, vconst(w, math.inf)), vconst(w, math.inf), v)
        return v

    def _row_order(self, fb, out, x, scratch, t, kept, red, row) -> None:
        """Innermost dim kept: each reduced slice is combined into the output row."""
        b = fb.b
        rlo, rhi, _, _ = row
        how, ident, _, fin = KINDS[self.kind]
        lse = self.kind == "log_sum_exp"

        def per_row(xo, oo):
            def fill(dst, base, value):
                _chunks(fb, rlo, rhi, ROW_WIDTHS,
                        lambda i, w: vstore(fb, vconst(w, value), dst, b.add(base, i), w))

            def accumulate(dst, base, how, pre):
                def slice_(xr, _):
                    def body(i, w):
                        at = b.add(base, i)
                        v = pre(vload(fb, x, b.add(xr, i), w), w, i)
                        vstore(fb, _combine(b, how, vload(fb, dst, at, w), v), dst, at, w)
                    _chunks(fb, rlo, rhi, ROW_WIDTHS, body)
                _nest(fb, red, slice_, xo, i64(0))

            mb = None
            if lse:  # the row's maxima into scratch first
                mb = b.mul(t, i64(self.shape[-1]))
                fill(scratch, mb, -math.inf)
                accumulate(scratch, mb, "max", lambda v, w, i: v)

                def pre(v, w, i):
                    return self._pre(fb, v, w, _shift(fb, vload(fb, scratch, b.add(mb, i), w), w))
            else:
                def pre(v, w, i):
                    return self._pre(fb, v, w)
            fill(out, oo, ident)
            accumulate(out, oo, how, pre)
            if fin is not None or lse:
                def finish(i, w):
                    m = vload(fb, scratch, b.add(mb, i), w) if lse else None
                    at = b.add(oo, i)
                    vstore(fb, self._finish(fb, vload(fb, out, at, w), w, m), out, at, w)
                _chunks(fb, rlo, rhi, ROW_WIDTHS, finish)

        _nest(fb, kept, per_row, i64(0), i64(0))

    def _acc_order(self, fb, out, x, kept, red) -> None:
        """Innermost dim reduced: register accumulators per output element."""
        b = fb.b
        inner = red.pop()[1]
        how, ident, _, _ = KINDS[self.kind]

        def total(how, ident, pre, xo):
            widths, rem = [], inner
            for w in ACC_WIDTHS:
                if rem // w:
                    widths.append(w)
                rem %= w
            accs = {w: fb.alloca(vty(w)) for w in widths}
            for w in widths:
                b.store(vconst(w, ident), accs[w])

            def slice_(xr, _):
                def body(j, w):
                    v = pre(vload(fb, x, b.add(xr, j), w), w)
                    b.store(_combine(b, how, b.load(accs[w]), v), accs[w])
                _chunks(fb, 0, inner, ACC_WIDTHS, body)
            _nest(fb, red, slice_, xo, i64(0))
            r = f32(ident)
            for w in widths:
                v = b.load(accs[w])
                r = _combine(b, how, r, _hreduce(b, how, v, w) if w > 1 else v)
            return r

        def per_out(xo, oo):
            m = None
            if self.kind == "log_sum_exp":
                m = total("max", -math.inf, lambda v, w: v, xo)
                s = _shift(fb, m, 1)
                r = total(how, ident, lambda v, w: self._pre(fb, v, w, splat(b, s, w)), xo)
            else:
                r = total(how, ident, lambda v, w: self._pre(fb, v, w), xo)
            fb.store(self._finish(fb, r, 1, m), out, oo)

        _nest(fb, kept, per_out, i64(0), i64(0))
