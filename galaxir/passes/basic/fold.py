"""Constant folding (through the numpy reference kernels) and shape folding.

Folding evaluates an op whose operands are all constants with its reference kernel
(galaxir/reference, which the numpy backend runs too), so the folded value is exactly what
the reference would compute at run time.  A size cap (``fold_max_elements``, default 4M
elements) keeps folding from blowing a model up; ``constant_of_shape`` and ``expand`` of
constants fold to broadcast views (a splat costs one element of memory whatever its shape).

A fold must not grow the model: a constant is stored whole (a .gxm file, the text form,
the ONNX export), so a result much larger than the data it was computed from -- a
ConstantOfShape or Expand splat of a weight, a Tile, a Range -- stays an op
(``fold_max_growth``: a result over ``GROWTH_FLOOR_BYTES`` and more than that many times
the bytes of its inputs).  The model-zoo files build every weight with ConstantOfShape:
folded, an 80 KB ResNet-50 became a 102 MB .gxm.  The cpu backend still folds them when it
compiles, and ``gx.compile`` optimizes without the limit (its weights stay in memory), so
nothing is lost at run time.
"""
from __future__ import annotations

import numpy as np

from ...ir.core import Operation, Value
from ...ir.traits import ConstantLike, SizeFromValues
from ...ir.types import DType, TensorType, types_compatible
from ...reference.evaluator import evaluate_op
from ..rewrite import Const, P, RewritePattern, Rewriter, Var, const_array, is_pure, pattern

DEFAULT_MAX_ELEMENTS = 1 << 22
#: A folded result may be this many times larger than the data of its inputs ...
DEFAULT_MAX_GROWTH = 16
#: ... unless it is this small anyway (shape arithmetic, small tables).
GROWTH_FLOOR_BYTES = 16 << 10

# Op traits (galaxir/ir/traits.py) decide what folds: ``Pure`` ops only; never a
# ``ConstantLike`` op (nothing to fold); a ``SizeFromValues`` op (its output size depends on
# operand values) only when its result type is static, so the size cap is checked first.


class FoldConstant(RewritePattern):
    """Replace an op whose operands are all constants by constants of its results."""

    name = "fold-constant"
    root = None
    benefit = 10

    def __init__(self, max_elements: int = DEFAULT_MAX_ELEMENTS,
                 max_growth: float = DEFAULT_MAX_GROWTH):
        self.max_elements = max_elements
        self.max_growth = max_growth

    def _grows(self, op: Operation, args: list) -> bool:
        """Whether folding would store much more than the inputs hold (see module doc)."""
        out = 0
        for r in op.results:
            n = r.type.numel
            if n is None:
                return False  # decided after evaluation, by _grows_values
            out += n * r.type.dtype.numpy.itemsize
        return self._too_big(out, args, op)

    def _too_big(self, out_bytes: int, args: list, op: Operation) -> bool:
        if out_bytes <= GROWTH_FLOOR_BYTES:
            return False
        into = sum(_data_bytes(a) for a in args if a is not None)
        for v in op.attrs.values():
            if isinstance(v, np.ndarray):
                into += _data_bytes(v)
        return out_bytes > self.max_growth * max(into, 1)

    def match_and_rewrite(self, op: Operation, rw: Rewriter) -> bool:
        if op.has_trait(ConstantLike) or op.regions or not op.results:
            return False
        args = []
        for v in op.operands:
            if v is None:
                args.append(None)
                continue
            arr = const_array(v)
            if arr is None:
                return False
            args.append(arr)
        if not is_pure(op):
            return False
        if not all(isinstance(r.type, TensorType) for r in op.results):
            return False
        if self._grows(op, args):
            return False
        values = self._splat(op, args)
        if values is None:
            for r in op.results:
                n = r.type.numel
                if n is None and op.has_trait(SizeFromValues):
                    return False
                if n is not None and n > self.max_elements:
                    return False
            values = evaluate_op(op, args)
            if values is None:
                return False
        if any(not isinstance(val, np.ndarray) for val in values) or \
                self._too_big(sum(val.nbytes for val in values), args, op):
            return False
        for r, val in zip(op.results, values):
            if val.size > self.max_elements and any(s != 0 for s in val.strides):
                return False
            if not types_compatible(r.type, TensorType(DType.from_numpy(val.dtype), val.shape)):
                return False
        rw._begin(op, self.name, ())
        new = [rw.constant(_readonly(val)) for val in values]
        rw.replace_op(op, new)
        return True

    def _splat(self, op: Operation, args: list) -> list | None:
        """constant_of_shape / expand of constants as zero-copy broadcast views."""
        r = op.results[0]
        if op.name == "constant_of_shape" and args and args[0] is not None:
            shape = tuple(int(d) for d in np.asarray(args[0]).reshape(-1))
            if any(d < 0 for d in shape):
                return None
            value = op.attr("value")
            dt = r.type.dtype.numpy
            scalar = np.zeros((), dt) if value is None else np.asarray(value).reshape(-1)[:1].astype(dt).reshape(())
            return [np.broadcast_to(scalar, shape)]
        if op.name == "expand" and len(args) == 2 and args[0] is not None and args[1] is not None:
            try:
                shape = np.broadcast_shapes(args[0].shape, tuple(int(d) for d in np.asarray(args[1]).reshape(-1)))
            except ValueError:
                return None
            return [np.broadcast_to(args[0].astype(r.type.dtype.numpy, copy=False), shape)]
        return None


