"""The cpu backend's channels-last kernels (kernels_nhwc.py) against the numpy reference:
the indirect-GEMM conv (every window parameter, groups, residual, epilogues, channel counts
that are not multiples of the 16-wide panel), depthwise conv and NHWC pooling, reached the
way users reach them: O3 with the layout pass."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import galaxir as gx
from galaxir.backends import get_backend
from galaxir.ir import GraphBuilder, tensor
from galaxir.passes.layout import interior_transposes
from conftest import native_kernels

RNG = np.random.default_rng(7)


def _run_both(module, feeds, layout="NHWC"):
    ref = get_backend("numpy").compile(module)(*feeds)
    opt = gx.optimize(module, level=3, target="cpu", layout=layout)
    exe = get_backend("cpu").compile(opt)
    got = exe(*feeds)
    return ref, got, exe, opt


def _conv_module(x_shape, w_shape, *, bias=True, activation=None, residual=False, **attrs):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *x_shape))
    w = gb.constant(RNG.standard_normal(w_shape).astype(np.float32) * 0.3)
    b = gb.constant(RNG.standard_normal(w_shape[0]).astype(np.float32)) if bias else None
    y = gb.conv(x, w, b, **attrs) if b is not None else gb.conv(x, w, **attrs)
    if residual:
        y = gb.add(y, gb.input("z", tensor("f32", *y.type.shape)))
    if activation == "relu":
        y = gb.relu(y)
    elif activation == "sigmoid":
        y = gb.sigmoid(y)
    elif activation == "clip":
        y = gb.clip(y, gb.constant(np.float32(-0.5)), gb.constant(np.float32(0.7)))
    gb.output(y, "y")
    return gb.module()


CONV_CASES = [
    # (x shape, w shape, attrs)
    ((1, 3, 17, 19), (20, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 8, 9, 9), (16, 8, 1, 1), {}),
    ((1, 5, 13, 11), (33, 5, 3, 3), dict(strides=[2, 2], pads=[1, 0, 2, 1])),
    ((1, 4, 15, 15), (7, 4, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((1, 3, 23, 23), (17, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    ((1, 12, 8, 8), (24, 4, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    ((1, 16, 10, 10), (16, 1, 3, 3), dict(group=16, pads=[1, 1, 1, 1])),            # depthwise
    ((1, 24, 9, 7), (24, 1, 3, 3), dict(group=24, strides=[2, 2], pads=[0, 1, 1, 0])),
    ((2, 13, 6, 8), (13, 1, 3, 3), dict(group=13, pads=[1, 1, 1, 1], dilations=[1, 2])),
    ((1, 6, 4, 5), (9, 6, 5, 5), dict(pads=[2, 2, 2, 2])),   # fewer pixels than a tile row
    ((1, 2, 1, 1), (3, 2, 1, 1), {}),                        # one pixel
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_nhwc_conv_matches_reference(xs, ws, attrs, activation):
    m = _conv_module(xs, ws, activation=activation, **attrs)
    x = RNG.standard_normal(xs).astype(np.float32)
    ref, got, exe, opt = _run_both(m, [x])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    convs = [op for op in opt.walk() if op.name in ("conv", "fused_conv")]
    assert convs and all(op.attrs.get("layout") == "NHWC" for op in convs)
    assert not exe.fallback_ops, exe.report()


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "clip"])
def test_nhwc_conv_residual_and_epilogues(activation):
    m = _conv_module((1, 8, 10, 10), (20, 8, 3, 3), pads=[1, 1, 1, 1], residual=True,
                     activation=activation)
    x = RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)
    z = RNG.standard_normal((1, 20, 10, 10)).astype(np.float32)
    ref, got, exe, opt = _run_both(m, [x, z])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    fused = [op for op in opt.walk() if op.name == "fused_conv"]
    assert fused and fused[0].attrs.get("layout") == "NHWC"
    assert not exe.fallback_ops, exe.report()


def test_nhwc_conv_equal_inputs_give_bit_equal_channels():
    """Every output element is one FMA chain in the same order, whatever its tile position."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 7, 9, 9))
    w = gb.constant(np.tile(RNG.standard_normal((1, 7, 3, 3)).astype(np.float32), (37, 1, 1, 1)))
    gb.output(gb.conv(x, w, pads=[1, 1, 1, 1]), "y")
    x = RNG.standard_normal((1, 7, 9, 9)).astype(np.float32)
    _, got, _, _ = _run_both(gb.module(), [x])
    y = got[0]
    assert (y == y[:, :1]).all()


