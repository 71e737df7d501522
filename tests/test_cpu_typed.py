"""The cpu backend's typed kernels (galaxir/backends/cpu/kernels_typed.py, rules in
lower_typed.py): comparisons, logic, where, cast between numeric dtypes, integer and
float64 arithmetic, sign/round/elu, pow by 2/3/0.5, range, shape/size, gather_elements and
argmax/argmin run natively and give the numpy reference's values, over dtypes and
broadcast shapes (hypothesis), with the 8- and the 16-lane code paths forced."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import galaxir as gx
from galaxir.errors import ExecutionError
from galaxir.ir import GraphBuilder, tensor
from galaxir.ir.types import DType

pytest.importorskip("llvmlite")

INTS = ("i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64")
FLOATS = ("f32", "f64")
NUMERIC = INTS + FLOATS
SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(params=["0", "1"], ids=["lanes8", "lanes16"])
def lanes(request, monkeypatch):
    """Force the 8- or the 16-lane vector paths of the cpu backend."""
    monkeypatch.setenv("GALAXIR_CPU_WIDE", request.param)
    return request.param


def values(rng, short: str, shape, small: bool = False) -> np.ndarray:
    dt = DType.from_short(short).numpy
    if short == "bool":
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = (max(info.min, -9), min(info.max, 9)) if small else (info.min, info.max)
        a = rng.integers(lo, hi, size=shape, endpoint=True, dtype=dt)
        if a.size and not small:      # the edges: 0, -1, min, max
            flat = a.reshape(-1)
            for k, v in enumerate([0, info.min, info.max, -1 if info.min < 0 else 1]):
                flat[k % flat.size] = v
        return a
    a = (rng.standard_normal(shape) * 4).astype(dt)
    if a.size > 4:
        flat = a.reshape(-1)
        flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
        flat[4:6] = [0.5, 2.5][:len(flat[4:6])]
    return a


def check(name, shorts, shapes, feeds=None, native=True, exact=True, seed=0, **attrs):
    """One op over inputs of ``shorts``/``shapes``: cpu and numpy agree (bit for bit when
    ``exact``) and the op ran natively (when ``native``)."""
    gb = GraphBuilder()
    xs = [gb.input(f"x{k}", tensor(s, *sh)) for k, (s, sh) in enumerate(zip(shorts, shapes))]
    gb.output(gb.op(name, *xs, **attrs), "y")
    m = gb.module()
    rng = np.random.default_rng(seed)
    feeds = feeds or [values(rng, s, sh, small=name in ("pow",)) for s, sh in zip(shorts, shapes)]
    cpu = gx.compile(m, target="cpu")
    got = np.asarray(cpu(*feeds)[0])
    want = np.asarray(gx.compile(m, target="numpy", level=0)(*feeds)[0])
    assert got.dtype == want.dtype and got.shape == want.shape
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    if native:
        assert name in cpu.native_ops and not cpu.fallback_ops, cpu.report()
    return cpu


def shapes2():
    """Two shapes that broadcast against each other (ranks 0-4, dims 1-5)."""
    def make(out):
        return st.tuples(*[st.sampled_from([d, 1]) for d in out]).flatmap(
            lambda a: st.integers(0, len(a)).map(lambda k: tuple(a[k:])))
    return st.lists(st.integers(1, 5), min_size=0, max_size=4).map(tuple).flatmap(
        lambda out: st.tuples(make(out), make(out)))


@pytest.mark.parametrize("op", ["equal", "less", "less_or_equal", "greater", "greater_or_equal"])
@SETTINGS
@given(dtype=st.sampled_from(NUMERIC), shapes=shapes2(), seed=st.integers(0, 99))
def test_compare(lanes, op, dtype, shapes, seed):
    check(op, [dtype, dtype], list(shapes), seed=seed)


@pytest.mark.parametrize("op", ["and", "or", "xor"])
@SETTINGS
@given(shapes=shapes2(), seed=st.integers(0, 99))
def test_logic(lanes, op, shapes, seed):
    check(op, ["bool", "bool"], list(shapes), seed=seed)


def test_not(lanes):
    check("not", ["bool"], [(3, 7)])


@SETTINGS
@given(dtype=st.sampled_from(NUMERIC + ("bool",)), shapes=shapes2(), cshape=st.sampled_from([(), (1,), (5,)]),
       seed=st.integers(0, 99))
def test_where(lanes, dtype, shapes, cshape, seed):
    a, b = shapes
    out = np.broadcast_shapes(a, b)
    c = cshape if not cshape or (out and out[-1] in (5, 1) and len(out) >= 1) else ()
    if c == (5,) and (not out or out[-1] != 5):
        c = ()
    check("where", ["bool", dtype, dtype], [c, a, b], seed=seed)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "mod", "min", "max"])
@SETTINGS
@given(dtype=st.sampled_from(INTS + ("f64",)), shapes=shapes2(), seed=st.integers(0, 99))
def test_int_arith(lanes, op, dtype, shapes, seed):
    if op == "mod" and dtype == "f64":
        return   # float mod with fmod=0 stays on the reference (checked below)
    check(op, [dtype, dtype], list(shapes), seed=seed)


def test_int_division_edges():
    a = np.array([7, -7, 7, -7, -2**63, -2**63, 5, 0], np.int64)
    b = np.array([2, 2, -2, -2, -1, 1, 0, 0], np.int64)
    for op, attrs in (("div", {}), ("mod", {}), ("mod", {"fmod": 1})):
        check(op, ["i64", "i64"], [(8,), (8,)], feeds=[a, b], **attrs)


def test_float_mod():
    check("mod", ["f32", "f32"], [(4, 5), (5,)], fmod=1)
    cpu = check("mod", ["f32", "f32"], [(4, 5), (5,)], native=False)
    assert "mod" in cpu.fallback_ops      # fmod=0 on floats: the reference's np.mod


@pytest.mark.parametrize("op", ["neg", "abs", "sign", "round"])
@pytest.mark.parametrize("dtype", NUMERIC)
def test_unary(lanes, op, dtype):
    if dtype == "f32" and op in ("neg", "abs"):
        return   # float32 neg/abs are the fused float loops' (test_cpu_elementwise_math)
    check(op, [dtype], [(3, 11)], native=not (op == "round" and dtype in INTS))


def test_round_half_even_and_elu(lanes):
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.49, np.nan, -np.inf], np.float32)
    check("round", ["f32"], [(8,)], feeds=[x])
    check("elu", ["f32"], [(6, 9)], exact=False, alpha=0.7)
    check("elu", ["f64"], [(6, 9)], exact=False)


CASTS = ("bool", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64")


@pytest.mark.parametrize("src", CASTS)
@pytest.mark.parametrize("dst", CASTS)
def test_cast(src, dst):
    check("cast", [src], [(4, 9)], to=DType.from_short(dst), native=src != dst)  # (O1 drops x -> x)


@pytest.mark.parametrize("src", FLOATS)
def test_cast_float_edges_to_int(src):
    """Out-of-range float -> integer casts are undefined in ONNX: they follow numpy."""
    x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 1e20, -1e20, -0.9, 0.9, 127.9, -128.9,
                  255.5, 70000.2, 4e9, -1.5, 65535.9, 2.0**31, 2.0**63, 1.9e19, -2.0**63],
                 DType.from_short(src).numpy)
    for dst in ("i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64"):
        check("cast", [src], [x.shape], feeds=[x], to=DType.from_short(dst))


@pytest.mark.parametrize("e", [2.0, 3.0, 0.5])
@pytest.mark.parametrize("dtype", FLOATS)
def test_pow_special_exponents(lanes, e, dtype):
    gb = GraphBuilder()
    x = gb.input("x", tensor(dtype, 5, 7))
    gb.output(gb.op("pow", x, gb.constant(np.array(e, DType.from_short(dtype).numpy))), "y")
    m = gb.module()
    a = np.abs(np.random.default_rng(1).standard_normal((5, 7))).astype(DType.from_short(dtype).numpy)
    cpu = gx.compile(m, target="cpu")
    np.testing.assert_allclose(cpu(a)[0], gx.compile(m, target="numpy")(a)[0], rtol=1e-6)
    assert "pow" in cpu.native_ops, cpu.report()


def test_pow_other_exponent_falls_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4))
    gb.output(gb.op("pow", x, gb.constant(np.array(1.7, np.float32))), "y")
    cpu = gx.compile(gb.module(), target="cpu")
    assert "pow" in cpu.fallback_ops and "1.7" in cpu.report()


def _range_module(dtype: str):
    """range(start, limit, delta) with limit computed from x's shape (the static length
    only shape specialization knows)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N"))
    s = gb.input("s", tensor(dtype))
    d = gb.input("d", tensor(dtype))
    n = gb.gather(gb.shape(x), gb.constant(np.array(0, np.int64)))
    lim = gb.cast(n, to=DType.from_short(dtype))
    gb.output(gb.op("range", gb.constant(np.array(0, DType.from_short(dtype).numpy)), lim,
                    gb.constant(np.array(1, DType.from_short(dtype).numpy))), "r")
    gb.output(gb.op("range", s, gb.add(s, lim), d), "r2")
    return gb.module()


