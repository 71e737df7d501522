"""The cpu backend's depthwise, grouped and transposed convolutions against the numpy
reference: every window parameter, both layouts (O3 channels-last and NCHW), bias,
residual and activation epilogues, 16- and 8-lane code (GALAXIR_CPU_WIDE=1/0), and the
O3 layout pass on squeeze-excitation blocks (MobileNetV3 / EfficientNet)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import galaxir as gx
from galaxir.backends import get_backend
from galaxir.backends.cpu.kernels_conv_transpose import tap_range
from galaxir.backends.cpu.kernels_depthwise import interior_columns
from galaxir.ir import GraphBuilder, tensor
from galaxir.passes.layout import interior_transposes
from conftest import native_kernels

RNG = np.random.default_rng(11)


def _compile_both(module, feeds, layout):
    ref = get_backend("numpy").compile(module)(*feeds)
    opt = gx.optimize(module, level=3, target="cpu", layout=layout)
    exe = get_backend("cpu").compile(opt)
    return ref, exe(*feeds), exe, opt


def _activate(gb, y, activation):
    if activation is None:
        return y
    if activation == "clip":
        return gb.clip(y, gb.constant(np.float32(-0.5)), gb.constant(np.float32(0.7)))
    return gb.create(activation, y, num_results=1).results[0]


def _grouped_module(x_shape, w_shape, *, bias, activation, residual, **attrs):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *x_shape))
    w = gb.constant((RNG.standard_normal(w_shape) * 0.3).astype(np.float32))
    ops = [x, w]
    if bias:
        ops.append(gb.constant(RNG.standard_normal(w_shape[0]).astype(np.float32)))
    y = gb.conv(*ops, **attrs)
    if residual:
        y = gb.add(y, gb.input("z", tensor("f32", *y.type.shape)))
    gb.output(_activate(gb, y, activation), "y")
    return gb.module()


def _check_conv(x_shape, w_shape, layout, *, bias=True, activation=None, residual=False,
                wide=None, monkeypatch=None, expect=None, **attrs):
    if wide is not None:
        monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    m = _grouped_module(x_shape, w_shape, bias=bias, activation=activation, residual=residual,
                        **attrs)
    feeds = [RNG.standard_normal(x_shape).astype(np.float32)]
    if residual:
        feeds.append(RNG.standard_normal(m.graph.inputs[1].type.shape).astype(np.float32))
    ref, got, exe, opt = _compile_both(m, feeds, layout)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert not exe.fallback_ops, exe.report()
    convs = [op for op in opt.walk() if op.name in ("conv", "fused_conv")]
    assert convs and all(op.attrs.get("layout", "NCHW") == layout for op in convs)
    if expect is not None:
        assert expect in native_kernels(exe), native_kernels(exe)
    return exe


# -- depthwise ------------------------------------------------------------------------------
DW_CASES = [
    # (C, H, W, k, stride, dilation, pads)
    (16, 12, 12, 3, 1, 1, [1, 1, 1, 1]),
    (24, 9, 30, 3, 2, 1, [1, 1, 1, 1]),          # 16 + 8 lanes, stride 2
    (40, 14, 14, 5, 1, 1, [2, 2, 2, 2]),
    (32, 11, 13, 5, 2, 1, [2, 2, 2, 2]),
    (19, 17, 17, 7, 1, 1, [3, 3, 3, 3]),          # 16 lanes + 3 single channels
    (96, 10, 9, 7, 1, 1, [3, 3, 3, 3]),           # no interior column of full groups
    (8, 6, 5, 7, 1, 1, [3, 3, 3, 3]),             # image narrower than the kernel
    (5, 10, 11, 3, 1, 2, [2, 2, 2, 2]),           # dilation, scalar channels only
    (24, 15, 16, 3, 2, 2, [1, 0, 2, 3]),          # asymmetric pads
    (16, 8, 8, 4, 1, 1, [0, 0, 0, 0]),            # even kernel, no pads
    (16, 9, 40, 3, 1, 1, [0, 30, 0, 30]),         # pads wider than the border code unrolls
]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("C,H,W,k,s,d,pads", DW_CASES)
def test_depthwise_matches_reference(C, H, W, k, s, d, pads, layout):
    _check_conv((1, C, H, W), (C, 1, k, k), layout, group=C, strides=[s, s],
                dilations=[d, d], pads=pads,
                expect="DepthwiseNhwc" if layout == "NHWC" else None)


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("activation", ["relu", "clip", "sigmoid", "hard_swish", "leaky_relu"])
@pytest.mark.parametrize("residual", [False, True])
def test_depthwise_epilogues(monkeypatch, wide, activation, residual):
    _check_conv((2, 27, 9, 21), (27, 1, 3, 3), "NHWC", activation=activation, residual=residual,
                wide=wide, monkeypatch=monkeypatch, group=27, pads=[1, 1, 1, 1],
                expect="DepthwiseNhwc")


@pytest.mark.parametrize("wide", ["0", "1"])
def test_depthwise_wide_and_narrow_give_bit_equal_results(monkeypatch, wide):
    """Both vector widths run the same FMA chain per channel: bitwise the same output."""
    m = _grouped_module((1, 40, 13, 29), (40, 1, 5, 5), bias=True, activation="relu",
                        residual=False, group=40, pads=[2, 2, 2, 2])
    x = RNG.standard_normal((1, 40, 13, 29)).astype(np.float32)
    opt = gx.optimize(m, level=3, target="cpu", layout="NHWC")
    outs = {}
    for wv in ("0", "1"):
        monkeypatch.setenv("GALAXIR_CPU_WIDE", wv)
        outs[wv] = get_backend("cpu").compile(opt)(x)[0]
    np.testing.assert_array_equal(outs["0"], outs["1"])


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(C=st.integers(1, 40), H=st.integers(1, 12), W=st.integers(1, 26),
       k=st.integers(1, 7), s=st.integers(1, 2), d=st.integers(1, 2),
       pads=st.lists(st.integers(0, 3), min_size=4, max_size=4),
       bias=st.booleans(), wide=st.sampled_from(["0", "1"]))
def test_depthwise_any_shape(monkeypatch, C, H, W, k, s, d, pads, bias, wide):
    span = (k - 1) * d + 1
    if H + pads[0] + pads[2] < span or W + pads[1] + pads[3] < span:
        return   # no output pixel
    _check_conv((1, C, H, W), (C, 1, k, k), "NHWC", bias=bias, wide=wide,
                monkeypatch=monkeypatch, group=C, strides=[s, s], dilations=[d, d],
                pads=pads, expect="DepthwiseNhwc" if C > 1 else None)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(N=st.integers(1, 2), C=st.integers(2, 20), H=st.integers(1, 40), W=st.integers(1, 40),
       k=st.integers(1, 7), s=st.integers(1, 3), d=st.integers(1, 2),
       pads=st.lists(st.integers(0, 3), min_size=4, max_size=4), bias=st.booleans(),
       residual=st.booleans(), activation=st.sampled_from([None, "relu", "sigmoid", "clip"]),
       wide=st.sampled_from(["0", "1"]))
def test_depthwise_nchw_any_shape(monkeypatch, N, C, H, W, k, s, d, pads, bias, residual,
                                  activation, wide):
    """The NCHW depthwise kernel (O1/O2 and graphs kept channels-first): row bands staged
    zero-padded, 16- or 8-lane vectors along the output row, strides through a shuffle."""
    span = (k - 1) * d + 1
    if H + pads[0] + pads[2] < span or W + pads[1] + pads[3] < span:
        return   # no output pixel
    _check_conv((N, C, H, W), (C, 1, k, k), "NCHW", bias=bias, residual=residual,
                activation=activation, wide=wide, monkeypatch=monkeypatch, group=C,
                strides=[s, s], dilations=[d, d], pads=pads, expect="DepthwiseNchw")


def test_depthwise_nchw_large_plane_splits_into_bands(monkeypatch):
    """A plane whose padded rows exceed the stack band runs as several bands per plane."""
    from galaxir.backends.cpu.kernels_depthwise import DepthwiseNchw, NCHW_BAND_BYTES
    kern = DepthwiseNchw(N=1, C=2, H=150, W=300, OH=150, OW=300, kh=3, kw=3, pt=1, pl=1)
    nb, wpad, ob, bands = kern.geometry(16)
    assert bands > 2 and ((ob - 1) + 3) * wpad * 4 <= NCHW_BAND_BYTES
    exe = _check_conv((1, 2, 150, 300), (2, 1, 3, 3), "NCHW", group=2, pads=[1, 1, 1, 1],
                      activation="relu", expect="DepthwiseNchw")
    assert not exe.fallback_ops
    huge = DepthwiseNchw(N=1, C=2, H=1000, W=40000, OH=1000, OW=40000, kh=7, kw=7, dh=10,
                         pt=30, pl=3)
    assert not huge.fits_stack()     # such a conv stays on the GEMM path (no stack overflow)


@pytest.mark.parametrize("OW,W,kw,sw,dw,pl", [(10, 10, 3, 1, 1, 1), (5, 10, 3, 2, 1, 1),
                                               (4, 4, 7, 1, 1, 3), (12, 8, 3, 1, 2, 4)])
def test_interior_columns_need_no_bounds_checks(OW, W, kw, sw, dw, pl):
    lo, hi = interior_columns(OW, W, kw, sw, dw, pl)
    for ow in range(OW):
        inside = all(0 <= ow * sw - pl + j * dw < W for j in range(kw))
        assert inside == (lo <= ow < hi), (ow, lo, hi)


# -- grouped --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("C,M,g,k,s", [(48, 48, 6, 3, 1),     # RegNet: 8 channels per group
                                       (64, 64, 4, 3, 2),     # 16 per group: the GEMM
                                       (96, 192, 3, 3, 1),
                                       (32, 64, 32, 3, 1)])   # depth multiplier 2
@pytest.mark.parametrize("activation", [None, "relu"])
def test_grouped_matches_reference(layout, C, M, g, k, s, activation):
    _check_conv((1, C, 11, 10), (M, C // g, k, k), layout, activation=activation, group=g,
                strides=[s, s], pads=[1, 1, 1, 1])


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("C,g,k,s,d", [(48, 6, 3, 1, 1),      # 8 per group, 16 + 16 + 16 lanes
                                       (128, 32, 3, 2, 1),    # ResNeXt 32x4d
                                       (12, 3, 3, 1, 2),      # 8 lanes + 4 single channels
                                       (6, 3, 5, 1, 1),       # 2 per group, single channels
                                       (40, 5, 3, 1, 1)])     # 16 + 16 + 8 lanes
def test_narrow_groups_run_on_the_direct_kernel(monkeypatch, wide, C, g, k, s, d):
    """Groups of 2-8 channels: one vector load per input pixel, a shuffle per channel of
    the group (instead of GEMM panels mostly zero)."""
    p = d * (k - 1) // 2
    _check_conv((1, C, 9, 13), (C, C // g, k, k), "NHWC", activation="relu", residual=True,
                wide=wide, monkeypatch=monkeypatch, group=g, strides=[s, s], dilations=[d, d],
                pads=[p, p + 1, p, p], expect="DepthwiseNhwc")


# -- conv_transpose -------------------------------------------------------------------------
def _convT_module(x_shape, w_shape, bias, **attrs):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *x_shape))
    w = gb.constant(RNG.standard_normal(w_shape).astype(np.float32))
    g = attrs.get("group", 1)
    ops = [x, w] + ([gb.constant(RNG.standard_normal(w_shape[1] * g).astype(np.float32))]
                    if bias else [])
    gb.output(gb.op("conv_transpose", *ops, **attrs), "y")
    return gb.module()


CONVT_CASES = [
    ((1, 8, 5, 5), (8, 4, 3, 3), {}),
    ((2, 16, 4, 4), (16, 8, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),   # DCGAN
    ((1, 20, 1, 1), (20, 12, 4, 4), {}),                                       # latent -> 4x4
    ((3, 20, 1, 1), (20, 5, 3, 3), dict(strides=[2, 2], pads=[1, 0, 0, 1])),  # a batch of them
    ((1, 6, 5, 7), (6, 2, 3, 3), dict(group=3, strides=[2, 1], pads=[0, 1, 2, 0],
                                      output_padding=[1, 0], dilations=[1, 2])),
    ((1, 4, 6, 6), (4, 3, 5, 5), dict(strides=[3, 3], pads=[4, 4, 4, 4])),   # pads > stride
    ((1, 4, 3, 5), (4, 5, 2, 3), dict(strides=[2, 2], output_shape=[7, 10])),
    ((1, 4, 3, 3), (4, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
def test_conv_transpose_matches_reference(xs, ws, attrs, bias):
    m = _convT_module(xs, ws, bias, **attrs)
    x = RNG.standard_normal(xs).astype(np.float32)
    ref = get_backend("numpy").compile(m)(x)
    exe = gx.compile(m, target="cpu")
    got = exe(x)
    assert got[0].shape == ref[0].shape
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert "ConvTranspose2d" in native_kernels(exe) and not exe.fallback_ops, exe.report()


@settings(max_examples=12, deadline=None)
@given(C=st.integers(1, 12), mg=st.integers(1, 6), g=st.integers(1, 3), H=st.integers(1, 6),
       W=st.integers(1, 6), k=st.integers(1, 4), s=st.integers(1, 3), d=st.integers(1, 2),
       p=st.integers(0, 2), op=st.integers(0, 2))
def test_conv_transpose_any_shape(C, mg, g, H, W, k, s, d, p, op):
    op = min(op, max(s, d) - 1)   # ONNX: output_padding < stride or dilation
    if (min(H, W) - 1) * s + (k - 1) * d + 1 + op - 2 * p <= 0:
        return   # no output pixel: refused by type inference (test below)
    m = _convT_module((1, C * g, H, W), (C * g, mg, k, k), True, group=g, strides=[s, s],
                      dilations=[d, d], pads=[p, p, p, p], output_padding=[op, op])
    x = RNG.standard_normal((1, C * g, H, W)).astype(np.float32)
    ref = get_backend("numpy").compile(m)(x)
    exe = gx.compile(m, target="cpu")
    np.testing.assert_allclose(exe(x)[0], ref[0], rtol=1e-4, atol=1e-4)
    assert not exe.fallback_ops, exe.report()


def test_conv_transpose_with_no_output_pixel_is_refused():
    from galaxir.errors import GalaxirError
    with pytest.raises(GalaxirError, match="conv_transpose"):
        _convT_module((1, 2, 2, 2), (2, 1, 1, 1), True, pads=[2, 2, 2, 2])


def test_conv_transpose_tap_range():
    for n_in, n_out, k, s, p, d in [(5, 9, 2, 2, 1, 1), (3, 12, 1, 3, 0, 2), (4, 2, 3, 1, 2, 1)]:
        lo, hi = tap_range(k, s, p, d, n_in, n_out)
        inside = [i for i in range(n_in) if 0 <= i * s - p + k * d < n_out]
        assert list(range(lo, hi)) == inside


def test_conv_transpose_runtime_weights_fall_back_with_a_reason():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 4, 3, 3))
    w = gb.input("w", tensor("f32", 4, 2, 3, 3))
    gb.output(gb.op("conv_transpose", x, w), "y")
    exe = gx.compile(gb.module(), target="cpu")
    xv = RNG.standard_normal((1, 4, 3, 3)).astype(np.float32)
    wv = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    ref = get_backend("numpy").compile(gb.module())(xv, wv)
    np.testing.assert_allclose(exe(xv, wv)[0], ref[0], rtol=1e-5, atol=1e-5)
    assert "needs constant weights" in exe.report()


# -- the layout pass on squeeze-excitation --------------------------------------------------
@pytest.mark.parametrize("gate", ["hard_sigmoid", "sigmoid"])
def test_squeeze_excitation_runs_channels_last(gate):
    """MobileNetV3 / EfficientNet blocks: depthwise conv, global pool, two 1x1 convs and a
    per-channel scale.  The scale's own transpose becomes a reshape of [1, 1, 1, C]; the
    multiply must still take the channels-last path (no interior transposes)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 16, 10, 10))

    def w(*shape):
        return gb.constant((RNG.standard_normal(shape) * 0.3).astype(np.float32))

    y = gb.relu(gb.conv(x, w(32, 16, 1, 1), w(32)))
    y = gb.relu(gb.conv(y, w(32, 1, 3, 3), w(32), group=32, pads=[1, 1, 1, 1]))
    s = gb.create("global_average_pool", y, num_results=1).results[0]
    s = gb.relu(gb.conv(s, w(8, 32, 1, 1), w(8)))
    s = gb.create(gate, gb.conv(s, w(32, 8, 1, 1), w(32)), num_results=1).results[0]
    y = gb.mul(y, s)
    gb.output(gb.conv(y, w(16, 32, 1, 1)), "y")
    m = gb.module()
    xv = RNG.standard_normal((1, 16, 10, 10)).astype(np.float32)
    ref = get_backend("numpy").compile(m)(xv)
    opt = gx.optimize(m, level=3, target="cpu")
    assert not interior_transposes(opt)
    assert all(op.attrs.get("layout") == "NHWC" for op in opt.walk() if "conv" in op.name)
    exe = get_backend("cpu").compile(opt)
    np.testing.assert_allclose(exe(xv)[0], ref[0], rtol=1e-4, atol=1e-4)
    assert "DepthwiseNhwc" in native_kernels(exe) and not exe.fallback_ops, exe.report()


