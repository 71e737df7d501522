"""O3 layout (galaxir/passes/layout.py): NHWC forms of conv/pool/batch_norm, transposes
pushed through elementwise ops, concat and batch_norm and cancelled, differential checks
against the unoptimized module on the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor
from galaxir.passes.layout import interior_transposes

RNG = np.random.default_rng(0)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def nhwc(m):
    return gx.optimize(m, level=3, target="numpy", layout="NHWC")


def run(m, *xs, target="numpy"):
    return gx.compile(m, target=target, level=0)(*xs)


def check_same(m, m2, *xs):
    for a, b in zip(run(m, *xs), run(m2, *xs)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def small_net(bn_const=True):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 3, 12, 12))
    w1, b1 = gb.constant(rand(8, 3, 3, 3, scale=0.3)), gb.constant(rand(8))
    y = gb.relu(gb.conv(x, w1, b1, pads=[1, 1, 1, 1]))
    y = gb.add(y, gb.constant(rand(8, 1, 1)))                      # per-channel constant
    y = gb.max_pool(y, kernel_shape=[2, 2], strides=[2, 2], num_results=1)
    z = gb.conv(y, gb.constant(rand(8, 8, 3, 3, scale=0.2)), pads=[1, 1, 1, 1])
    y = gb.relu(gb.add(z, y))                                      # residual
    c = gb.concat(y, gb.average_pool(y, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), axis=1)
    stats = [gb.constant(np.abs(rand(16)) + 0.5) for _ in range(4)] if bn_const else \
        [gb.abs(gb.constant(rand(16))) for _ in range(4)]
    c = gb.batch_norm(c, *stats)
    g = gb.global_average_pool(c)
    f = gb.flatten(g, axis=1)
    gb.output(gb.gemm(f, gb.constant(rand(16, 5)), gb.constant(rand(5))), "y")
    return gb.module()


@pytest.mark.parametrize("bn_const", [True, False])
def test_small_net_runs_nhwc_with_transposes_only_at_the_boundary(bn_const):
    m = small_net(bn_const)
    m3 = nhwc(m)
    assert interior_transposes(m3) == [], str(m3)
    lay = {op.name: op.attrs.get("layout") for op in m3.walk() if "layout" in op.attrs}
    assert {"conv", "max_pool", "average_pool", "global_average_pool"} <= set(lay) or \
        {"fused_conv", "max_pool", "average_pool", "global_average_pool"} <= set(lay)
    assert set(lay.values()) == {"NHWC"}
    assert m3.op_counts().get("transpose", 0) == 1
    x = rand(2, 3, 12, 12)
    check_same(m, m3, x)


def test_layout_pass_is_off_unless_the_target_asks():
    m = small_net()
    for m3 in (gx.optimize(m, level=3, target="numpy"), gx.optimize(m, level=3)):
        assert not any("layout" in op.attrs for op in m3.walk())
        assert m3.op_counts().get("transpose", 0) == 0
    # the cpu backend prefers channels-last (its NHWC conv needs no im2col packing)
    m3 = gx.optimize(m, level=3, target="cpu")
    assert {op.attrs.get("layout") for op in m3.walk() if "layout" in op.attrs} == {"NHWC"}
    assert interior_transposes(m3) == []
    assert not any("layout" in op.attrs for op in gx.optimize(m, level=2, target="cpu").walk())


def test_nhwc_type_inference():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 10, 10, 3))
    y = gb.conv(x, gb.constant(rand(6, 3, 3, 3)), strides=[2, 2], layout="NHWC")
    p = gb.max_pool(y, kernel_shape=[2, 2], layout="NHWC", num_results=1)
    g = gb.global_average_pool(p, layout="NHWC")
    gb.output(g, "y")
    m = gb.module()
    m.verify()
    assert y.type.shape == ("N", 4, 4, 6)
    assert p.type.shape == ("N", 3, 3, 6)
    assert g.type.shape == ("N", 1, 1, 6)


@pytest.mark.parametrize("name,attrs", [
    ("conv", dict(pads=[1, 0, 1, 2], strides=[2, 1], group=2)),
    ("max_pool", dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 0])),
    ("average_pool", dict(kernel_shape=[3, 3], count_include_pad=1, pads=[1, 1, 1, 1])),
    ("global_average_pool", {}),
    ("global_max_pool", {}),
    ("batch_norm", {}),
])
def test_numpy_kernels_honour_nhwc(name, attrs):
    x = rand(2, 4, 7, 9)
    extra = []
    if name == "conv":
        extra = [rand(6, 2, 3, 3), rand(6)]
    if name == "batch_norm":
        extra = [rand(4), rand(4), rand(4), np.abs(rand(4)) + 0.1]

    def build(layout):
        gb = GraphBuilder()
        xi = gb.input("x", tensor("f32", *(x.shape if layout == "NCHW" else
                                           np.transpose(x, (0, 2, 3, 1)).shape)))
        kw = dict(attrs)
        if layout == "NHWC":
            kw["layout"] = "NHWC"
        y = gb.op(name, xi, *[gb.constant(e) for e in extra], num_results=1, **kw)
        gb.output(y, "y")
        return gb.module()

    (want,) = run(build("NCHW"), x)
    (got,) = run(build("NHWC"), np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))))
    np.testing.assert_allclose(got, np.transpose(want, (0, 2, 3, 1)), rtol=1e-5, atol=1e-6)


def test_fused_conv_nhwc_at_o3_matches_o0():
    m = small_net()
    m2 = gx.optimize(m, level=2)
    assert "fused_conv" in m2.op_counts()
    m3 = nhwc(m)
    assert "fused_conv" in m3.op_counts()
    assert all(op.attrs.get("layout") == "NHWC" for op in m3.walk() if op.name == "fused_conv")
    check_same(m, m3, rand(2, 3, 12, 12))


def test_transposes_cancel_and_push_through_elementwise():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 4, 5, 6))
    t = gb.transpose(gb.exp(x), perm=[0, 2, 3, 1])
    u = gb.sigmoid(gb.mul(t, gb.constant(rand(4))))     # constant over the last axis (C)
    back = gb.transpose(u, perm=[0, 3, 1, 2])
    gb.output(gb.relu(back), "y")
    m = gb.module()
    assert gx.optimize(m, level=2).op_counts().get("transpose", 0) == 2
    m3 = nhwc(m)
    assert m3.op_counts().get("transpose", 0) == 0, str(m3)
    check_same(m, m3, rand(1, 4, 5, 6))


def test_cpu_backend_runs_nhwc_ops():
    pytest.importorskip("llvmlite")
    m = small_net()
    m3 = nhwc(m)
    x = rand(2, 3, 12, 12)
    exe = gx.compile(m3, target="cpu", level=0)
    (got,) = exe(x)
    (want,) = run(m, x)
    assert not exe.fallback_ops, exe.report()  # conv and pools have NHWC kernels
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_resnet50_at_o3_has_no_interior_transposes():
    onnx = pytest.importorskip("onnx")
    from galaxir.testing.zoo import dummy_inputs, model_path, with_random_weights
    mp = with_random_weights(onnx.load(str(model_path("resnet50"))))
    m = gx.import_model(mp)
    m3 = nhwc(m)
    assert interior_transposes(m3) == []
    assert m3.op_counts().get("batch_norm", 0) == 0
    convs = [op for op in m3.walk() if op.name in ("conv", "fused_conv")]
    assert convs and all(op.attrs.get("layout") == "NHWC" for op in convs)
    feeds = dummy_inputs(mp)
    want = gx.compile(m, target="numpy", level=0).run(feeds)
    got = gx.compile(m3, target="numpy", level=0).run(feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-5)
