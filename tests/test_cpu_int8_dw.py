"""Native int8 depthwise conv (kernels_int8_dw.QDepthwise, lower_quant_dw.py) and global
average pooling on quantized tensors (int8_global_average_pool: passes/qdq_pool.py,
kernels_int8_pool.py): bit-equal to the numpy reference on the forced VNNI and AVX2
paths, and a QDQ MobileNet-style model from onnxruntime's quantizer in 8 bits from its
QuantizeLinear to its classifier, within one quantization step of onnxruntime."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import galaxir as gx  # noqa: E402
from galaxir.errors import GalaxirError  # noqa: E402
from galaxir.ir import GraphBuilder  # noqa: E402
from galaxir.ir.types import DType, tensor  # noqa: E402

from conftest import DT, _one, _path_ok, _rand, conv_model, native_kernels  # noqa: E402

SLOW = dict(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


@pytest.fixture(params=["1", "0"], ids=["vnni", "avx2"])
def path(request, monkeypatch):
    """The instruction path, forced (QDepthwise's vectors are 8 lanes on any host)."""
    if not _path_ok(request.param, "0"):
        pytest.skip("the host lacks this instruction set")
    monkeypatch.setenv("GALAXIR_CPU_VNNI", request.param)
    return request.param


def _set_wz(model, wz):
    for init in model.graph.initializer:
        if init.name == "wz":
            init.CopyFrom(numpy_helper.from_array(wz, "wz"))
    return model


def dw_model(rng, N, C, H, W, k, s, p, xdt, wdt, symmetric, dil=1):
    """A QLinearConv with one channel per group; ``symmetric``: weight zero points 0
    (int8) / 128 (uint8), as quantizers make them (the VNNI path takes those)."""
    m = conv_model(rng, N, C, H, W, C, k, s, p, C, xdt, wdt, True, "QLinearConv", dil)
    if symmetric:
        _set_wz(m, np.full(C, 0 if wdt == np.int8 else 128, wdt))
    return m


def check_dw(model, feeds, want_kernel=True):
    ref = _one(gx.compile(model, target="numpy")(**feeds))
    exe = gx.compile(model, target="cpu")
    got = _one(exe(**feeds))
    assert exe.fallback_ops == [], exe.report()
    kernels = native_kernels(exe)
    assert ("QDepthwise" in kernels) == want_kernel, kernels
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 0), (7, 2, 3),
                                   (3, 1, 0)])
def test_depthwise_all_paths(path, k, s, p):
    """Wide planes (one output row per vector) and narrow ones (several rows per vector)."""
    rng = np.random.default_rng(k * 10 + s)
    for (H, W), xdt, wdt, sym in itertools.product(((11, 19), (7, 7)), DT, DT, (True, False)):
        if W + 2 * p < k:
            continue
        m = dw_model(rng, 2, 5, H, W, k, s, p, xdt, wdt, sym)
        check_dw(m, {"x": _rand(rng, xdt, (2, 5, H, W))})


def test_narrow_planes_pack_rows():
    """MobileNet's 7x7 and 14x14 stride-1 planes put 2 or 4 output rows in a vector."""
    from galaxir.backends.cpu.kernels_int8_dw import LANES, QDepthwise
    base = dict(x_signed=False, zx=3, y_signed=False, zy=0, lo=0, hi=255, batch=1, C=8,
                kh=3, kw=3, pt=1, pl=1)
    k7 = QDepthwise(vnni=True, H=7, W=7, OH=7, OW=7, **base)
    k14 = QDepthwise(vnni=True, H=14, W=14, OH=14, OW=14, **base)
    k56 = QDepthwise(vnni=True, H=56, W=56, OH=56, OW=56, **base)
    assert (k7.row_lanes, k7.wq) == (2, 8) and k14.row_lanes == 4
    assert k56.row_lanes == LANES and k56.wq >= 58
    assert QDepthwise(vnni=False, H=7, W=7, OH=7, OW=7, **base).row_lanes == 4


