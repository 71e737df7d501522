"""fold-conv-scale and the per-channel conv bias in both layouts (what Keras 3's inference
batch norm, a multiply and an add after the conv, becomes), against the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import Builder, GraphBuilder, tensor
from galaxir.passes import optimize


def _model(layout: str, scale_shape, bias_shape, with_bias: bool):
    rs = np.random.RandomState(0)
    gb = GraphBuilder()
    shape = ("N", 6, 7, 3) if layout == "NHWC" else ("N", 3, 6, 7)
    x = gb.input("x", tensor("f32", *shape))
    b = Builder(gb.graph.block)
    w = b.constant(rs.randn(4, 3, 3, 3).astype(np.float32))
    bias = b.constant(rs.randn(4).astype(np.float32)) if with_bias else None
    y = b.op("conv", x, w, bias, pads=[1, 1, 1, 1], layout=layout)
    y = b.op("mul", y, b.constant(rs.uniform(0.5, 2, scale_shape).astype(np.float32)))
    y = b.op("add", y, b.constant(rs.randn(*bias_shape).astype(np.float32)))
    gb.output(b.op("relu", y), "y")
    return gb.module(), shape


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("layout,scale_shape,bias_shape", [
    ("NHWC", (4,), (4,)), ("NHWC", (1, 1, 1, 4), (1, 1, 4)), ("NCHW", (1, 4, 1, 1), (4, 1, 1))])
def test_per_channel_scale_and_bias_fold_into_the_conv(layout, scale_shape, bias_shape, with_bias):
    m, shape = _model(layout, scale_shape, bias_shape, with_bias)
    opt = optimize(m, level=2)
    counts = opt.op_counts()
    assert "mul" not in counts and "add" not in counts, counts
    x = np.random.RandomState(1).randn(2, *shape[1:]).astype(np.float32)
    (want,) = gx.compile(m, target="numpy", level=0)(x)
    (got,) = gx.compile(opt, target="numpy", level=0)(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout,scale_shape", [("NHWC", (1, 6, 1, 4)), ("NCHW", (4,))])
def test_not_per_channel_is_left_alone(layout, scale_shape):
    # NCHW with a [4] factor broadcasts along W (7 != 4 would not even broadcast: use W=4)
    rs = np.random.RandomState(0)
    gb = GraphBuilder()
    shape = ("N", 6, 4, 3) if layout == "NHWC" else ("N", 3, 6, 4)
    x = gb.input("x", tensor("f32", *shape))
    b = Builder(gb.graph.block)
    w = b.constant(rs.randn(4, 3, 1, 1).astype(np.float32))
    y = b.op("conv", x, w, layout=layout)
    gb.output(b.op("mul", y, b.constant(rs.randn(*scale_shape).astype(np.float32))), "y")
    m = gb.module()
    opt = optimize(m, level=2)
    assert "mul" in opt.op_counts() or "fused_elementwise" in opt.op_counts()
    xv = rs.randn(2, *shape[1:]).astype(np.float32)
    np.testing.assert_allclose(gx.compile(opt, target="numpy", level=0)(xv)[0],
                               gx.compile(m, target="numpy", level=0)(xv)[0], rtol=1e-5, atol=1e-5)
