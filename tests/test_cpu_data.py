"""The cpu backend's data movement kernels (galaxir/backends/cpu/kernels_data.py, rules in
lower_data.py): slice, pad (every mode, negative pads), split, tile and expand run
natively for every fixed-size element type and give exactly the numpy reference's bytes
(odd shapes, negative and clamped slice indices, ranks 1-5, copies large enough to split
over the thread pool); what they cannot do (runtime indices, what the reference rejects)
still runs, on the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(5)

#: every test runs each case on these element types (one module, one output per type)
DTYPES = ("f32", "i64", "u8", "bool")
#: more element sizes (2, 8 and 16 bytes, sub-byte types stored one per byte)
MORE_DTYPES = ("f16", "i16", "i8", "f64", "c128", "u32", "bf16", "i4")
I64MAX, I64MIN = 2**63 - 1, -2**63


def data(short: str, shape) -> np.ndarray:
    dt = gx.ir.types.DType.from_short(short).numpy
    if short == "bool":
        return RNG.random(shape) < 0.5
    if short in ("c64", "c128"):
        return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return RNG.integers(max(info.min, -10**12), min(info.max, 10**12), size=shape,
                            endpoint=True).astype(dt)
    if short == "i4":
        return RNG.integers(-8, 8, size=shape).astype(dt)
    return RNG.standard_normal(shape).astype(dt)


def run_both(m, feeds, native_op, level=None):
    """Compile for cpu and numpy, compare every output byte for byte, return the cpu
    executable (native_op must have run natively).  ``level=0`` keeps ops that O1 would
    simplify away (an expand or pad that changes nothing)."""
    cpu = gx.compile(m, target="cpu", level=level)
    got = cpu(*feeds)
    want = gx.compile(m, target="numpy", level=0)(*feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        assert g.tobytes() == w.tobytes(), (g, w)
    if native_op is not None:
        assert native_op in cpu.native_ops, cpu.report()
        assert native_op not in cpu.fallback_ops, cpu.report()
    return cpu


def per_dtype(shape, build, dtypes=DTYPES, native_op=None, level=None):
    """One module: for each dtype an input of ``shape`` and ``build(gb, x, short)``'s
    output(s)."""
    gb = GraphBuilder()
    feeds = []
    for k, short in enumerate(dtypes):
        x = gb.input(f"x{k}", tensor(short, *shape))
        feeds.append(data(short, shape))
        ys = build(gb, x, short)
        for j, y in enumerate(ys if isinstance(ys, tuple) else (ys,)):
            gb.output(y, f"y{k}_{j}")
    return run_both(gb.module(), feeds, native_op, level)


def ints(v):
    return None if v is None else np.asarray(v, np.int64)


# -- slice --------------------------------------------------------------------------------------
SLICE_CASES = [
    # (shape, starts, ends, axes, steps)
    ((10,), [2], [8], None, None),
    ((10,), [-3], [100], [0], [1]),
    ((10,), [9], [-100], [0], [-1]),                    # reversed
    ((10,), [8], [1], [0], [-3]),
    ((10,), [I64MAX], [I64MIN], [0], [-1]),             # clamped both ways, reversed
    ((7, 9), [1, 2], [6, -1], [0, 1], [2, 3]),
    ((7, 9), [-1], [-8], [1], [-2]),                    # inner negative step
    ((3, 4, 5), [1, 0, 0], [3, 4, 5], None, None),      # one contiguous block (one memcpy)
    ((3, 4, 5), [1], [3], [-1], None),                  # inner contiguous runs
    ((3, 4, 5), [4, 1], [0, 100], [2, 0], [-1, 1]),
    ((3, 4, 5), [1, -100], [2, I64MAX], [1, 2], None),  # one row, clamped inner
    ((2, 3, 4, 5), [0, 1], [2, 3], [1, 3], None),
    ((2, 3, 4, 5), [1, 0, 3], [2, 3, 0], [0, 1, 2], [1, 2, -2]),
    ((2, 3, 4, 5, 6), [1, -2, 0, 5], [2, -100, 4, 0], [0, 1, 3, 4], [1, -1, 2, -2]),
    ((4, 5), [3], [1], [0], None),                      # empty result
    ((5, 6), [10], [20], [0], None),                    # start past the end: empty
    ((5, 6), [-100, 2], [3, 3], [0, 1], None),          # one column
    ((1, 8, 1, 3), [1, 0], [7, 1], [1, 3], [3, 1]),     # size-1 dims
    ((6, 7), [1], [I64MAX], [1], None),
]


@pytest.mark.parametrize("shape,starts,ends,axes,steps", SLICE_CASES)
def test_slice(shape, starts, ends, axes, steps):
    def build(gb, x, short):
        return gb.slice(x, gb.constant(ints(starts)), gb.constant(ints(ends)),
                        gb.constant(ints(axes)) if axes is not None else None,
                        gb.constant(ints(steps)) if steps is not None else None)
    per_dtype(shape, build, native_op="slice")


def test_slice_more_dtypes():
    def build(gb, x, short):
        return gb.slice(x, gb.constant(ints([2, -1])), gb.constant(ints([0, 0])),
                        gb.constant(ints([0, 1])), gb.constant(ints([-1, -2])))
    per_dtype((3, 7), build, MORE_DTYPES, native_op="slice")


def test_slice_int32_indices_and_inner_runs():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 5, 6, 7))
    s = np.array([1, 2], np.int32)
    gb.output(gb.slice(x, gb.constant(s), gb.constant(np.array([4, 6], np.int32)),
                       gb.constant(np.array([0, 2], np.int32))), "y")
    run_both(gb.module(), [data("f32", (5, 6, 7))], "slice")


@pytest.mark.parametrize("steps", [[1, 1, 1], [1, 1, 2], [1, -1, -1]])
def test_slice_large_runs_over_the_pool(steps):
    shape = (64, 96, 40)

    def build(gb, x, short):
        st = [2, 90, 38] if steps[1] < 0 else [2, 3, 1]
        en = [60, 5, 1] if steps[1] < 0 else [60, 90, 39]
        return gb.slice(x, gb.constant(ints(st)), gb.constant(ints(en)), None,
                        gb.constant(ints(steps)))
    per_dtype(shape, build, ("f32", "u8"), native_op="slice")


def test_slice_runtime_starts_fall_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 6, 5))
    s = gb.input("s", tensor("i64", 1))
    gb.output(gb.slice(x, s, gb.constant(ints([5])), gb.constant(ints([0]))), "y")
    cpu = gx.compile(gb.module(), target="cpu")
    xv = data("f32", (6, 5))
    (y,) = cpu(xv, np.array([2], np.int64))
    np.testing.assert_array_equal(y, xv[2:5])
    assert "slice" in cpu.fallback_ops


def test_slice_then_native_consumer():
    """A sliced value feeding a native elementwise op (one native segment)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 9))
    a = gb.slice(x, gb.constant(ints([0])), gb.constant(ints([4])), gb.constant(ints([1])))
    b = gb.slice(x, gb.constant(ints([8])), gb.constant(ints([4])), gb.constant(ints([1])),
                 gb.constant(ints([-1])))
    gb.output(gb.add(a, b), "y")
    cpu = run_both(gb.module(), [data("f32", (4, 9))], "slice")
    assert not cpu.fallback_ops, cpu.report()


