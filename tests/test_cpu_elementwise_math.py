"""The cpu backend's polynomial math (vmath.py) and the vectorized elementwise loops: each
function against float64 over wide ranges and special values on 1, 8 and 16 lanes; every
transcendental/activation op against the numpy reference over random shapes, with the
8- and 16-lane loops forced (GALAXIR_CPU_WIDE=0/1)."""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
special = pytest.importorskip("scipy.special")

from galaxir.backends.cpu import jit, vmath  # noqa: E402
from galaxir.testing.vmath_map import compile_map  # noqa: E402

RNG = np.random.default_rng(12)


@contextmanager
def lanes_forced(wide: str):
    old = os.environ.get("GALAXIR_CPU_WIDE")
    os.environ["GALAXIR_CPU_WIDE"] = wide
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GALAXIR_CPU_WIDE")
        else:
            os.environ["GALAXIR_CPU_WIDE"] = old


# -- vmath on its own ------------------------------------------------------------------------
def _jit_map(fn, lanes: int):
    """``out[i] = fn(x[i])`` compiled for ``lanes``-wide values (n a multiple of lanes)."""
    cf = compile_map(fn, lanes)

    def run(a):
        a = np.ascontiguousarray(a, np.float32)
        assert a.size % lanes == 0
        o = np.empty_like(a)
        cf(o.ctypes.data, a.ctypes.data, a.size)
        return o
    return run


def _inputs():
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72, 88.73, 89.0, -87.3, -88.72, -103.0, -104.0,
                1e-45, -1e-45, 1e-38, 3.0e38, -3.0e38, 0.625, -0.625, 3.92, 4.0, 20.0, 1e30, -1e30]
    x = np.concatenate([RNG.uniform(-1, 1, 20000), RNG.uniform(-12, 12, 20000),
                        RNG.uniform(-120, 120, 20000), np.logspace(-45, -30, 500),
                        -np.logspace(-45, -30, 500), np.logspace(-30, 38, 2000),
                        -np.logspace(-30, 38, 2000), specials])
    x = x.astype(np.float32)
    return x[: len(x) // 16 * 16]


def _sigmoid64(t):
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1 / (1 + e), e / (1 + e))


REFS = {  # name: (float64 reference, input transform, max ulp, max relative error)
    "exp": (np.exp, None, 2, None),
    "log": (np.log, np.abs, 2, None),
    "tanh": (np.tanh, None, 2, None),
    "sigmoid": (_sigmoid64, None, 3, None),
    "softplus": (lambda t: np.logaddexp(0, t), None, 4, None),
    "tanh_softplus": (lambda t: np.tanh(np.logaddexp(0, t)), None, 4, None),
    "erf": (special.erf, None, None, 1e-6),
}


def _ulps(got, ref64):
    with np.errstate(over="ignore"):
        ref32 = ref64.astype(np.float32)
    fin = np.isfinite(ref32)
    d = np.zeros(got.shape)
    d[fin] = np.abs(got[fin].astype(np.float64) - ref64[fin]) / np.spacing(np.abs(ref32[fin])).astype(np.float64)
    d[got == ref32] = 0
    return d


@pytest.mark.parametrize("lanes", [1, 8, 16])
@pytest.mark.parametrize("name", sorted(REFS))
def test_vmath_accuracy(name, lanes):
    ref, pre, max_ulp, max_rel = REFS[name]
    x = _inputs()
    if pre is not None:
        x = pre(x)
    got = _jit_map(getattr(vmath, name), lanes)(x)
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64))
        want32 = want.astype(np.float32)
    # NaN exactly where the reference has it, the same infinities
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want32))
    inf = np.isinf(want32)
    np.testing.assert_array_equal(got[inf], want32[inf])
    if max_ulp is not None:
        u = _ulps(got, want)
        assert u.max() <= max_ulp, (name, x[np.argmax(u)], got[np.argmax(u)], want[np.argmax(u)])
    if max_rel is not None:
        fin = np.isfinite(want32) & (np.abs(want) > 1e-37)
        rel = np.abs(got[fin] - want[fin]) / np.abs(want[fin])
        assert rel.max() <= max_rel, (name, x[fin][np.argmax(rel)])