@pytest.mark.parametrize("axes", [[1], [-3], None])
def test_channel_split_runs_channels_last(axes):
    """torchvision's ShuffleNetV2 block: x.chunk(2, dim=1) (two slices along C), a conv
    branch on one half, concat: the slices take the channels-last path (axis remapped)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 8, 9, 9))

    def w(*shape):
        return gb.constant((RNG.standard_normal(shape) * 0.3).astype(np.float32))

    y = gb.relu(gb.conv(x, w(16, 8, 1, 1)))
    halves = []
    for lo, hi in ((0, 8), (8, 16)):
        if axes is None:    # starts and ends for every axis
            ops = [y, gb.constant(np.array([0, lo, 0, 0], np.int64)),
                   gb.constant(np.array([1, hi, 9, 9], np.int64))]
        else:
            ops = [y, gb.constant(np.array([lo], np.int64)), gb.constant(np.array([hi], np.int64)),
                   gb.constant(np.array(axes, np.int64))]
        halves.append(gb.op("slice", *ops))
    b2 = gb.conv(halves[1], w(8, 1, 3, 3), group=8, pads=[1, 1, 1, 1])
    y = gb.concat(halves[0], gb.relu(gb.conv(b2, w(8, 8, 1, 1))), axis=1)
    gb.output(gb.conv(y, w(4, 16, 1, 1)), "y")
    m = gb.module()
    xv = RNG.standard_normal((1, 8, 9, 9)).astype(np.float32)
    ref = get_backend("numpy").compile(m)(xv)
    opt = gx.optimize(m, level=3, target="cpu")
    assert not interior_transposes(opt)
    assert all(op.attrs.get("layout") == "NHWC" for op in opt.walk() if "conv" in op.name)
    exe = get_backend("cpu").compile(opt)
    np.testing.assert_allclose(exe(xv)[0], ref[0], rtol=1e-4, atol=1e-4)
    assert not exe.fallback_ops, exe.report()


# -- pointwise ------------------------------------------------------------------------------
@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("C,M,H,W", [(16, 96, 12, 12), (24, 40, 7, 9), (70, 33, 5, 3)])
@pytest.mark.parametrize("activation,residual", [(None, False), ("relu", True), ("sigmoid", True),
                                                 ("clip", False), ("hard_swish", False)])
def test_pointwise_nhwc_conv_is_one_gemm(monkeypatch, wide, C, M, H, W, activation, residual):
    """A 1x1 stride-1 conv in NHWC is [N*H*W, C] @ W^T: the 12-accumulator GEMM, with bias,
    the skip connection and the activation in its epilogue; edge tiles (rows and columns
    that do not fill a tile) included."""
    _check_conv((2, C, H, W), (M, C, 1, 1), "NHWC", activation=activation, residual=residual,
                wide=wide, monkeypatch=monkeypatch, expect="GemmPacked")