# -- pad ----------------------------------------------------------------------------------------
PAD_CASES = [
    # (shape, pads, axes)
    ((5,), [2, 3], None),
    ((4, 6), [1, 2, 3, 1], None),
    ((2, 3, 4, 5), [0, 0, 1, 1, 0, 0, 1, 1], None),      # NCHW spatial
    ((2, 3, 4, 5), [1, 0, 0, 0, 0, 0, 0, 2], None),      # outermost and innermost only
    ((3, 4, 5), [0, 0, 2, 0, 0, 3], None),               # innermost only
    ((3, 4, 5), [0, 2, 0, 0, 1, 0], None),               # middle only: blocks of 5
    ((3, 4, 5), [1, 2, 2, 1], [1, -1]),                  # axes operand
    ((2, 1, 3, 2, 3), [0, 1, 1, 0, 2, 0, 2, 0, 1, 1], None),  # rank 5, a size-1 axis
    ((3, 4), [5, 0, 7, 9], None),                        # wider than the dims
    ((6, 7), [-1, 2, -2, -3], None),                     # negative pads crop
    ((5, 6), [-2, -1, 1, 3], None),
    ((5, 6), [2, -3, -1, 2], None),                      # crop one end, pad the other
    ((3, 4), [0, 0, 0, 0], None),                        # nothing to do
    ((4, 5), [-2, 0, -2, 0], None),                      # cropped to nothing
    ((1, 1), [1, 2, 3, 4], None),
]