def test_depthwise_vnni_and_avx2_bit_equal(monkeypatch):
    """The two instruction paths (and the GEMM the kernel replaces) agree bit for bit."""
    from galaxir.backends.cpu import kernels_int8 as KI
    if not KI.host_vnni(8):
        pytest.skip("no VNNI on this host")
    rng = np.random.default_rng(3)
    m = dw_model(rng, 1, 24, 15, 17, 3, 2, 1, np.uint8, np.int8, True)
    x = _rand(rng, np.uint8, (1, 24, 15, 17))
    outs = []
    for vnni, dw in (("1", "1"), ("0", "1"), ("1", "0")):
        monkeypatch.setenv("GALAXIR_CPU_VNNI", vnni)
        monkeypatch.setenv("GALAXIR_CPU_INT8_DW", dw)
        exe = gx.compile(m, target="cpu")
        outs.append(_one(exe(x=x)))
        assert ("QDepthwise" in native_kernels(exe)) == (dw == "1")
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@settings(max_examples=25, **SLOW)
@given(N=st.integers(1, 2), C=st.integers(1, 20), H=st.integers(1, 12), W=st.integers(1, 40),
       k=st.sampled_from([3, 5, 7]), s=st.sampled_from([1, 2, 3]), p=st.integers(0, 3),
       dil=st.sampled_from([1, 1, 2]), xs=st.sampled_from(DT), ws=st.sampled_from(DT),
       sym=st.booleans(), seed=st.integers(0, 2**16))
def test_depthwise_shapes(path, N, C, H, W, k, s, p, dil, xs, ws, sym, seed):
    span = (k - 1) * dil + 1
    if H + 2 * p < span or W + 2 * p < span:
        return
    rng = np.random.default_rng(seed)
    m = dw_model(rng, N, C, H, W, k, s, p, xs, ws, sym, dil)
    # stride 3 and dilation stay on the GEMM
    check_dw(m, {"x": _rand(rng, xs, (N, C, H, W))}, want_kernel=s in (1, 2) and dil == 1)


# -- global average pooling on quantized tensors -----------------------------------------------
def _gap_graph(rng, xdt, ydt, shape, form):
    """DQ -> GlobalAveragePool / ReduceMean(H, W) (-> Flatten) -> Q -> DQ."""
    inits = {"sx": np.float32(rng.random() * 0.1 + 0.01), "zx": _rand(rng, xdt, ()),
             "sy": np.float32(rng.random() * 0.05 + 0.005), "zy": _rand(rng, ydt, ()),
             "axes": np.array([2, 3], np.int64)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["f"])]
    if form == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", ["f"], ["m"]))
    elif form == "gap_flatten":
        nodes += [helper.make_node("GlobalAveragePool", ["f"], ["g"]),
                  helper.make_node("Flatten", ["g"], ["m"], axis=1)]
    else:
        nodes.append(helper.make_node("ReduceMean", ["f", "axes"], ["m"],
                                      keepdims=int(form == "mean_keep")))
    rank = 2 if form in ("gap_flatten", "mean_drop") else 4
    nodes += [helper.make_node("QuantizeLinear", ["m", "sy", "zy"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}[xdt], list(shape))],  # noqa: E501
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * rank)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), inits["sy"]


@pytest.mark.parametrize("form", ["gap", "gap_flatten", "mean_keep", "mean_drop"])
def test_quantized_global_average_pool(form):
    """The float QDQ graph (the reference) rounds its float32 mean; the int8 op the exact
    one: equal but for a rounding tie, never more than one step apart."""
    rng = np.random.default_rng(11)
    for xdt, ydt in itertools.product(DT, DT):
        m, sy = _gap_graph(rng, xdt, ydt, (2, 37, 7, 9), form)
        x = _rand(rng, xdt, (2, 37, 7, 9))
        exe = gx.compile(m, target="cpu")
        got = _one(exe(x=x))
        ref = _one(gx.compile(m, target="numpy")(x=x))
        assert exe.fallback_ops == [] and "int8_global_average_pool" in exe.native_ops
        assert exe.native_ops.count("quantize_linear") == 0, exe.report()
        assert got.shape == ref.shape
        diff = np.abs(got - ref) / sy
        assert diff.max() <= 1 + 1e-4 and np.mean(diff > 0.5) < 0.05


