"""Native kernels for the data movement ops (lowering rules in lower_data.py): slice,
expand and tile (one strided copy each), split (one strided copy per result) and pad
(constant, reflect, edge and wrap modes, negative pads crop).

They move bytes, so they work for every fixed-size element type: elements are moved as
integers of the element size, contiguous runs with ``memcpy``.  Shapes, strides, offsets
and index maps are static (the executable specializes on concrete shapes) and were
checked at lowering time, so the generated code never indexes outside its buffers.
Arguments are byte pointers: outputs first, then the input.  Large copies split their
outermost loop over the thread pool (``parallel.parallel_kernel``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import llvmlite.ir as ir
import numpy as np

from .codegen import I8, I64, INT, FnBuilder, i64, memcpy, memset
from .kernels import Kernel, _max, _min, collapse, contiguous_strides, prod
from .parallel import parallel_kernel

I8P = I8.as_pointer()
#: the integer type an element of each size is moved as
ELEM_TYPES = {1: I8, 2: ir.IntType(16), 4: ir.IntType(32), 8: I64, 16: ir.IntType(128)}
#: copies moving at least this many bytes split their outermost loop over the pool
PARALLEL_MIN_BYTES = 1 << 18
MAX_TASKS = 8
PAD_MODES = ("constant", "reflect", "edge", "wrap")


# -- helpers --------------------------------------------------------------------------------
def _v(x):
    return i64(x) if isinstance(x, INT) else x


def _off(b, base, idx, stride: int):
    """base + idx * stride (byte offsets; Python ints fold; in a dynamic module every
    shape-derived int is a run-time value)."""
    if is_dynamic_emission():
        return b.add(dim_of(b, base), b.mul(dim_of(b, idx), dim_of(b, stride)))
    if stride == 0:
        return base
    if isinstance(idx, INT):
        t = idx * stride
        if isinstance(base, INT):
            return base + t
        return base if t == 0 else b.add(base, i64(t))
    t = idx if stride == 1 else b.mul(idx, i64(stride))
    if isinstance(base, INT):
        return t if base == 0 else b.add(t, i64(base))
    return b.add(base, t)


def _sub(b, x, y):
    if isinstance(x, INT) and isinstance(y, INT):
        return x - y
    return b.sub(_v(x), _v(y))


def _at(fb: FnBuilder, base, off):
    """``base + off`` bytes (off an int or an i64 value)."""
    return fb.b.gep(base, [_v(off)], inbounds=True)


def _align(itemsize: int) -> int:
    return min(itemsize, 8)


def _copy_elem(fb: FnBuilder, dst, src, itemsize: int) -> None:
    ty = ELEM_TYPES[itemsize].as_pointer()
    b = fb.b
    v = b.load(b.bitcast(src, ty), align=_align(itemsize))
    b.store(v, b.bitcast(dst, ty), align=_align(itemsize))


def _fill(fb: FnBuilder, dst, count, pattern: bytes, itemsize: int) -> None:
    """Store ``count`` elements (an int or an i64 value) whose bytes are ``pattern``."""
    if isinstance(count, INT) and count <= 0:
        return
    b = fb.b
    if len(set(pattern)) == 1:
        nbytes = count * itemsize if isinstance(count, INT) else b.mul(count, i64(itemsize))
        memset(fb, dst, pattern[0], nbytes)
        return
    ty = ELEM_TYPES[itemsize]
    val = int.from_bytes(pattern, sys.byteorder)
    if val >= 1 << (8 * itemsize - 1):
        val -= 1 << (8 * itemsize)
    p = b.bitcast(dst, ty.as_pointer())
    with fb.loop(0, count) as k:
        b.store(ir.Constant(ty, val), b.gep(p, [k], inbounds=True), align=_align(itemsize))


def _table(fb: FnBuilder, values: Sequence[int]):
    from .library import param_block
    g = param_block(fb.module, values, "datamap")
    with fb.b.goto_block(fb.entry):     # dominates every use
        return fb.b.bitcast(g, I64.as_pointer())


def _load_table(fb: FnBuilder, table, i):
    return fb.b.load(fb.b.gep(table, [_v(i)], inbounds=True))


def _split_plan(outer: int, nbytes: int) -> tuple[int, int]:
    """(tasks, chunk of the outermost loop per task)."""
    if nbytes < PARALLEL_MIN_BYTES or outer < 2:
        return 1, outer
    tasks = min(MAX_TASKS, outer)
    chunk = -(-outer // tasks)
    return -(-outer // chunk), chunk


from .codegen import dim_of, is_dynamic_emission  # noqa: E402


def _emit(module, fname: str, n_args: int, body, outer: int | None, nbytes: int):
    """Define ``fname``; ``body(fb, args, lo, hi)`` emits the work for rows [lo, hi) of the
    outermost loop (None, None: all of it).  ``outer`` None: never split."""
    tasks, chunk = _split_plan(outer or 0, nbytes) if outer else (1, 0)
    if tasks > 1 or (outer and is_dynamic_emission()):  # dynamic: the split is run-time data
        def task(tb, args, t):
            b = tb.b
            lo = b.mul(t, tb.dim(chunk))
            hi = _min(b, b.add(lo, tb.dim(chunk)), tb.dim(outer))
            body(tb, args, lo, hi)
        return parallel_kernel(module, fname, n_args, tasks, task)
    fb = FnBuilder(module, fname, [I8P] * n_args)
    body(fb, list(fb.args), None, None)
    return fb.finish()


# -- strided copies -------------------------------------------------------------------------
def copy_nest(shape: Sequence[int], in_strides: Sequence[int], itemsize: int):
    """(shape, out byte strides, in byte strides) of a copy into a contiguous output of
    ``shape`` reading the input at element ``in_strides``, with dims merged."""
    shape, (ost, ist) = collapse(shape, [contiguous_strides(shape), list(in_strides)])
    return list(shape), [s * itemsize for s in ost], [s * itemsize for s in ist]


def _emit_copy(fb: FnBuilder, out, src, shape, ost, ist, itemsize, oo=0, io=0, lo=None, hi=None):
    """out[oo + idx.ost] = src[io + idx.ist] for idx over ``shape`` (dim 0 over [lo, hi)
    when given); an innermost dim contiguous on both sides is one memcpy."""
    b = fb.b
    run = ost[-1] == itemsize and ist[-1] == itemsize
    nloops = len(shape) - 1 if run else len(shape)

    def rec(d, ooff, ioff):
        if d == nloops:
            if run:
                memcpy(fb, _at(fb, out, ooff), _at(fb, src, ioff), shape[-1] * itemsize)
            else:
                _copy_elem(fb, _at(fb, out, ooff), _at(fb, src, ioff), itemsize)
            return
        start, stop = (lo, hi) if (d == 0 and lo is not None) else (0, shape[d])
        with fb.loop(start, stop) as i:
            rec(d + 1, _off(b, ooff, i, ost[d]), _off(b, ioff, i, ist[d]))

    rec(0, oo, io)


def _outer_of(shape, ost, ist, itemsize) -> int | None:
    """The outermost loop's trip count when the nest has a loop around its innermost copy."""
    run = ost[-1] == itemsize and ist[-1] == itemsize
    return shape[0] if len(shape) - (1 if run else 0) >= 1 else None


