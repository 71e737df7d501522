"""The cpu backend against the numpy reference: native kernels on random shapes, the input
boundary (bad inputs never crash), the compile cache and the fallback report."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.errors import GalaxirError, InputValidationError
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def build(fn, *types):
    gb = GraphBuilder()
    xs = [gb.input(f"x{i}", tensor("f32", *t)) for i, t in enumerate(types)]
    out = fn(gb, *xs)
    outs = out if isinstance(out, tuple) else (out,)
    for i, y in enumerate(outs):
        gb.output(y, f"y{i}")
    return gb.module()


def both(m, *feeds, **kw):
    cpu = gx.compile(m, target="cpu", level=0, **kw)
    got = cpu(*feeds)
    want = gx.compile(m, target="numpy", level=0)(*feeds)
    return cpu, got, want


def assert_close(got, want, rtol=1e-4, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def test_fused_elementwise_broadcast_symbolic_batch():
    m = build(lambda b, x, y, z: b.relu(b.add(b.mul(x, y), b.sub(x, z))), ("N", 5, 7), (7,), (5, 1))
    exe = gx.compile(m, target="cpu", level=0)
    for n in (1, 3):
        feeds = [rand(n, 5, 7), rand(7), rand(5, 1)]
        want = gx.compile(m, target="numpy", level=0)(*feeds)
        assert_close(exe(*feeds), want)
    # the whole chain is one native kernel
    kinds = [s.kernel.name for s in exe.last.steps]
    assert kinds == ["elementwise"]
    assert "numpy fallback: none" in exe.report()


@pytest.mark.parametrize("shapes", [((3, 5), (5, 7)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 6)),
                                    ((7,), (7, 3))])
def test_matmul(shapes):
    m = build(lambda b, x, y: b.matmul(x, y), *shapes)
    exe, got, want = both(m, *(rand(*s) for s in shapes))
    assert_close(got, want)
    assert "matmul" in exe.native_ops


@pytest.mark.parametrize("ta,tb,with_c", [(0, 0, True), (1, 1, False), (0, 1, True)])
def test_gemm(ta, tb, with_c):
    a = rand(4, 3) if ta else rand(3, 4)
    bm = rand(5, 4) if tb else rand(4, 5)
    def f(b, x, y):
        c = b.constant(rand(5)) if with_c else None
        return b.gemm(x, y, c, transA=ta, transB=tb, alpha=0.5, beta=2.0)
    m = build(f, a.shape, bm.shape)
    _, got, want = both(m, a, bm)
    assert_close(got, want)


def test_gemm_constant_weights_small_batch_is_gemv():
    w = rand(37, 19)
    m = build(lambda b, x: b.relu(b.gemm(x, b.constant(w), b.constant(rand(37)), transB=1)), (2, 19))
    exe, got, want = both(m, rand(2, 19))
    assert_close(got, want)
    assert [s.kernel.name for s in exe.last.steps] == ["gemv"]


@pytest.mark.parametrize("cfg", [
    dict(x=(1, 3, 9, 11), w=(5, 3, 3, 3), pads=[1, 1, 1, 1]),
    dict(x=(2, 4, 8, 7), w=(6, 4, 1, 1)),
    dict(x=(1, 6, 10, 10), w=(9, 2, 3, 3), strides=[2, 2], group=3, pads=[0, 1, 1, 0]),
    dict(x=(1, 4, 9, 9), w=(4, 1, 3, 3), group=4, pads=[1, 1, 1, 1], dilations=[2, 2]),
    dict(x=(1, 3, 12, 12), w=(17, 3, 5, 5), strides=[3, 2], auto_pad="SAME_UPPER"),
])
def test_conv(cfg):
    cfg = dict(cfg)
    xs, ws = cfg.pop("x"), cfg.pop("w")
    w, bias = rand(*ws), rand(ws[0])
    m = build(lambda b, x: b.relu(b.conv(x, b.constant(w), b.constant(bias), **cfg)), xs)
    exe, got, want = both(m, rand(*xs))
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert exe.fallback_ops == []


def test_pooling_softmax_lrn_concat_transpose():
    def f(b, x, y):
        p = b.max_pool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], num_results=1)
        a = b.average_pool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
        c = b.concat(p, a, y, axis=1)
        g = b.global_average_pool(c)
        s = b.softmax(b.flatten(g, axis=1), axis=1)
        t = b.transpose(b.lrn(c, size=3), perm=[0, 2, 3, 1])
        return s, t
    m = build(f, (2, 3, 9, 9), (2, 2, 5, 5))
    exe, got, want = both(m, rand(2, 3, 9, 9), rand(2, 2, 5, 5))
    assert_close(got, want)
    assert exe.fallback_ops == []


def test_batch_norm_folds_into_conv():
    w = rand(4, 3, 3, 3)
    stats = [np.abs(rand(4)) + 0.5 for _ in range(4)]
    def f(b, x):
        y = b.conv(x, b.constant(w), pads=[1, 1, 1, 1])
        return b.relu(b.batch_norm(y, *[b.constant(s) for s in stats], epsilon=1e-3))
    m = build(f, (1, 3, 6, 6))
    exe, got, want = both(m, rand(1, 3, 6, 6))
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert [s.kernel.name for s in exe.last.steps] == ["gemm"]  # conv + bn + relu in one


# -- the boundary -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain():
    m = build(lambda b, x, y: b.relu(b.add(b.mul(x, y), x)), ("N", 6), (6,))
    return m, gx.compile(m, target="cpu", level=0)


def test_wrong_inputs_raise(chain):
    _, exe = chain
    with pytest.raises(InputValidationError):
        exe(rand(3, 6).astype(np.float64), rand(6))
    with pytest.raises(InputValidationError):
        exe(rand(3, 5), rand(6))
    with pytest.raises(InputValidationError):
        exe(rand(3, 6, 1), rand(6))
    with pytest.raises(InputValidationError):
        exe(rand(3, 6))
    with pytest.raises(InputValidationError):
        exe.run({"x0": rand(3, 6), "nope": rand(6)})


def test_noncontiguous_and_misaligned_inputs(chain):
    m, exe = chain
    base = rand(8, 12)
    x = base[::2, ::2]                      # non-contiguous view
    raw = np.zeros(6 * 4 + 1, np.uint8)
    y = np.frombuffer(raw.data, dtype=np.float32, count=6, offset=1)  # misaligned
    assert not x.flags.c_contiguous and y.ctypes.data % 4 != 0
    want = gx.compile(m, target="numpy", level=0)(np.ascontiguousarray(x), y.copy())
    assert_close(exe(x, y), want)
    xf = np.asfortranarray(rand(4, 6))
    assert_close(exe(xf, rand(6) * 0 + 1), [np.maximum(xf * 1 + xf, 0)])


def test_zero_size_dims(chain):
    _, exe = chain
    (out,) = exe(np.zeros((0, 6), np.float32), rand(6))
    assert out.shape == (0, 6)
    m = build(lambda b, x: b.conv(x, b.constant(rand(2, 3, 1, 1))), ("N", 3, 4, 4))
    (out,) = gx.compile(m, target="cpu", level=0)(np.zeros((0, 3, 4, 4), np.float32))
    assert out.shape == (0, 2, 4, 4)


def test_huge_symbolic_dims_give_an_error_not_a_crash():
    m = build(lambda b, x, y: b.add(x, y), ("N", 1), (1, "M"))
    exe = gx.compile(m, target="cpu", level=0)
    with pytest.raises((GalaxirError, MemoryError)):
        exe(np.zeros((1 << 20, 1), np.float32), np.zeros((1, 1 << 24), np.float32))


# -- cache and report ---------------------------------------------------------------------
def test_compile_cache_memory_and_disk(tmp_path):
    from galaxir.backends.cpu import jit
    m = build(lambda b, x: b.sigmoid(b.mul(x, x)), (3, 17))
    a = gx.compile(m, target="cpu", level=0, cache_dir=tmp_path)
    assert a.cache_source in ("compiled", "memory")
    b = gx.compile(m.clone(), target="cpu", level=0, cache_dir=tmp_path)
    assert b.cache_source == "memory"
    assert list(tmp_path.glob("*.o"))
    jit.clear_memory_cache()
    c = gx.compile(m, target="cpu", level=0, cache_dir=tmp_path)
    assert c.cache_source == "disk"
    x = rand(3, 17)
    assert_close(c(x), [1 / (1 + np.exp(-x * x))])


def test_report_lists_fallbacks():
    m = build(lambda b, x: b.relu(b.cos(b.add(x, x))), (4, 5))
    exe, got, want = both(m, rand(4, 5))
    assert_close(got, want)
    rep = exe.report()
    assert "numpy fallback" in rep and "cos" in rep
    assert exe.fallback_ops == ["cos"]
    assert set(exe.native_ops) == {"add", "relu"}
    assert len(exe.last.segments) == 2  # native, numpy, native


def test_memory_plan_reuses_the_arena():
    def f(b, x):
        y = x
        for _ in range(6):
            y = b.transpose(b.relu(y), perm=[1, 0])
        return y
    m = build(f, (64, 64))
    exe, got, want = both(m, rand(64, 64))
    assert_close(got, want)
    plan = exe.memory_plan()
    total = sum(p["size"] for p in plan)
    assert exe.last.arena_size < total  # buffers with disjoint lifetimes share space