def _pad_value(short):
    return {"f32": np.float32(7.5), "i64": np.int64(-3), "u8": np.uint8(200),
            "bool": np.bool_(True)}.get(short)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("shape,pads,axes", PAD_CASES)
def test_pad(mode, shape, pads, axes):
    def build(gb, x, short):
        cv = gb.constant(np.asarray(_pad_value(short))) if mode == "constant" else None
        ax = gb.constant(ints(axes)) if axes is not None else None
        return gb.pad(x, gb.constant(ints(pads)), cv, ax, mode=mode)
    per_dtype(shape, build, native_op="pad", level=0 if not any(pads) else None)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_more_dtypes(mode):
    def build(gb, x, short):
        return gb.pad(x, gb.constant(ints([1, 2, 2, 1])), mode=mode)
    per_dtype((3, 4), build, MORE_DTYPES, native_op="pad")


def test_pad_constant_values():
    """Zero (memset), equal bytes (memset), mixed bytes (stores) and NaN fills."""
    gb = GraphBuilder()
    feeds = []
    for k, (short, v) in enumerate([("f32", None), ("f32", np.float32(np.nan)),
                                    ("f32", np.float32(-0.0)), ("i64", np.int64(-1)),
                                    ("i16", np.int16(0x1234)), ("u8", np.uint8(0)),
                                    ("c128", np.complex128(1 - 2j)), ("f16", np.float16(3))]):
        x = gb.input(f"x{k}", tensor(short, 3, 5))
        feeds.append(data(short, (3, 5)))
        cv = gb.constant(np.asarray(v)) if v is not None else None
        gb.output(gb.pad(x, gb.constant(ints([1, 2, 3, 4])), cv, mode="constant"), f"y{k}")
    run_both(gb.module(), feeds, "pad")


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("shape,pads", [
    ((3, 40, 60, 70), [0, 1, 2, 3, 0, 2, 1, 4]),     # the pool splits an unpadded axis
    ((41, 60, 70), [3, 0, 1, 2, 1, 0]),              # ... a padded one
    ((30, 50, 90), [-2, 3, 0, 1, -4, 2]),            # ... a cropped one
])
def test_pad_large_over_the_pool(mode, shape, pads):
    def build(gb, x, short):
        return gb.pad(x, gb.constant(ints(pads)), mode=mode)
    per_dtype(shape, build, ("f32",), native_op="pad")


def test_pad_empty_axis_constant():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 0, 3))
    gb.output(gb.pad(x, gb.constant(ints([1, 1, 2, 0])), gb.constant(np.float32(4.0))), "y")
    run_both(gb.module(), [np.zeros((0, 3), np.float32)], "pad")