def _data_bytes(arr) -> int:
    """Bytes of data behind ``arr``: a broadcast view counts only the elements it holds."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        return arr.size * 8
    held = 1
    for n, st in zip(arr.shape, arr.strides):
        if st != 0:
            held *= n
    return held * arr.itemsize


def _readonly(arr: np.ndarray) -> np.ndarray:
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


# -- shape folding --------------------------------------------------------------------------
def _dims(v: Value) -> list | None:
    t = v.type
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in t.shape]


def _shape_vector(shape_op: Operation) -> list | None:
    """The dims a ``shape`` op returns, None where not static (or None for unknown rank)."""
    dims = _dims(shape_op.operand(0))
    if dims is None:
        return None
    rank = len(dims)
    start = shape_op.attr("start", 0) or 0
    end = shape_op.attr("end", None)
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = rank if end is None else max(0, min(rank, end + rank if end < 0 else end))
    return dims[start:end]


def _int64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


@pattern(P.shape(Var("x")), name="fold-shape")
def fold_shape(m):
    """shape(x) of static dims -> a constant."""
    dims = _shape_vector(m.root)
    if dims is None or any(d is None for d in dims):
        return m.fail("the shape has dynamic dims")
    return m.b.constant(_int64(dims))


@pattern(P.size(Var("x")), name="fold-size")
def fold_size(m):
    """size(x) of a static shape -> a constant."""
    t = m.x.type
    if not isinstance(t, TensorType) or t.numel is None:
        return m.fail("the shape is not static")
    return m.b.constant(np.asarray(t.numel, dtype=np.int64))


@pattern(P.gather(P.shape(Var()).named("s"), Const(name="i")), name="fold-shape-gather")
def fold_shape_gather(m):
    """gather(shape(x), i) picking static dims -> a constant (the rest may be symbolic)."""
    if (m.root.attr("axis", 0) or 0) != 0:
        return None
    dims = _shape_vector(m.s)
    if dims is None:
        return None
    idx = np.asarray(m.array("i")).astype(np.int64)
    n = len(dims)
    if np.any(idx < -n) or np.any(idx >= n):
        return m.fail("index out of range")
    picked = [dims[int(k)] for k in idx.reshape(-1)]
    if any(d is None for d in picked):
        return m.fail("a picked dim is dynamic")
    return m.b.constant(_int64(picked).reshape(idx.shape))


@pattern(P.slice(P.shape(Var()).named("s"), Const(name="starts"), Const(name="ends"), ...),
         name="fold-shape-slice")
def fold_shape_slice(m):
    """slice(shape(x), ...) picking static dims -> a constant."""
    dims = _shape_vector(m.s)
    if dims is None:
        return None
    ops = m.root.operands
    axes = const_array(ops[3]) if len(ops) > 3 and ops[3] is not None else np.zeros(1, np.int64)
    steps = const_array(ops[4]) if len(ops) > 4 and ops[4] is not None else np.ones(1, np.int64)
    if axes is None or steps is None:
        return None
    if axes.size != 1 or int(axes.reshape(-1)[0]) not in (0, -1) or steps.size != 1:
        return None
    idx = onnx_slice_indices(len(dims), int(m.array("starts").reshape(-1)[0]),
                             int(m.array("ends").reshape(-1)[0]), int(steps.reshape(-1)[0]))
    if idx is None:
        return None
    picked = [dims[k] for k in idx]
    if any(d is None for d in picked):
        return m.fail("a picked dim is dynamic")
    return m.b.constant(_int64(picked))


def onnx_slice_indices(dim: int, start: int, end: int, step: int) -> list[int] | None:
    """The indices ONNX Slice takes along an axis of size ``dim``."""
    if step == 0:
        return None
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = max(0, min(dim, start))
        end = max(0, min(dim, end))
    else:
        start = max(-1, min(dim - 1, start))
        end = max(-1, min(dim - 1, end))
    return list(range(start, end, step))


SHAPE_PATTERNS = [fold_shape, fold_size, fold_shape_gather, fold_shape_slice]


def fold_patterns(max_elements: int = DEFAULT_MAX_ELEMENTS,
                  max_growth: float = DEFAULT_MAX_GROWTH) -> list[RewritePattern]:
    return [FoldConstant(max_elements, max_growth)]