@pytest.mark.parametrize("dtype", ["i64", "i32", "f32"])
def test_range_from_shape(dtype):
    m = _range_module(dtype)
    cpu = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy")
    np_dt = DType.from_short(dtype).numpy
    for n in (1, 5, 17):
        feeds = [np.zeros(n, np.float32), np.array(3, np_dt), np.array(1, np_dt)]
        for g, w in zip(cpu(*feeds), ref(*feeds)):
            np.testing.assert_array_equal(g, w)
    # an integer limit read from a shape gives a static length; a float one does not
    assert ("range" in cpu.native_ops) == (dtype != "f32"), cpu.report()


def test_range_kernel_refuses_a_length_it_was_not_planned_for():
    # r2 = range(s, s + n, d): its type says n elements (d == 1 is not known statically,
    # so it stays on the reference) -- a d of 2 must still give the right answer
    m = _range_module("i64")
    cpu = gx.compile(m, target="cpu")
    feeds = [np.zeros(6, np.float32), np.array(3, np.int64), np.array(2, np.int64)]
    for g, w in zip(cpu(*feeds), gx.compile(m, target="numpy")(*feeds)):
        np.testing.assert_array_equal(g, w)


def _call_kernel(kern, arrays) -> int:
    """Emit one kernel on its own, compile it and call it on ``arrays`` (outputs first)."""
    import ctypes

    import llvmlite.ir as lir

    from galaxir.backends.cpu import jit
    mod = lir.Module("k")
    mod.triple = jit.target_triple()
    mod.data_layout = jit.target_data_layout()
    fn = kern.emit(mod, "kern", len(arrays))
    fn.linkage = "external"
    obj, _ = jit.compile_ir(str(mod))
    lib = jit.LoadedObject(obj)
    ret = ctypes.c_int64 if kern.fallible else None
    proto = ctypes.CFUNCTYPE(ret, *[ctypes.c_void_p] * len(arrays))
    return proto(lib.address("kern"))(*[a.ctypes.data for a in arrays])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32])