@pytest.mark.parametrize("xs,ws,attrs", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[5], CONV_CASES[9]])
def test_wide_and_narrow_tiles_give_bit_equal_results(monkeypatch, xs, ws, attrs):
    """One 16-lane accumulator per tile row (AVX-512 hosts) or two 8-lane ones: the same FMA
    chains, so the same bits; both forms compile on every x86-64 host."""
    from galaxir.backends.cpu import library
    m = _conv_module(xs, ws, activation="relu", residual=True, **attrs)
    x = RNG.standard_normal(xs).astype(np.float32)
    z = RNG.standard_normal(_conv_out_shape(m)).astype(np.float32)
    got = {}
    for wide in ("0", "1"):
        monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
        ref, got[wide], exe, _ = _run_both(m, [x, z])
        np.testing.assert_allclose(got[wide][0], ref[0], rtol=1e-4, atol=1e-4)
        assert not exe.fallback_ops, exe.report()
    assert any(k.startswith("convnhwc_") and "_w16" in k for k in library._symbols)
    assert any(k.startswith("convnhwc_") and "_w16" not in k for k in library._symbols)
    np.testing.assert_array_equal(got["0"][0], got["1"][0])


def _conv_out_shape(m):
    return [op for op in m.walk() if op.name == "conv"][0].results[0].type.shape


@pytest.mark.parametrize("kind", ["max_pool", "average_pool"])
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0], count_include_pad=1),
    dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[1, 1, 1, 1]),
])
def test_nhwc_pooling_matches_reference(kind, attrs):
    if kind == "max_pool":
        attrs = {k: v for k, v in attrs.items() if k != "count_include_pad"}
    elif "dilations" in attrs:
        attrs = dict(attrs)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 11, 10, 9))
    w = gb.constant(RNG.standard_normal((11, 11, 1, 1)).astype(np.float32))
    y = gb.relu(gb.conv(x, w))
    (p, *_) = gb.create(kind, y, num_results=1, **attrs).results
    gb.output(p, "y")
    xv = RNG.standard_normal((2, 11, 10, 9)).astype(np.float32)
    ref, got, exe, opt = _run_both(gb.module(), [xv])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    assert any(op.name == kind and op.attrs.get("layout") == "NHWC" for op in opt.walk())
    assert not exe.fallback_ops, exe.report()


@pytest.mark.parametrize("kind", ["global_average_pool", "global_max_pool"])
def test_nhwc_global_pool(kind):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 5, 6, 7))
    w = gb.constant(RNG.standard_normal((19, 5, 3, 3)).astype(np.float32))
    y = gb.conv(x, w, pads=[1, 1, 1, 1])
    (p,) = gb.create(kind, y, num_results=1).results
    gb.output(gb.flatten(p, axis=1), "y")
    xv = RNG.standard_normal((3, 5, 6, 7)).astype(np.float32)
    ref, got, exe, opt = _run_both(gb.module(), [xv])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    assert not interior_transposes(opt)
    assert not exe.fallback_ops, exe.report()