@dataclass
class StridedCopy(Kernel):
    """out (contiguous, ``shape``)[idx] = x[in_offset + sum(idx * in_strides)] (element
    units; strides may be 0 (broadcast) or negative).  Slice, expand and tile."""

    shape: tuple
    in_strides: tuple
    in_offset: int
    itemsize: int
    name: str = "slice"

    def key(self):
        return ("strided_copy", self.shape, self.in_strides, self.in_offset, self.itemsize)

    def emit(self, module, fname, n_args):
        size = self.itemsize
        if prod(self.shape) == 0:
            fb = FnBuilder(module, fname, [I8P] * n_args)
            return fb.finish()
        shape, ost, ist = copy_nest(self.shape, self.in_strides, size)
        io = self.in_offset * size

        def body(fb, args, lo, hi):
            _emit_copy(fb, args[0], args[1], shape, ost, ist, size, 0, io, lo, hi)

        return _emit(module, fname, n_args, body, _outer_of(shape, ost, ist, size),
                     prod(self.shape) * size)


@dataclass
class SplitCopy(Kernel):
    """Several strided copies of one input, one per output: ``pieces`` holds (shape,
    in_strides, in_offset) per output, in element units (split)."""

    pieces: tuple
    itemsize: int
    name: str = "split"

    @property
    def n_results(self) -> int:
        return len(self.pieces)

    def key(self):
        return ("split_copy", self.pieces, self.itemsize)

    def emit(self, module, fname, n_args):
        size = self.itemsize
        fb = FnBuilder(module, fname, [I8P] * n_args)
        src = fb.args[len(self.pieces)]
        for k, (shape, strides, offset) in enumerate(self.pieces):
            if prod(shape) == 0:
                continue
            sh, ost, ist = copy_nest(shape, strides, size)
            _emit_copy(fb, fb.args[k], src, sh, ost, ist, size, 0, offset * size)
        return fb.finish()


