"""Squeeze-excitation blocks (GlobalAveragePool -> [1x1 conv, relu, 1x1 conv] -> Sigmoid or
HardSigmoid -> Mul with the feature map) on the cpu backend: the gate is computed once per
channel (not fused into the per-pixel Mul), the Mul is one vectorized pass, both layouts
match the numpy reference; a graph with no conv is not converted to channels-last."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(5)


def rand(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def se_module(n, c, h, w, gate="sigmoid", convs=False, layout="NCHW"):
    gb = GraphBuilder()
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    x = gb.input("x", tensor("f32", *shape))
    kw = {} if layout == "NCHW" else {"layout": "NHWC"}
    g = gb.global_average_pool(x, **kw)
    if convs:
        r = max(1, c // 4)
        g = gb.relu(gb.conv(g, gb.constant(rand(r, c, 1, 1)), gb.constant(rand(r))))
        g = gb.conv(g, gb.constant(rand(c, r, 1, 1)), gb.constant(rand(c)))
    s = gb.hard_sigmoid(g, alpha=1 / 6, beta=0.5) if gate == "hard_sigmoid" else gb.op(gate, g)
    gb.output(gb.mul(x, s), "y")
    return gb.module()


def _check(m, x, rtol=1e-5, atol=1e-6):
    cpu = gx.compile(m, target="cpu")
    got = cpu(x)[0]
    want = gx.compile(m, target="numpy", level=0)(x)[0]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    assert not cpu.fallback_ops, cpu.report()
    return cpu


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 2), c=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 9))
def test_se_gate_matches_numpy(gate, layout, n, c, h, w):
    m = se_module(n, c, h, w, gate=gate, layout=layout)
    x = rand(*((n, c, h, w) if layout == "NCHW" else (n, h, w, c)), scale=3)
    _check(m, x)


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_se_block_with_convs_at_o3(gate):
    m = se_module(1, 24, 10, 10, gate=gate, convs=True)
    cpu = _check(m, rand(1, 24, 10, 10, scale=2), rtol=1e-4, atol=1e-4)
    assert "global_average_pool" in cpu.native_ops


def test_the_gate_stays_out_of_the_per_pixel_chain():
    """sigmoid over [N,C,1,1] feeding mul over [N,C,H,W]: fused, the sigmoid would run once
    per pixel; it stays a separate op over the C values."""
    m = se_module(1, 16, 8, 8)
    opt = gx.optimize(m, level=2, target="cpu")
    counts = opt.op_counts()
    assert counts.get("sigmoid") == 1 and counts.get("mul") == 1, counts
    assert "fused_elementwise" not in counts
    # a same-shape chain still fuses
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 8, 4, 4))
    gb.output(gb.mul(x, gb.sigmoid(gb.add(x, x))), "y")
    assert gx.optimize(gb.module(), level=2).op_counts().get("fused_elementwise") == 1


def test_conv_free_graph_stays_nchw():
    """A graph of pools and elementwise ops only stays NCHW: transposing its input and
    output would cost more than the channels-last pool gains."""
    m = se_module(1, 16, 8, 8)
    opt = gx.optimize(m, level=3, target="cpu")
    assert "transpose" not in opt.op_counts(), opt.op_counts()
    assert all((op.attrs.get("layout") or "NCHW") == "NCHW" for op in opt.walk())
    _check(se_module(1, 16, 8, 8, convs=True), rand(1, 16, 8, 8), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 2])
def test_se_between_convs_runs_channels_last_end_to_end(n):
    """With convs around it the block runs channels-last: the gate [N,C,1,1] is the same
    data as [N,1,1,C], so the Mul is pushed through the layout change too (no interior
    transpose), and the Mul reads the gate as a contiguous per-channel vector."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", n, 8, 12, 12))
    y = gb.relu(gb.conv(x, gb.constant(rand(16, 8, 3, 3)), gb.constant(rand(16)), pads=(1, 1, 1, 1)))
    s = gb.conv(gb.relu(gb.conv(gb.global_average_pool(y), gb.constant(rand(4, 16, 1, 1)))),
                gb.constant(rand(16, 4, 1, 1)))
    y = gb.mul(y, gb.hard_sigmoid(s, alpha=1 / 6, beta=0.5))
    gb.output(gb.relu(gb.conv(y, gb.constant(rand(16, 16, 1, 1)), gb.constant(rand(16)))), "y")
    from galaxir.passes.layout import interior_transposes
    opt = gx.optimize(gb.module(), level=3, target="cpu")
    assert not interior_transposes(opt), opt.op_counts()
    assert all(op.attrs.get("layout") == "NHWC" for op in opt.walk()
               if op.name in ("fused_conv", "global_average_pool"))
    (mul,) = [op for op in opt.walk() if op.name == "mul"]
    assert mul.results[0].type.shape == (n, 12, 12, 16)
    _check(gb.module(), rand(n, 8, 12, 12, scale=2), rtol=1e-4, atol=1e-4)