def test_range_kernel_checks_its_scalars(dtype):
    """The Range kernel recomputes its length from the run-time scalars: one that is not
    the planned length (or a zero delta) fails the call and writes nothing."""
    from galaxir.backends.cpu import kernels_typed as KT
    kern = KT.Range(n=4, dtype=np.dtype(dtype).name)
    one = lambda v: np.array(v, dtype)  # noqa: E731
    out = np.full(8, 7, dtype)
    assert _call_kernel(kern, [out, one(2), one(10), one(2)]) == 0
    np.testing.assert_array_equal(out[:4], [2, 4, 6, 8])
    for bad in ((0, 100, 1), (0, 4, 0), (5, 0, 1), (0, -4, -2), (0, 5, 1)):
        out[:] = 7
        assert _call_kernel(kern, [out, *map(one, bad)]) != 0
        assert (out == 7).all()
    assert _call_kernel(kern, [out, one(0), one(-4), one(-1)]) == 0
    np.testing.assert_array_equal(out[:4], [0, -1, -2, -3])


def test_shape_and_size(lanes):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3, "M"))
    gb.output(gb.op("shape", x), "s")
    gb.output(gb.op("shape", x, start=1, end=-1), "s2")
    gb.output(gb.op("size", x), "n")
    m = gb.module()
    cpu = gx.compile(m, target="cpu")
    for shape in ((2, 3, 4), (5, 3, 1)):
        a = np.zeros(shape, np.float32)
        for g, w in zip(cpu(a), gx.compile(m, target="numpy")(a)):
            np.testing.assert_array_equal(g, w)
    assert not cpu.fallback_ops, cpu.report()


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple), data=st.data())
def test_gather_elements(lanes, shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ax = axis % len(shape)
    ishape = tuple(d if a != ax else data.draw(st.integers(1, 6)) for a, d in enumerate(shape))
    itype = data.draw(st.sampled_from(["i64", "i32"]))
    dtype = data.draw(st.sampled_from(["f32", "i64", "u8", "i16", "bool"]))
    rng = np.random.default_rng(len(shape))
    idx = rng.integers(-shape[ax], shape[ax], size=ishape).astype(DType.from_short(itype).numpy)
    check("gather_elements", [dtype, itype], [shape, ishape],
          feeds=[values(rng, dtype, shape), idx], axis=axis)


def test_gather_elements_bad_index_is_an_error():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 4))
    i = gb.input("i", tensor("i64", 3, 2))
    gb.output(gb.op("gather_elements", x, i, axis=1), "y")
    cpu = gx.compile(gb.module(), target="cpu")
    assert "gather_elements" in cpu.native_ops
    with pytest.raises(ExecutionError, match="out of range"):
        cpu(np.zeros((3, 4), np.float32), np.array([[0, 1], [4, 0], [0, 0]], np.int64))


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@SETTINGS
@given(dtype=st.sampled_from(("f32", "f64", "i64", "i32", "u8", "i8")),
       shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple), data=st.data())
def test_argmax_argmin(lanes, op, dtype, shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    keep = data.draw(st.sampled_from([0, 1]))
    last = data.draw(st.sampled_from([0, 1]))
    rng = np.random.default_rng(sum(shape))
    x = values(rng, dtype, shape, small=True)     # small ints: many ties
    check(op, [dtype], [shape], feeds=[x], axis=axis, keepdims=keep, select_last_index=last)
