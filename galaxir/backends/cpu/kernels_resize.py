"""The native resize kernel (lowering rule in lower_resize.py).

Resize is separable: along every resized axis, output coordinate ``o`` reads a few source
indices with fixed weights.  The lowering computes these per-axis tables in numpy with the
reference's own formulas (galaxir/reference/kernels/nn.py), indices already clamped
and turned into element offsets, and passes them as constant arrays; the kernel only
gathers and blends:

    out[o] = sum_{taps of the last resized axis} w * ( ... sum_{taps of the first} w * x[...])

Per table dim ``d`` with ``K`` taps (outputs first, then inputs, as kernels.py):

* ``off_d``: int64 ``[E, K]``, the input element offset of each tap (index * stride);
* ``w_d``: float64 ``[E, K]``, its weight (absent when the dim is a pure gather: one tap of
  weight 1, as nearest is);
* ``flag_d``: uint8 ``[E]``, 1 where the coordinate extrapolates (tf_crop_and_resize): the
  output there is ``extrapolation_value`` (absent when no coordinate does).

Blending runs in double (as the reference's float64 matmul does) and rounds once; a pure
gather moves the elements as integers of the element size (any dtype, bit-exact).  The loop
nest runs over the output in order, so the innermost loop writes contiguously; when the
last axis is not resized, it also reads contiguously (and vectorizes).  Large outputs are
split over the thread pool along the outermost dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from .codegen import F32, F64, I8, I32, I64, INT_OF_SIZE, FnBuilder, i64
from .kernels import Kernel, _f32_bits, _min, prod

PARALLEL_MIN = 1 << 15      # output elements; below this one thread does it
MAX_TASKS = 8


@dataclass(frozen=True)
class ResizeDim:
    """One dim of the (merged) output loop nest.

    ``kind`` "plain": input index = output index, ``stride`` input elements per step.
    ``kind`` "table": ``taps`` offsets per output index from the tables; ``weighted``
    when it blends (has a weight table), ``extrap`` when it has a flag table.
    """

    kind: str
    extent: int
    stride: int = 0
    taps: int = 1
    weighted: bool = False
    extrap: bool = False


@dataclass
class Resize(Kernel):
    """out = resize(x) from per-dim tables (see the module docstring).

    ``order``: the table dims (indices into ``dims``) in the order the reference resizes
    them; the first is summed innermost.  ``blend``: any table dim is weighted (float32
    data, computed in double); otherwise a pure gather of ``itemsize``-byte elements.
    """

    dims: tuple                 # of ResizeDim
    order: tuple
    itemsize: int = 4
    extrapolation_value: float = 0.0
    name: str = "resize"

    def key(self):
        return ("resize", self.dims, self.order, self.itemsize, self.extrapolation_value,
                self.split)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def blend(self) -> bool:
        return any(d.kind == "table" and d.weighted for d in self.dims)

    @property
    def has_extrap(self) -> bool:
        return any(d.kind == "table" and d.extrap for d in self.dims)

    @property
    def size(self) -> int:
        return prod(d.extent for d in self.dims)

    @property
    def split(self) -> tuple[int, int]:
        """(tasks, chunk of dim 0 per task)."""
        e0 = self.dims[0].extent if self.dims else 1
        if self.size < PARALLEL_MIN or e0 < 2:
            return 1, e0
        tasks = min(MAX_TASKS, e0)
        chunk = -(-e0 // tasks)
        return -(-e0 // chunk), chunk

    def table_args(self) -> list[tuple[int, str]]:
        """(dim, "off" | "w" | "flag") of every table argument, in argument order (after
        out and x)."""
        res = []
        for k, d in enumerate(self.dims):
            if d.kind != "table":
                continue
            res.append((k, "off"))
            if d.weighted:
                res.append((k, "w"))
            if d.extrap:
                res.append((k, "flag"))
        return res

    # -- code -------------------------------------------------------------------------------
    def emit(self, module, fname, n_args):
        tasks, chunk = self.split
        if tasks > 1:
            from .parallel import parallel_kernel

            def task(fb, args, t):
                b = fb.b
                lo = b.mul(t, i64(chunk))
                hi = _min(b, b.add(lo, i64(chunk)), i64(self.dims[0].extent))
                self._body(fb, args, lo, hi)
            return parallel_kernel(module, fname, n_args, tasks, task)
        fb = FnBuilder(module, fname, [I8.as_pointer()] * n_args)
        if self.size:
            self._body(fb, list(fb.args), i64(0), i64(self.dims[0].extent))
        return fb.finish()

    def _body(self, fb: FnBuilder, args, lo, hi):
        b = fb.b
        out, x = args[0], args[1]
        tables: dict[tuple[int, str], ir.Value] = {}
        for k, key in enumerate(self.table_args()):
            tables[key] = args[2 + k]
        blend = self.blend
        ety = F32 if blend else INT_OF_SIZE[self.itemsize]
        n = len(self.dims)
        taps: dict[int, tuple[list, list | None]] = {}   # table dim -> (offsets, weights)
        ev = None
        if self.has_extrap:     # float32 data (the lowering checks); a gather moves i32 bits
            ev = ir.Constant(F32, float(self.extrapolation_value)) if blend \
                else ir.Constant(I32, _f32_bits(self.extrapolation_value))

        def gather(j: int, off):
            """The blended value over table dims order[:j+1] (order[j] summed outermost)."""
            if j < 0:
                v = fb.load(x, off, ety)
                return b.fpext(v, F64) if blend else v
            d = self.order[j]
            offs, ws = taps[d]
            if ws is None:
                return gather(j - 1, b.add(off, offs[0]))
            acc = None
            for o, w in zip(offs, ws):
                term = b.fmul(w, gather(j - 1, b.add(off, o)))
                acc = term if acc is None else b.fadd(acc, term)
            return acc

        def level(k: int, out_off, in_off, flag):
            if k == n:
                v = gather(len(self.order) - 1, in_off)
                if blend:
                    v = b.fptrunc(v, F32)
                if flag is not None:
                    v = b.select(flag, ev, v)
                fb.store(v, out, out_off, ety)
                return
            d = self.dims[k]
            start, stop = (lo, hi) if k == 0 else (i64(0), i64(d.extent))
            with fb.loop(start, stop) as i:
                o = i if k == 0 else b.add(b.mul(out_off, i64(d.extent)), i)
                if d.kind == "plain":
                    nxt = in_off if d.stride == 0 else b.add(in_off, b.mul(i, i64(d.stride)))
                    level(k + 1, o, nxt, flag)
                else:
                    self._table_level(fb, tables, taps, k, i)
                    f = flag
                    if d.extrap:
                        fk = b.icmp_unsigned("!=", fb.load(tables[(k, "flag")], i, I8),
                                             ir.Constant(I8, 0))
                        f = fk if f is None else b.or_(f, fk)
                    level(k + 1, o, in_off, f)

        level(0, i64(0), i64(0), None)

    def _table_level(self, fb: FnBuilder, tables, taps, k: int, i) -> None:
        """Load the offsets (and weights) of output index ``i`` of table dim ``k``."""
        b = fb.b
        d = self.dims[k]
        base = b.mul(i, i64(d.taps))
        offs = [fb.load(tables[(k, "off")], b.add(base, i64(t)), I64) for t in range(d.taps)]
        ws = None
        if d.weighted:
            ws = [fb.load(tables[(k, "w")], b.add(base, i64(t)), F64) for t in range(d.taps)]
        taps[k] = (offs, ws)


__all__ = ["MAX_TASKS", "PARALLEL_MIN", "Resize", "ResizeDim"]