def test_pad_reflect_of_empty_axis_falls_back():
    """numpy cannot extend an empty axis by reflection: neither can the cpu backend."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 0, 3))
    gb.output(gb.pad(x, gb.constant(ints([1, 0, 0, 0])), mode="reflect"), "y")
    cpu = gx.compile(gb.module(), target="cpu")
    assert "pad" in cpu.fallback_ops
    with pytest.raises(Exception):
        cpu(np.zeros((0, 3), np.float32))


def test_pad_runtime_pads_fall_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 4))
    p = gb.input("p", tensor("i64", 4))
    y = gb.pad(x, p, mode="edge")
    gb.output(y, "y")
    cpu = gx.compile(gb.module(), target="cpu")
    xv = data("f32", (3, 4))
    pv = np.array([1, 0, 0, 2], np.int64)
    (got,) = cpu(xv, pv)
    np.testing.assert_array_equal(got, np.pad(xv, ((1, 0), (0, 2)), mode="edge"))
    assert "pad" in cpu.fallback_ops


def test_pad_runtime_value_reflect_is_native():
    """constant_value only matters in constant mode."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 4))
    v = gb.input("v", tensor("f32"))
    gb.output(gb.pad(x, gb.constant(ints([1, 1, 1, 1])), v, mode="reflect"), "y")
    run_both(gb.module(), [data("f32", (3, 4)), np.float32(2.0)], "pad")


def test_pad_runtime_value_constant_falls_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 4))
    v = gb.input("v", tensor("f32"))
    gb.output(gb.pad(x, gb.constant(ints([1, 1, 1, 1])), v, mode="constant"), "y")
    cpu = run_both(gb.module(), [data("f32", (3, 4)), np.float32(2.0)], None)
    assert "pad" in cpu.fallback_ops


# -- split --------------------------------------------------------------------------------------
SPLIT_CASES = [
    # (shape, axis, sizes, number of results)
    ((6, 4), 0, None, 3),
    ((5, 7), 1, None, 3),            # num_outputs: the last piece is smaller
    ((2, 9, 3), -2, [2, 0, 7], 3),   # an empty piece
    ((4, 3, 2, 5), 3, [1, 4], 2),
    ((3, 1, 8), 2, [8], 1),
    ((2, 3, 2, 2, 4), 1, [1, 2], 2),
]


@pytest.mark.parametrize("shape,axis,sizes,n", SPLIT_CASES)
def test_split(shape, axis, sizes, n):
    def build(gb, x, short):
        attrs = dict(axis=axis)
        if sizes is None:
            attrs["num_outputs"] = n
        sp = gb.constant(ints(sizes)) if sizes is not None else None
        out = gb.op("split", x, sp, num_results=n, **attrs)
        return out if isinstance(out, tuple) else (out,)
    per_dtype(shape, build, native_op="split")


def test_split_more_dtypes():
    def build(gb, x, short):
        return gb.op("split", x, gb.constant(ints([1, 3])), num_results=2, axis=1)
    per_dtype((3, 4), build, MORE_DTYPES, native_op="split")


def test_split_outputs_feed_native_ops():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 10))
    a, b = gb.op("split", x, gb.constant(ints([5, 5])), num_results=2, axis=1)
    gb.output(gb.mul(a, b), "y")
    cpu = run_both(gb.module(), [data("f32", (4, 10))], "split")
    assert not cpu.fallback_ops, cpu.report()


# -- tile ---------------------------------------------------------------------------------------
TILE_CASES = [
    ((3,), [4]),
    ((2, 3), [2, 1]),
    ((2, 3), [1, 3]),
    ((1, 4, 2), [3, 2, 2]),
    ((2, 3), [0, 2]),                   # empty result
    ((1, 2, 1, 3, 2), [2, 1, 3, 1, 2]),
    ((5, 1), [1, 7]),
]


@pytest.mark.parametrize("shape,reps", TILE_CASES)
def test_tile(shape, reps):
    per_dtype(shape, lambda gb, x, short: gb.tile(x, gb.constant(ints(reps))),
              native_op="tile")


def test_tile_more_dtypes_and_large():
    per_dtype((3, 5), lambda gb, x, short: gb.tile(x, gb.constant(ints([2, 3]))),
              MORE_DTYPES, native_op="tile")
    per_dtype((50, 64, 3), lambda gb, x, short: gb.tile(x, gb.constant(ints([2, 1, 8]))),
              ("f32",), native_op="tile")