@pytest.mark.parametrize("lanes", [1, 8, 16, 32])
@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh", "softplus", "tanh_softplus"])
def test_vmath_portable_scaling_gives_the_same_bits(monkeypatch, name, lanes):
    """exp's 2^n scaling: AVX-512's vscalefps where the host has it, else two products by
    powers of two built in the exponent bits; both round once, so every function built on
    exp gives the same bits either way (and the portable path, the only one an AVX2 host
    runs, is checked here on any host)."""
    x = _inputs()
    x = x[: len(x) // 32 * 32]
    if not vmath.scalef_available():
        pytest.skip("no AVX-512 on this host: only the portable path exists")
    fast = _jit_map(getattr(vmath, name), lanes)(x)
    monkeypatch.setattr(vmath, "scalef_available", lambda: False)
    portable = _jit_map(getattr(vmath, name), lanes)(x)
    np.testing.assert_array_equal(fast.view(np.uint32), portable.view(np.uint32))


@pytest.mark.parametrize("lanes", [1, 8, 16])
@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh"])
def test_vmath_portable_path_accuracy(monkeypatch, name, lanes):
    """The path of an AVX2 host (no vscalefps; divisions as a reciprocal estimate and a
    Newton step) keeps exp/sigmoid/tanh within their ulp bounds."""
    monkeypatch.setattr(vmath, "scalef_available", lambda: False)
    monkeypatch.setattr(vmath, "divide_exactly", lambda: False)
    test_vmath_accuracy(name, lanes)


@pytest.mark.parametrize("lanes", [1, 8, 16])
@pytest.mark.parametrize("hide", [(), ("avx512f",), ("avx512f", "avx")])
def test_tanh_on_every_path(monkeypatch, hide, lanes):
    """tanh is one expm1-based formula with a true division on every host; its 2^n comes
    from vscalefps or from the exponent bits (AVX-512 hidden).  Within 2 ulp either way,
    exactly +-1 from 9.2 on, and tanh(-0) = -0."""
    real = jit.has_feature
    monkeypatch.setattr(jit, "has_feature", lambda name: name not in hide and real(name))
    test_vmath_accuracy("tanh", lanes)
    x = np.array([9.2, 9.5, 12.0, 20.0, 21.0, 1e30, np.inf, 0.0] * 2, np.float32)
    x[8:] *= -1
    y = _jit_map(vmath.tanh, lanes)(x)
    np.testing.assert_array_equal(y[:7], 1.0)
    np.testing.assert_array_equal(y[8:15], -1.0)
    assert y[7] == 0 and not np.signbit(y[7]) and y[15] == 0 and np.signbit(y[15])


def test_vmath_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -200.0, 200.0, -1.0], np.float32)
    x = np.tile(x, 2)
    exp = _jit_map(vmath.exp, 16)(x)
    assert np.isnan(exp[0]) and exp[1] == np.inf and exp[2] == 0 and exp[3] == 1 and exp[5] == 0
    assert exp[6] == np.inf
    log = _jit_map(vmath.log, 16)(x)
    assert np.isnan(log[0]) and log[1] == np.inf and np.isnan(log[2]) and log[3] == -np.inf
    assert np.isnan(log[7])
    for fn, lo, hi in [(vmath.tanh, -1, 1), (vmath.erf, -1, 1), (vmath.sigmoid, 0, 1)]:
        y = _jit_map(fn, 16)(x)
        assert np.isnan(y[0]) and y[1] == hi and y[2] == lo and y[6] == hi and y[5] == lo


def test_exp_denormal_results_round_once():
    x = np.linspace(-103.9, -87.4, 4096).astype(np.float32)
    got = _jit_map(vmath.exp, 16)(x)
    want = np.exp(x.astype(np.float64))
    # a denormal result is within one denormal step of the exact value
    assert np.abs(got - want).max() <= 1.5e-45
    assert (got > 0).sum() > 4000


# -- the ops, through the compiler -----------------------------------------------------------
def _build(name):
    def f(gb, x, y):
        if name == "gelu_tanh":
            return gb.gelu(x, approximate="tanh")
        if name == "hard_sigmoid":
            return gb.hard_sigmoid(x, alpha=0.25, beta=0.4)
        if name == "swish":
            return gb.swish(x, alpha=1.5)
        if name == "silu":
            return gb.mul(x, gb.sigmoid(x))
        if name == "mish_chain":
            return gb.mul(x, gb.tanh(gb.softplus(x)))
        if name == "se_scale":
            return gb.mul(x, gb.sigmoid(y))
        if name == "log":
            return gb.log(gb.abs(x))
        return gb.op(name, x)
    return f