def test_cpu_target_converts_where_it_pays():
    """At O3 the cpu target (preferred_layout NHWC) converts a conv chain, and keeps NCHW
    where the layout pass would leave a transpose per converted op."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 4, 8, 8))
    y = x
    for _ in range(3):
        y = gb.relu(gb.conv(y, gb.constant(RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)),
                            pads=[1, 1, 1, 1]))
    gb.output(y, "y")
    chain = gx.optimize(gb.module(), level=3, target="cpu")
    assert all(op.attrs.get("layout") == "NHWC" for op in chain.walk() if op.name.endswith("conv"))

    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 4, 8, 8))
    w = gb.constant(RNG.standard_normal((4, 4, 3, 3)).astype(np.float32))
    y = gb.conv(x, w, pads=[1, 1, 1, 1])
    y = gb.softmax(y, axis=1)      # no NHWC form: transposes around it would stay
    y = gb.conv(y, w, pads=[1, 1, 1, 1])
    gb.output(gb.softmax(y, axis=1), "y")
    kept = gx.optimize(gb.module(), level=3, target="cpu")
    assert all(op.attrs.get("layout", "NCHW") == "NCHW" for op in kept.walk())
    forced = gx.optimize(gb.module(), level=3, target="cpu", layout="NHWC")
    assert any(op.attrs.get("layout") == "NHWC" for op in forced.walk())


@pytest.mark.parametrize("size,beta", [(5, 0.75), (3, 0.5), (4, 0.6)])
def test_lrn_runs_channels_last_between_convs(size, beta):
    """alexnet's conv -> relu -> lrn -> pool runs channels-last at O3 (lrn over the
    contiguous channels of each pixel), matching the reference."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 3, 19, 17))
    y = gb.relu(gb.conv(x, gb.constant(RNG.standard_normal((37, 3, 3, 3)).astype(np.float32)),
                        pads=[1, 1, 1, 1]))
    y = gb.lrn(y, size=size, alpha=1e-2, beta=beta, bias=1.5)
    y = gb.create("max_pool", y, num_results=1, kernel_shape=[3, 3], strides=[2, 2]).results[0]
    y = gb.conv(y, gb.constant(RNG.standard_normal((20, 37, 3, 3)).astype(np.float32)))
    gb.output(gb.lrn(y, size=size, alpha=1e-2, beta=beta, bias=1.5), "y")
    xv = RNG.standard_normal((1, 3, 19, 17)).astype(np.float32)
    ref, got, exe, opt = _run_both(gb.module(), [xv], layout=None)
    scale = float(np.abs(ref[0]).max())  # conv sums of that size: float32 rounding relative to it
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5 * scale)
    lrns = [op for op in opt.walk() if op.name == "lrn"]
    assert len(lrns) == 2 and all(op.attrs.get("layout") == "NHWC" for op in lrns)
    assert not interior_transposes(opt)
    assert "lrn" in exe.native_ops and not exe.fallback_ops, exe.report()
    # the reference runs the channels-last op too
    (again,) = get_backend("numpy").compile(opt)(xv)
    np.testing.assert_allclose(again, ref[0], rtol=1e-5, atol=1e-6)


def test_nhwc_conv_with_runtime_weights_falls_back_cleanly():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 3, 6, 6))
    w = gb.input("w", tensor("f32", 4, 3, 3, 3))
    gb.output(gb.conv(x, w), "y")
    xv = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    wv = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    ref, got, exe, _ = _run_both(gb.module(), [xv, wv])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert any("constant weights" in line for line in exe.report().splitlines())


# -- large matrix products on the same kernel (kernels_nhwc.MatMulPacked) -------------------
@pytest.mark.parametrize("a_shape,b_shape,const_b", [
    ((200, 150), (150, 170), False),          # N not a multiple of 16, rows not of 6
    ((3, 70, 128), (128, 96), True),          # batch folded into the rows, packed at compile time
    ((2, 3, 50, 64), (2, 3, 64, 130), False),  # B per product: packed per product at run time
    ((2, 1, 64, 90), (4, 90, 48), False),     # broadcast batch dims
])
def test_packed_matmul_matches_reference(a_shape, b_shape, const_b):
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", *a_shape))
    bval = RNG.standard_normal(b_shape).astype(np.float32)
    bm = gb.constant(bval) if const_b else gb.input("b", tensor("f32", *b_shape))
    gb.output(gb.matmul(a, bm), "y")
    m = gb.module()
    av = RNG.standard_normal(a_shape).astype(np.float32)
    feeds = [av] if const_b else [av, bval]
    exe = gx.compile(m, target="cpu")
    (got,) = exe(*feeds)
    np.testing.assert_allclose(got, np.matmul(av, bval), rtol=1e-4, atol=1e-3)
    assert {"MatMulPacked", "GemmPacked", "BatchedGemm"} & set(native_kernels(exe))


