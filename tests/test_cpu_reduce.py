"""The cpu backend's native reductions (galaxir/backends/cpu/kernels_reduce.py): every
reduce_* op, over the innermost axis, outer axes, several non-adjacent axes and all axes,
with and without keepdims, odd sizes that exercise the vector tails, shapes big enough to
be split over the thread pool, NaN/inf and zero-size reductions, agrees with the numpy
reference and runs natively; what the kernel cannot do (other dtypes, data-dependent axes)
still runs, on the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor
from galaxir.ir.ops.reduce import REDUCTIONS

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(5)


def data(op, shape):
    """Inputs in each op's comfortable range (positive sums for log_sum, factors near 1
    for prod, a wide spread for log_sum_exp)."""
    if op == "reduce_log_sum":
        return RNG.uniform(0.1, 1.0, shape).astype(np.float32)
    if op == "reduce_prod":
        return (RNG.uniform(0.8, 1.25, shape) * RNG.choice([-1, 1], shape)).astype(np.float32)
    if op == "reduce_log_sum_exp":
        return (RNG.standard_normal(shape) * 5).astype(np.float32)
    return RNG.uniform(-1.0, 2.0, shape).astype(np.float32)


def reduce_module(op, shape, axes, keepdims=1, noop=0, dtype="f32"):
    """One reduction of input x; axes None: no axes operand."""
    gb = GraphBuilder()
    x = gb.input("x", tensor(dtype, *shape))
    args = [x] if axes is None else [x, gb.constant(np.asarray(axes, np.int64).reshape(-1))]
    kw = {"keepdims": keepdims}
    if noop:
        kw["noop_with_empty_axes"] = 1
    gb.output(getattr(gb, op)(*args, **kw), "y")
    return gb.module()


def check(m, feeds, op, native=True):
    """Compile for cpu and numpy, compare (1e-5 relative to the outputs' magnitude), check
    where ``op`` ran; return the cpu executable."""
    cpu = gx.compile(m, target="cpu")
    got = cpu(*feeds)
    want = gx.compile(m, target="numpy", level=0)(*feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        finite = np.abs(w[np.isfinite(w)])
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale)
    if native:
        assert op in cpu.native_ops, cpu.report()
        assert op not in cpu.fallback_ops, cpu.report()
    else:
        assert op in cpu.fallback_ops, cpu.report()
    return cpu


CASES = [
    # (shape, axes): None = all axes (no operand)
    ((37,), None),
    ((37,), [0]),
    ((3, 37), [-1]),               # innermost: 32 + 5 tail
    ((5, 77), [1]),                # innermost: 2 x 32 + 8 + 5
    ((3, 37), [0]),                # outer: rows of 37 (8-wide + tail)
    ((2, 5, 13), [1]),             # middle
    ((2, 5, 13), [0, 2]),          # non-adjacent, innermost reduced
    ((4, 3, 5, 6), [0, 2]),        # non-adjacent, innermost kept
    ((4, 3, 5, 6), [1, 3]),
    ((2, 3, 4, 5), [-1, -2]),      # trailing pair (global pooling)
    ((2, 3, 4, 5), [0, 1, 3]),
    ((3, 4, 5), [0, 1, 2]),        # all axes, given
    ((6, 1, 7), [1]),              # a size-1 axis only: elementwise
    ((6, 1, 7), [1, 2]),
    ((1, 9, 1, 3), [0, 2]),
]

BIG_CASES = [                      # over the parallel threshold
    ((64, 40, 33), [1]),           # split over the outer kept dim, rows of 33
    ((96, 700), [1]),              # split over outputs, innermost reduced
    ((1, 300, 129), [1]),          # split along the one output row
    ((8, 64, 9, 9), [0, 2, 3]),    # batch-norm statistics shape
]


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("shape,axes", CASES)
def test_reduce(op, shape, axes):
    keep = int(sum(shape) % 2)  # both keepdims values over the cases
    check(reduce_module(op, shape, axes, keep), [data(op, shape)], op)


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("shape,axes", [((2, 5, 13), [1]), ((4, 3, 5, 6), [-3, -1]),
                                        ((7, 11), None)])
def test_reduce_keepdims(op, keepdims, shape, axes):
    check(reduce_module(op, shape, axes, keepdims), [data(op, shape)], op)


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("shape,axes", BIG_CASES)
def test_reduce_parallel(op, shape, axes):
    m = reduce_module(op, shape, axes, keepdims=0)
    cpu = check(m, [data(op, shape)], op)
    kern = [s.kernel for s in cpu.last.steps if getattr(s, "kernel", None) is not None]
    assert kern and kern[0].n_tasks > 1


@pytest.mark.parametrize("op", REDUCTIONS)
def test_reduce_scalar_input(op):
    check(reduce_module(op, (), None, keepdims=0), [np.asarray(data(op, (1,))[0])], op)


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_empty_axes(op, noop):
    """An empty axes constant reduces everything, or nothing with noop_with_empty_axes."""
    shape = (3, 4, 5)
    cpu = check(reduce_module(op, shape, [], keepdims=1, noop=noop), [data(op, shape)], op)
    assert cpu.run({"x": np.ones(shape, np.float32)})["y"].shape == (
        shape if noop else (1, 1, 1))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the numpy reference
@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("shape,axes", [((3, 0, 4), [1]), ((3, 0), [1]), ((0,), None),
                                        ((2, 0, 3), [0, 1])])
def test_reduce_zero_size_reduced_dim(op, shape, axes):
    """An empty reduction gives the identity through finish (0, NaN for mean, -inf, 1, ...)."""
    x = np.zeros(shape, np.float32)
    check(reduce_module(op, shape, axes, keepdims=1), [x], op)


@pytest.mark.parametrize("op", REDUCTIONS)
def test_reduce_zero_size_output(op):
    shape = (0, 5)
    check(reduce_module(op, shape, [1], keepdims=0), [np.zeros(shape, np.float32)], op)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the numpy reference
@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("shape,axes", [((4, 45), [1]), ((45, 4), [0]), ((4, 3), [1])])
def test_reduce_nan_inf(op, shape, axes):
    """NaN and +-inf as numpy has them: NaN propagates through max/min wherever it sits,
    log_sum_exp of a row holding +inf is +inf, of all -inf is -inf."""
    x = data(op, shape)
    x2 = x.reshape(-1) if axes == [1] else x.T.reshape(-1)
    row = x.shape[1] if axes == [1] else x.shape[0]
    view = x2.reshape(-1, row)
    view[0, 0] = np.nan                 # first element of a reduction
    view[1, -1] = np.nan                # last element (a scalar tail)
    view[2, row // 2] = np.inf
    view[3, :] = -np.inf
    x = (view.reshape(x.shape) if axes == [1] else view.reshape(x.T.shape).T).copy()
    check(reduce_module(op, shape, axes, keepdims=0), [x], op)


def test_reduce_float64_falls_back():
    m = reduce_module("reduce_sum", (3, 5), [1], dtype="f64")
    cpu = check(m, [RNG.standard_normal((3, 5))], "reduce_sum", native=False)
    assert "float32" in cpu.report()


def test_reduce_runtime_axes_fall_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 5))
    a = gb.input("axes", tensor("i64", 1))
    gb.output(gb.reduce_max(x, a, keepdims=1), "y")
    cpu = gx.compile(gb.module(), target="cpu")
    xv = data("reduce_max", (3, 5))
    (got,) = cpu(xv, np.asarray([1], np.int64))
    np.testing.assert_array_equal(got, xv.max(axis=1, keepdims=True))
    assert "reduce_max" in cpu.fallback_ops
    assert "axes not constant" in cpu.report()


def test_reduce_between_native_ops():
    """A reduction inside a native segment: softmax by hand (max, sub, exp, sum, div)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 6, 50))
    ax = gb.constant(np.asarray([-1], np.int64))
    e = gb.exp(gb.sub(x, gb.reduce_max(x, ax, keepdims=1)))
    gb.output(gb.div(e, gb.reduce_sum(e, ax, keepdims=1)), "y")
    cpu = check(gb.module(), [data("reduce_sum", (6, 50))], "reduce_sum")
    assert "reduce_max" in cpu.native_ops and not cpu.fallback_ops, cpu.report()