# -- expand -------------------------------------------------------------------------------------
EXPAND_CASES = [
    ((3, 1), (2, 3, 4)),
    ((1,), (5,)),
    ((4, 1, 2), (4, 3, 2)),
    ((2, 3), (1, 1, 2, 3)),
    ((1, 1), (1, 1)),
    ((3, 1, 5), (3, 0, 5)),             # empty result
    ((2, 1, 1, 3, 1), (2, 4, 2, 3, 3)),
    ((3, 4), (1, 1)),                    # the shape operand is smaller than the input
    ((), (2, 3)),                        # from a scalar
]


@pytest.mark.parametrize("shape,to", EXPAND_CASES)
def test_expand(shape, to):
    identity = tuple(np.broadcast_shapes(shape, to)) == shape
    per_dtype(shape, lambda gb, x, short: gb.expand(x, gb.constant(ints(to))),
              native_op="expand", level=0 if identity else None)


def test_expand_more_dtypes_and_large():
    per_dtype((1, 5), lambda gb, x, short: gb.expand(x, gb.constant(ints([3, 5]))),
              MORE_DTYPES, native_op="expand")
    per_dtype((64, 1, 70), lambda gb, x, short: gb.expand(x, gb.constant(ints([64, 40, 70]))),
              ("f32", "i64"), native_op="expand")


# -- together -----------------------------------------------------------------------------------
def test_data_ops_in_one_native_segment():
    """pad -> slice -> split -> tile -> expand -> add: no fallback, one segment."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 3, 5))
    y = gb.pad(x, gb.constant(ints([0, 1, 1, 0, 1, 1])), mode="reflect")
    y = gb.slice(y, gb.constant(ints([1, 6])), gb.constant(ints([4, 0])),
                 gb.constant(ints([1, 2])), gb.constant(ints([1, -2])))
    a, b = gb.op("split", y, gb.constant(ints([1, 2])), num_results=2, axis=1)
    b = gb.tile(gb.slice(b, gb.constant(ints([0])), gb.constant(ints([1])),
                         gb.constant(ints([1]))), gb.constant(ints([1, 2, 1])))
    gb.output(gb.add(gb.expand(a, gb.constant(ints([2, 2, 3]))), b), "y")  # (2,2,3)
    cpu = run_both(gb.module(), [data("f32", (2, 3, 5))], "pad")
    assert not cpu.fallback_ops, cpu.report()
    assert {"slice", "split", "tile", "expand"} <= set(cpu.native_ops), cpu.report()


# -- gather with run-time indices -------------------------------------------------------------
@pytest.mark.parametrize("short", ["f32", "i64", "u8"])
@pytest.mark.parametrize("data_shape,idx_shape,axis", [
    ((50, 8), (2, 5), 0),          # an embedding lookup
    ((3, 7, 4), (6,), 1),
    ((3, 7, 4), (2, 3), -1),
    ((9,), (), 0),                 # a scalar index
])
@pytest.mark.parametrize("idx_type", ["i32", "i64"])
def test_gather_with_run_time_indices(short, data_shape, idx_shape, axis, idx_type):
    from galaxir.errors import ExecutionError
    table = data(short, data_shape)
    gb = GraphBuilder()
    ids = gb.input("ids", tensor(idx_type, *idx_shape))
    gb.output(gb.gather(gb.constant(table), ids, axis=axis), "y")
    exe = gx.compile(gb.module(), target="cpu")
    d = data_shape[axis]
    idx_dt = np.int32 if idx_type == "i32" else np.int64
    for _ in range(20):  # in range (negative ones count from the end), or not: never a crash
        ids_v = RNG.integers(-d - 2, d + 2, size=idx_shape).astype(idx_dt)
        if ((ids_v < -d) | (ids_v >= d)).any():
            with pytest.raises(ExecutionError, match=r"op 'gather' .*index is out of range"):
                exe(ids_v)
            continue
        (y,) = exe(ids_v)
        np.testing.assert_array_equal(y, np.take(table, ids_v, axis=axis))
    assert "gather" in exe.native_ops and not exe.fallback_ops, exe.report()