def test_packed_linear_with_bias_and_relu():
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 96, 256))
    w = RNG.standard_normal((256, 100)).astype(np.float32)
    bias = RNG.standard_normal(100).astype(np.float32)
    gb.output(gb.relu(gb.add(gb.matmul(a, gb.constant(w)), gb.constant(bias))), "y")
    exe = gx.compile(gb.module(), target="cpu")
    av = RNG.standard_normal((96, 256)).astype(np.float32)
    (got,) = exe(av)
    np.testing.assert_allclose(got, np.maximum(av @ w + bias, 0), rtol=1e-4, atol=1e-3)
    assert native_kernels(exe) in (["MatMulPacked"], ["GemmPacked"])


@pytest.mark.parametrize("trans_b,bias_shape", [(True, (1, 72)), (False, (72,)), (True, None)])
def test_packed_gemm(trans_b, bias_shape):
    """ONNX Gemm (a torch Linear: B transposed, bias per column) on the packed kernel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = RNG.standard_normal((72, 160) if trans_b else (160, 72)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["a", "w"]
    if bias_shape is not None:
        bias = RNG.standard_normal(bias_shape).astype(np.float32)
        inits.append(numpy_helper.from_array(bias, "c"))
        ins.append("c")
    g = helper.make_graph(
        [helper.make_node("Gemm", ins, ["g"], transB=int(trans_b)), helper.make_node("Relu", ["g"], ["y"])],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [200, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [200, 72])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    exe = gx.compile(model, target="cpu")
    av = RNG.standard_normal((200, 160)).astype(np.float32)
    want = av @ (w.T if trans_b else w) + (bias if bias_shape is not None else 0)
    np.testing.assert_allclose(exe(av)[0], np.maximum(want, 0), rtol=1e-4, atol=1e-3)
    assert native_kernels(exe) in (["MatMulPacked"], ["GemmPacked"])


def test_small_products_stay_on_sgemm():
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 8, 32))
    b = gb.input("b", tensor("f32", 32, 24))
    gb.output(gb.matmul(a, b), "y")
    exe = gx.compile(gb.module(), target="cpu")
    av, bv = RNG.standard_normal((8, 32)).astype(np.float32), RNG.standard_normal((32, 24)).astype(np.float32)
    np.testing.assert_allclose(exe(av, bv)[0], av @ bv, rtol=1e-5, atol=1e-5)
    assert not {"MatMulPacked", "GemmPacked", "BatchedGemm"} & set(native_kernels(exe))


def test_channel_shuffle_stays_channels_last():
    """ShuffleNet's shuffle (reshape, transpose, reshape) between two convs: the layout pass
    rewrites it to the same shuffle on the NHWC value, leaving no conversion around it."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 12, 5, 6))
    y = gb.relu(gb.conv(x, gb.constant(RNG.standard_normal((12, 4, 1, 1)).astype(np.float32)),
                        group=3))
    y = gb.reshape(y, gb.constant(np.array([1, 3, 4, 5, 6], np.int64)))
    y = gb.transpose(y, perm=[0, 2, 1, 3, 4])
    y = gb.reshape(y, gb.constant(np.array([1, 12, 5, 6], np.int64)))
    y = gb.conv(y, gb.constant(RNG.standard_normal((12, 1, 3, 3)).astype(np.float32)),
                group=12, pads=[1, 1, 1, 1])
    gb.output(y, "y")
    m = gb.module()
    xv = RNG.standard_normal((1, 12, 5, 6)).astype(np.float32)
    ref, got, exe, opt = _run_both(m, [xv], layout=None)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    perms = sorted(tuple(op.attr("perm")) for op in opt.walk() if op.name == "transpose")
    # the input and output conversions, and the shuffle itself (now on [N, H, W, g, C/g])
    assert perms == [(0, 1, 2, 4, 3), (0, 2, 3, 1), (0, 3, 1, 2)], perms
    assert not exe.fallback_ops, exe.report()