OPS = ["erf", "tanh", "exp", "sigmoid", "log", "softplus", "gelu", "gelu_tanh", "hard_swish",
       "hard_sigmoid", "swish", "mish", "silu", "mish_chain", "se_scale"]


def _module(name, shape, yshape):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *shape))
    y = gb.input("y", tensor("f32", *yshape))
    gb.output(_build(name)(gb, x, y), "out")
    return gb.module()


def _values(shape, scale):
    x = (scale * RNG.standard_normal(shape)).astype(np.float32)
    flat = x.reshape(-1)
    sp = np.array([np.nan, np.inf, -np.inf, 0.0, 1e-40, -1e-40, 95.0, -95.0], np.float32)
    k = min(flat.size, sp.size)
    flat[:k] = sp[:k]
    return x


def _check(name, shape, wide, scale=3.0):
    yshape = tuple(shape[:2]) + (1,) * (len(shape) - 2) if len(shape) > 2 else shape
    m = _module(name, shape, yshape)
    x, y = _values(shape, scale), _values(yshape, scale)
    with lanes_forced(wide):
        cpu = gx.compile(m, target="cpu")
        got = cpu(x, y)[0]
    want = gx.compile(m, target="numpy", level=0)(x, y)[0]
    assert not cpu.fallback_ops, cpu.report()
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 if name.startswith("gelu") else 1e-7)
    return got


shapes = st.lists(st.integers(1, 23), min_size=1, max_size=4).map(tuple)


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("name", OPS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes)
def test_ops_match_numpy(name, wide, shape):
    _check(name, shape, wide)


@pytest.mark.parametrize("name", ["erf", "tanh", "sigmoid", "gelu", "mish"])
def test_wide_and_narrow_loops_agree(name):
    """The same per-lane code on 8 or 16 lanes (plus the scalar tail): the same bits."""
    shape = (2, 3, 37)
    a = _check(name, shape, "0", scale=6.0)
    RNG.bit_generator.state = np.random.default_rng(7).bit_generator.state
    m = _module(name, shape, (2, 3, 1))
    x, y = _values(shape, 6.0), _values((2, 3, 1), 6.0)
    outs = {}
    for wide in ("0", "1"):
        with lanes_forced(wide):
            outs[wide] = gx.compile(m, target="cpu")(x, y)[0]
    np.testing.assert_array_equal(outs["0"], outs["1"])
    assert a.shape == shape


def test_large_arrays_split_over_tasks_match():
    """Above the parallel threshold the loop is split into tasks whose bounds are not
    multiples of the lane count."""
    _check("gelu", (3, 5, 4099), "1")
    _check("tanh", (9, 8191), "0")


def test_no_libm_calls_in_the_loops():
    """The transcendental functions are inlined polynomial code: no erff/tanhf/expf call
    in the generated module."""
    m = _module("gelu", (4, 64), (4, 1))
    cpu = gx.compile(m, target="cpu")
    text = "\n".join(spec.llvm_ir for spec in cpu._specs.values())
    assert "define" in text
    for sym in ("erff", "tanhf", "expf", "llvm.exp.f32", "logf"):
        assert f"@{sym}(" not in text and f'@"{sym}"(' not in text, sym


@pytest.mark.parametrize("hide", [(), ("avx512f",), ("avx512f", "avx")])
def test_reciprocal_paths_same_bits_on_every_width(monkeypatch, hide):
    """sigmoid divides through the host's reciprocal estimate plus a Newton step (the
    AVX-512 estimate, the AVX one: 16 lanes in two pieces), or a true division (AVX-512 or
    no AVX; tanh always).  Each path is accurate, and gives the same bits on 1, 8 and 16 lanes (so a GEMM
    epilogue's vector columns and scalar edge columns agree)."""
    real = jit.has_feature
    monkeypatch.setattr(jit, "has_feature", lambda name: name not in hide and real(name))
    x = _inputs()
    for name in ("sigmoid", "tanh", "erf"):
        outs = [_jit_map(getattr(vmath, name), lanes)(x) for lanes in (1, 8, 16)]
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[0], outs[2])
        ref, _, max_ulp, _ = REFS[name]
        if max_ulp is not None:
            with np.errstate(all="ignore"):
                assert _ulps(outs[2], ref(x.astype(np.float64))).max() <= max_ulp + 1


@contextmanager
def env_forced(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name)
        else:
            os.environ[name] = old


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("name,shape", [("tanh", (3, 5, 4099)), ("silu", (5003,)), ("se_scale", (2, 3, 40, 37)),
                                        ("gelu", (1, 1033))])