# -- pad ------------------------------------------------------------------------------------
def pad_axes(in_shape: Sequence[int], before: Sequence[int], after: Sequence[int], mode: str):
    """Per axis [dim, pad_before, kept, pad_after, crop, identity, index_map]: negative pads
    crop ``crop`` elements at the start (and some at the end) leaving ``kept``; then
    ``pad_before`` and ``pad_after`` are added.  ``index_map`` (non-constant modes) gives
    the input index of every output index along the axis (numpy's np.pad on the indices,
    so exactly the reference's rule).  Adjacent identity axes are merged.  Raises
    ValueError for what the reference cannot do either (cropping more than the dim,
    extending an empty axis in a non-constant mode)."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r}")
    axes = []
    for d, bf, af in zip(in_shape, before, after):
        d, bf, af = int(d), int(bf), int(af)
        crop = max(-bf, 0)
        n = d - crop - max(-af, 0)
        if n < 0:
            raise ValueError("negative pads remove more than the whole axis")
        pb, pe = max(bf, 0), max(af, 0)
        ident = pb == 0 and pe == 0 and n == d
        m = None
        if not ident and mode != "constant":
            m = tuple(int(i) for i in np.pad(np.arange(crop, crop + n, dtype=np.int64),
                                             (pb, pe), mode=mode))
        axes.append([d, pb, n, pe, crop, ident, m])
    merged: list = []
    for ax in axes:
        if ax[5] and merged and merged[-1][5]:
            merged[-1][0] *= ax[0]
            merged[-1][2] *= ax[0]
        else:
            merged.append(list(ax))
    return merged


@dataclass
class Pad(Kernel):
    """out = pad(x, before, after) (element counts per axis, negative = crop) in ``mode``;
    ``fill`` holds the bytes of the constant (constant mode).  Every output byte is written
    once: in constant mode border slabs are filled (memset when the constant's bytes are
    all equal) and kept rows copied with memcpy; other modes read border elements through
    a per-axis index map."""

    in_shape: tuple
    before: tuple
    after: tuple
    mode: str
    fill: bytes
    itemsize: int
    name: str = "pad"

    def key(self):
        return ("pad", self.in_shape, self.before, self.after, self.mode,
                self.fill if self.mode == "constant" else b"", self.itemsize)

    def emit(self, module, fname, n_args):
        size = self.itemsize
        axes = pad_axes(self.in_shape, self.before, self.after, self.mode)
        out_dims = [pb + n + pe for _, pb, n, pe, _, _, _ in axes]
        total = prod(out_dims)
        nonid = [k for k, ax in enumerate(axes) if not ax[5]]
        if total == 0 or not nonid:
            def body(fb, args, lo, hi):
                if total:
                    memcpy(fb, args[0], args[1], total * size)
            return _emit(module, fname, n_args, body, None, 0)
        p = nonid[-1]
        blk = prod(out_dims[p + 1:]) * size            # bytes of a block after axis p
        in_dims = [ax[0] for ax in axes]
        ist = [prod(in_dims[k + 1:]) * size for k in range(len(axes))]
        ost = [prod(out_dims[k + 1:]) * size for k in range(len(axes))]
        const = self.mode == "constant"
        fill = self.fill

        def body(fb, args, lo, hi):
            b = fb.b
            out, x = args[0], args[1]
            tables = {}

            def table(k):
                if k not in tables:
                    tables[k] = _table(fb, axes[k][6])
                return tables[k]

            def rec(d, ooff, ioff, lo, hi):
                _, pb, n, pe, crop, ident, _m = axes[d]
                od = pb + n + pe
                start, stop = (lo, hi) if lo is not None else (0, od)
                if d == p:
                    if const:
                        _fill(fb, _at(fb, out, ooff), pb * blk // size, fill, size)
                    elif pb:
                        with fb.loop(0, pb) as j:
                            src = _load_table(fb, table(d), j)
                            memcpy(fb, _at(fb, out, _off(b, ooff, j, blk)),
                                   _at(fb, x, _off(b, ioff, src, blk)), blk)
                    if n:
                        memcpy(fb, _at(fb, out, _off(b, ooff, pb, blk)),
                               _at(fb, x, _off(b, ioff, crop, blk)), n * blk)
                    if const:
                        _fill(fb, _at(fb, out, _off(b, ooff, pb + n, blk)), pe * blk // size,
                              fill, size)
                    elif pe:
                        with fb.loop(pb + n, od) as j:
                            src = _load_table(fb, table(d), j)
                            memcpy(fb, _at(fb, out, _off(b, ooff, j, blk)),
                                   _at(fb, x, _off(b, ioff, src, blk)), blk)
                    return
                if ident:
                    with fb.loop(start, stop) as i:
                        rec(d + 1, _off(b, ooff, i, ost[d]), _off(b, ioff, i, ist[d]), None, None)
                elif const:
                    slab = ost[d] // size
                    head_end = _min(b, stop, pb)
                    cnt = _max(b, _sub(b, head_end, start), 0)
                    _fill_dyn(fb, _at(fb, out, _off(b, ooff, start, ost[d])), cnt, slab, fill, size)
                    with fb.loop(_max(b, start, pb), _min(b, stop, pb + n)) as i:
                        src = b.add(i, i64(crop - pb))
                        rec(d + 1, _off(b, ooff, i, ost[d]), _off(b, ioff, src, ist[d]), None, None)
                    tail = _max(b, start, pb + n)
                    cnt = _max(b, _sub(b, stop, tail), 0)
                    _fill_dyn(fb, _at(fb, out, _off(b, ooff, tail, ost[d])), cnt, slab, fill, size)
                else:
                    with fb.loop(start, stop) as i:
                        src = _load_table(fb, table(d), i)
                        rec(d + 1, _off(b, ooff, i, ost[d]), _off(b, ioff, src, ist[d]), None, None)

            rec(0, 0, 0, lo, hi)

        outer = out_dims[0] if p >= 1 else None
        return _emit(module, fname, n_args, body, outer, total * size)


def _fill_dyn(fb, dst, count, slab: int, pattern: bytes, itemsize: int) -> None:
    """Fill ``count`` slabs of ``slab`` elements (count an int or an i64 value)."""
    if isinstance(count, INT):
        _fill(fb, dst, count * slab, pattern, itemsize)
        return
    _fill(fb, dst, fb.b.mul(count, i64(slab)) if slab != 1 else count, pattern, itemsize)


__all__ = ["ELEM_TYPES", "PAD_MODES", "Pad", "SplitCopy", "StridedCopy", "copy_nest", "pad_axes"]