_GUARDED = r'''
import ctypes, mmap
import numpy as np
import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

page = mmap.PAGESIZE
keep = []

def guarded(values):
    """A float32 array that ends exactly where an unreadable page begins."""
    buf = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(addr + page), page, 0) == 0
    keep.append(buf)
    arr = np.frombuffer(buf, np.float32, count=len(values), offset=page - 4 * len(values))
    arr[:] = values
    return arr

rng = np.random.default_rng(0)
gb = GraphBuilder()
x = gb.input("x", tensor("f32", 1, 5, 9, 9))
w = gb.constant(rng.standard_normal((20, 5, 3, 3)).astype(np.float32))
y = gb.relu(gb.conv(x, w, gb.constant(guarded(rng.standard_normal(20))), pads=[1, 1, 1, 1]))
gb.output(y, "y")
exe = gx.compile(gb.module(), target="cpu")
assert "ConvNhwc" in [type(s.kernel).__name__ for s in exe.last.steps if s.kind == "native"]
exe(rng.standard_normal((1, 5, 9, 9)).astype(np.float32))

gb = GraphBuilder()
a = gb.input("a", tensor("f32", 300, 400))
wm = gb.constant(rng.standard_normal((400, 20)).astype(np.float32))
gb.output(gb.add(gb.matmul(a, wm), gb.constant(guarded(rng.standard_normal(20)))), "y")
exe = gx.compile(gb.module(), target="cpu")
assert {"MatMulPacked", "GemmPacked"} & {type(s.kernel).__name__ for s in exe.last.steps if s.kind == "native"}
exe(rng.standard_normal((300, 400)).astype(np.float32))
print("ok")
'''