def test_streaming_stores_give_the_same_bits(name, shape, wide):
    """A large graph output is written with non-temporal stores after a scalar head that
    aligns them (GALAXIR_CPU_STREAM_MIN=1 streams every output here): the same bits as the
    cached stores, into fresh arrays and into out= buffers at every offset from a vector
    boundary, split over tasks or not."""
    yshape = tuple(shape[:2]) + (1,) * (len(shape) - 2) if len(shape) > 2 else shape
    m = _module(name, shape, yshape)
    x, y = _values(shape, 3.0), _values(yshape, 3.0)
    with lanes_forced(wide):
        with env_forced("GALAXIR_CPU_STREAM_MIN", "0"):
            plain = gx.compile(m, target="cpu")
        with env_forced("GALAXIR_CPU_STREAM_MIN", "1"):
            streamed = gx.compile(m, target="cpu")
    spec = next(iter(streamed._specs.values()))
    flags = [s.kernel.stream for s in spec.steps if hasattr(s.kernel, "stream")]
    assert flags[-1] and not any(flags[:-1])   # the output's kernel only
    assert "!nontemporal" in spec.llvm_ir
    assert "!nontemporal" not in next(iter(plain._specs.values())).llvm_ir
    want = plain(x, y)[0]
    np.testing.assert_array_equal(streamed(x, y)[0].view(np.uint32), want.view(np.uint32))
    n = want.size
    raw = np.empty(n + 32, np.float32)
    for off in range(0, 17, 3):
        buf = raw[off:off + n].reshape(shape)
        got = streamed.run({"x": x, "y": y}, out={"out": buf})["out"]
        assert got is buf
        np.testing.assert_array_equal(buf.view(np.uint32), want.view(np.uint32))


def test_small_outputs_and_intermediates_are_not_streamed():
    """Only a graph output of at least stream_min_bytes streams: an intermediate that the
    next kernel reads, or a small output, keeps cached stores."""
    from galaxir.backends.cpu import lower
    limit = lower.stream_min_bytes()
    assert limit >= 1 << 16
    n = limit // 8 + 16
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, n))
    y = gb.input("y", tensor("f32", 16))
    gb.output(gb.op("exp", x), "big")
    gb.output(gb.op("transpose", gb.op("tanh", x), perm=[1, 0]), "moved")
    gb.output(gb.op("sigmoid", y), "small")
    cpu = gx.compile(gb.module(), target="cpu")
    spec = next(iter(cpu._specs.values()))
    flags = {s.ops[0].name: s.kernel.stream for s in spec.steps
             if hasattr(s, "kernel") and hasattr(s.kernel, "stream")}
    assert flags == {"exp": True, "tanh": False, "sigmoid": False}, flags
    # a streamed output whose innermost rows are short keeps cached stores
    with env_forced("GALAXIR_CPU_STREAM_MIN", "1"):
        short = gx.compile(_module("se_scale", (2, 3, 5, 7), (2, 3, 1, 1)), target="cpu")
    assert "!nontemporal" not in next(iter(short._specs.values())).llvm_ir
    xv = RNG.standard_normal((2, n)).astype(np.float32)
    yv = RNG.standard_normal(16).astype(np.float32)
    big, moved, small = cpu(xv, yv)
    np.testing.assert_allclose(big, np.exp(xv), rtol=2e-6)
    np.testing.assert_allclose(moved, np.tanh(xv).T, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(small, 1 / (1 + np.exp(-yv)), rtol=2e-6)


def test_feature_set_can_be_turned_off():
    """GALAXIR_CPU_FEATURES=-avx512f (read once per process, so benchmarks can time an AVX2
    host's code here) takes avx512f and every AVX-512 extension out of the LLVM target;
    other features, and a spec without '-' names, leave it as it was."""
    host = "+avx,+avx2,+fma,+avx512f,+avx512vl,+avx512bw,-avx512fp16,+evex512,+sse4.2"
    off = jit.turned_off(host, "-avx512f").split(",")
    assert "+avx2" in off and "+fma" in off and "+sse4.2" in off and "+avx" in off
    assert not [f for f in off if f.startswith("+avx512") or f == "+evex512"]
    assert jit.turned_off(host, "-fma").split(",")[2] == "-fma"
    assert jit.turned_off(host, "") == host and jit.turned_off(host, "avx2") == host