@settings(max_examples=15, **SLOW)
@given(N=st.integers(1, 3), C=st.integers(1, 40), H=st.integers(1, 30), W=st.integers(1, 30),
       keep=st.booleans(), xs=st.sampled_from(DT), ys=st.sampled_from(DT),
       seed=st.integers(0, 2**16))
def test_int8_global_average_pool_kernel_matches_reference(N, C, H, W, keep, xs, ys, seed):
    rng = np.random.default_rng(seed)
    gb = GraphBuilder()
    x = gb.input("x", tensor(DType.from_numpy(np.dtype(xs)), N, C, H, W))
    c = lambda v: gb.constant(np.asarray(v))  # noqa: E731
    y = gb.op("int8_global_average_pool", x, c(np.float32(rng.random() * 0.1 + 1e-3)),
              c(_rand(rng, xs, ())), c(np.float32(rng.random() * 0.02 + 1e-4)),
              c(_rand(rng, ys, ())), keepdims=int(keep))
    gb.output(y, "y")
    mod = gb.module()
    xv = _rand(rng, xs, (N, C, H, W))
    exe = gx.compile(mod, target="cpu")
    got = _one(exe(x=xv))
    assert exe.fallback_ops == [] and native_kernels(exe) == ["QGlobalAvgPool"]
    np.testing.assert_array_equal(got, _one(gx.compile(mod, target="numpy")(x=xv)))


def test_quantized_mean_bad_scale_names_the_op():
    rng = np.random.default_rng(12)
    m, _ = _gap_graph(rng, np.uint8, np.uint8, (1, 4, 3, 3), "gap")
    for init in m.graph.initializer:
        if init.name == "sx":
            init.CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), "sx"))
    with pytest.raises(GalaxirError, match="dequantize_linear.*scale must be positive"):
        gx.compile(m, target="cpu")


# -- a QDQ MobileNet-style model from onnxruntime's quantizer ----------------------------------
def _qdq_mobilenet(tmp_path):
    torch = pytest.importorskip("torch")
    q = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)

    def block(cin, cout, stride):
        mid = cin * 4
        return torch.nn.Sequential(
            torch.nn.Conv2d(cin, mid, 1), torch.nn.BatchNorm2d(mid), torch.nn.ReLU6(),
            torch.nn.Conv2d(mid, mid, 3, stride, 1, groups=mid), torch.nn.BatchNorm2d(mid),
            torch.nn.ReLU6(), torch.nn.Conv2d(mid, cout, 1), torch.nn.BatchNorm2d(cout))

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU6(),
                              block(8, 16, 2), block(16, 16, 1), torch.nn.Conv2d(16, 32, 1),
                              torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(32, 10))
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, 32, 32))
    net.eval()
    fp, qp = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    torch.onnx.export(net, torch.randn(1, 3, 32, 32), fp, input_names=["x"],
                      output_names=["y"], dynamo=False)
    rng = np.random.default_rng(0)
    cal = iter([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)])

    class Reader(q.CalibrationDataReader):
        def get_next(self):
            return next(cal, None)

    q.quantize_static(fp, qp, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    return qp


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qdq_mobilenet_from_onnxruntime_stays_in_int8(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    qp = _qdq_mobilenet(tmp_path)
    exe = gx.compile(qp, target="cpu")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = _one(exe(x=x))
    assert exe.fallback_ops == [] and len(exe.last.segments) == 1, exe.report()
    ops = exe.native_ops
    # one QuantizeLinear (the input), one DequantizeLinear (the classifier's output)
    assert ops.count("quantize_linear") == 1 and ops.count("dequantize_linear") == 1, ops
    assert "int8_global_average_pool" in ops and "int8_matmul" in ops
    assert native_kernels(exe).count("QDepthwise") == 2
    sess = ort.InferenceSession(qp, providers=["CPUExecutionProvider"])
    model = onnx.load(qp)
    out_step = [numpy_helper.to_array(i) for i in model.graph.initializer
                if i.name.endswith("_scale")]
    step = max(float(np.max(s)) for s in out_step)
    for _ in range(3):
        want = sess.run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= step + 1e-6
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        got = _one(exe(x=x))