def test_partial_panels_never_read_past_the_bias():
    """A 20-channel conv and a 20-column product end in a 4-column panel: their bias
    arrays sit right before an unreadable page, so reading 16 biases at once would crash
    (run in a child process, where a crash is a failure and not the end of the run)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _GUARDED], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


# -- the 6 x 32 conv tile (two zmm per row) for kxk convs with 32+ output channels ----------
def test_conv_panel_width_choice():
    from galaxir.backends.cpu.kernels_nhwc import conv_panel_width
    assert conv_panel_width(64, True) == 32 and conv_panel_width(512, True) == 32
    assert conv_panel_width(64, False) == 16           # 8 lanes: 6 x 16 as twelve ymm
    assert conv_panel_width(16, True) == 16            # a 32-wide panel would be half zeros
    assert conv_panel_width(48, True) == 16            # 16 of 64 columns wasted
    assert conv_panel_width(208, True) == 32           # 16 of 224 wasted: under 1/8
    assert conv_panel_width(24, True) == 32            # one 32-wide panel = two 16-wide
    assert conv_panel_width(20, True) == 32 and conv_panel_width(8, True) == 16


def _conv_symbols():
    from galaxir.backends.cpu import library
    return {k for k in library._symbols if k.startswith("convnhwc_")}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(C=st.integers(1, 20), M=st.sampled_from([20, 24, 32, 35, 64, 72, 96]), H=st.integers(1, 13),
       W=st.integers(1, 15), k=st.sampled_from([1, 2, 3, 5, 7]), s=st.integers(1, 2),
       d=st.integers(1, 2), pads=st.lists(st.integers(0, 3), min_size=4, max_size=4),
       group=st.sampled_from([1, 2]), bias=st.booleans(), residual=st.booleans(),
       wide=st.sampled_from(["0", "1"]))
def test_kxk_conv_any_shape_both_widths(monkeypatch, C, M, H, W, k, s, d, pads, group, bias,
                                        residual, wide):
    """kxk, strided and dilated convs on the 6 x 32 tile (16 lanes, 32+ output channels
    per group) and on the 6 x 16 tile (8 lanes) against the numpy reference."""
    span = (k - 1) * d + 1
    if H + pads[0] + pads[2] < span or W + pads[1] + pads[3] < span:
        return   # no output pixel
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    C, M = C * group, M * group
    m = _conv_module((1, C, H, W), (M, C // group, k, k), bias=bias, activation="relu",
                     residual=residual, strides=[s, s], dilations=[d, d], pads=pads, group=group)
    feeds = [RNG.standard_normal((1, C, H, W)).astype(np.float32)]
    if residual:
        feeds.append(RNG.standard_normal(_conv_out_shape(m)).astype(np.float32))
    ref, got, exe, _ = _run_both(m, feeds)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert not exe.fallback_ops, exe.report()


@pytest.mark.parametrize("xs,ws,attrs", [
    ((1, 16, 14, 14), (64, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 3, 23, 23), (64, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    ((2, 8, 9, 11), (96, 8, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 24, 7, 7), (416, 12, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),   # 208 per group
])
def test_32_wide_tile_is_bit_equal_to_the_16_wide_ones(monkeypatch, xs, ws, attrs):
    """The 6 x 32 tile runs the same FMA chain per output as the 6 x 16 tiles: the same
    bits with 16 lanes (32-wide panels) and 8 lanes (16-wide panels)."""
    m = _conv_module(xs, ws, activation="relu", residual=True, **attrs)
    x = RNG.standard_normal(xs).astype(np.float32)
    z = RNG.standard_normal(_conv_out_shape(m)).astype(np.float32)
    got = {}
    for wide in ("0", "1"):
        monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
        before = _conv_symbols()
        ref, got[wide], exe, _ = _run_both(m, [x, z])
        np.testing.assert_allclose(got[wide][0], ref[0], rtol=1e-4, atol=1e-4)
        assert not exe.fallback_ops, exe.report()
        kerns = [s.kernel for s in exe.last.steps if type(s.kernel).__name__ == "ConvNhwc"]
        assert kerns and all(kn.nr == (32 if wide == "1" else 16) for kn in kerns)
        assert _conv_symbols() >= before
    assert any("_w16_n32_r6" in s for s in _conv_symbols())
    np.testing.assert_array_equal(got["0"][0], got["1"][0])


def test_32_wide_tile_equal_inputs_give_bit_equal_channels(monkeypatch):
    monkeypatch.setenv("GALAXIR_CPU_WIDE", "1")
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 7, 9, 9))
    w = gb.constant(np.tile(RNG.standard_normal((1, 7, 3, 3)).astype(np.float32), (70, 1, 1, 1)))
    gb.output(gb.conv(x, w, pads=[1, 1, 1, 1]), "y")
    _, got, _, _ = _run_both(gb.module(), [RNG.standard_normal((1, 7, 9, 9)).astype(np.float32)])
    assert (got[0] == got[0][:, :1]).all()


def test_32_wide_panels_need_16_lanes(monkeypatch):
    from galaxir.backends.cpu.kernels_nhwc import ConvNhwc
    monkeypatch.setenv("GALAXIR_CPU_WIDE", "0")
    k = ConvNhwc(N=1, H=4, W=4, C=4, OH=4, OW=4, M=64, kh=1, kw=1, nr=32)
    with pytest.raises(ValueError, match="panel width 32"):
        k.library_symbol()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(["max_pool", "average_pool"]), C=st.integers(1, 80),
       H=st.integers(2, 12), W=st.integers(2, 12), k=st.integers(1, 3), s=st.integers(1, 2),
       pad=st.integers(0, 1), ceil=st.integers(0, 1), cip=st.integers(0, 1))
def test_nhwc_pooling_any_channel_count(kind, C, H, W, k, s, pad, ceil, cip):
    """Channel blocks of 32 (four registers), 8 and 1 over every window shape."""
    if pad >= k or H + 2 * pad < k or W + 2 * pad < k:
        return
    attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, ceil_mode=ceil)
    if kind == "average_pool":
        attrs["count_include_pad"] = cip
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, C, H, W))
    w = gb.constant(RNG.standard_normal((C, C, 1, 1)).astype(np.float32))
    (p, *_) = gb.create(kind, gb.conv(x, w), num_results=1, **attrs).results
    gb.output(p, "y")
    xv = RNG.standard_normal((1, C, H, W)).astype(np.float32)
    ref, got, exe, opt = _run_both(gb.module(), [xv])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    assert any(op.name == kind and op.attrs.get("layout") == "NHWC" for op in opt.walk())
    assert not exe.fallback_ops, exe.report()
