"""Native int8 on the cpu backend (kernels_int8.py, lower_quant.py, passes/qdq.py):
bit-equal to the numpy reference on every forced path (VNNI / AVX2, 16 / 8 lanes), QDQ
models from onnxruntime's quantizer as one native segment, and bad scales refused."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import galaxir as gx  # noqa: E402
from galaxir.backends.cpu import jit  # noqa: E402
from galaxir.errors import GalaxirError, CompileError  # noqa: E402

ONNX_T = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}
PATHS = [("1", "1"), ("0", "1"), ("1", "0"), ("0", "0")]   # (VNNI, WIDE)


def _path_ok(vnni: str, wide: str) -> bool:
    if vnni == "1":
        return jit.has_feature("avx512vnni") or jit.has_feature("avxvnni")
    return jit.has_feature("avx2")


@pytest.fixture(params=PATHS, ids=lambda p: f"vnni{p[0]}-wide{p[1]}")
def path(request, monkeypatch):
    vnni, wide = request.param
    if not _path_ok(vnni, wide):
        pytest.skip("the host lacks this instruction set")
    monkeypatch.setenv("GALAXIR_CPU_VNNI", vnni)
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    return request.param


def _rand(rng, dt, shape):
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max + 1, shape).astype(dt)


def _params(rng, wdt, n, per_channel):
    shape = (n,) if per_channel else ()
    ws = (rng.random(shape) * 0.01 + 0.001).astype(np.float32)
    info = np.iinfo(wdt)
    wz = rng.integers(info.min // 2, info.max // 2 + 1, shape).astype(wdt)
    return ws, wz


def matmul_model(rng, M, K, N, xdt, wdt, per_channel, op="QLinearMatMul"):
    w = _rand(rng, wdt, (K, N))
    ws, wz = _params(rng, wdt, N, per_channel)
    xz = np.array(7 if xdt == np.uint8 else -3, xdt)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(xz, "xz"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(wz, "wz"), numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
             numpy_helper.from_array(np.array(100, np.uint8), "yz")]
    if op == "MatMulInteger":
        node, yt = helper.make_node(op, ["x", "w", "xz", "wz"], ["y"]), TensorProto.INT32
    else:
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
        yt = TensorProto.UINT8
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", ONNX_T[xdt], [M, K])],
                          [helper.make_tensor_value_info("y", yt, [M, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def conv_model(rng, N, C, H, W, M, k, s, p, g, xdt, wdt, per_channel, op="QLinearConv", dil=1):
    w = _rand(rng, wdt, (M, C // g, k, k))
    ws, wz = _params(rng, wdt, M, per_channel)
    xz = np.array(7 if xdt == np.uint8 else -3, xdt)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(xz, "xz"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(wz, "wz"), numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
             numpy_helper.from_array(np.array(-5, np.int8), "yz"),
             numpy_helper.from_array(rng.integers(-5000, 5000, M).astype(np.int32), "b")]
    att = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g, dilations=[dil, dil])
    if op == "ConvInteger":
        node, yt = helper.make_node(op, ["x", "w", "xz", "wz"], ["y"], **att), TensorProto.INT32
    else:
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], **att)
        yt = TensorProto.INT8
    gr = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", ONNX_T[xdt], [N, C, H, W])],
                           [helper.make_tensor_value_info("y", yt, [None] * 4)], inits)
    return helper.make_model(gr, opset_imports=[helper.make_opsetid("", 13)])


def _one(r):
    return r[0] if isinstance(r, (list, tuple)) else r


def check_native_equal(model, feeds):
    ref = _one(gx.compile(model, target="numpy")(**feeds))
    exe = gx.compile(model, target="cpu")
    got = _one(exe(**feeds))
    assert exe.fallback_ops == [], exe.report()
    np.testing.assert_array_equal(got, ref)
    return got


DT = [np.uint8, np.int8]


@pytest.mark.parametrize("op", ["QLinearMatMul", "MatMulInteger"])
def test_matmul_all_paths(path, op):
    rng = np.random.default_rng(0)
    for xdt, wdt, pc in itertools.product(DT, DT, (False, True)):
        m = matmul_model(rng, 7, 37, 19, xdt, wdt, pc, op)
        check_native_equal(m, {"x": _rand(rng, xdt, (7, 37))})


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "im2col"])
@pytest.mark.parametrize("op", ["QLinearConv", "ConvInteger"])
def test_conv_all_paths(path, op, direct, monkeypatch):
    monkeypatch.setenv("GALAXIR_CPU_INT8_DIRECT", direct)
    rng = np.random.default_rng(1)
    for xdt, wdt, pc in itertools.product(DT, DT, (False, True)):
        for stride, dil in ((2, 1), (1, 2)):
            m = conv_model(rng, 2, 8, 7, 6, 12, 3, stride, 1, 2, xdt, wdt, pc, op, dil)
            check_native_equal(m, {"x": _rand(rng, xdt, (2, 8, 7, 6))})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(1, 40), K=st.integers(1, 70), N=st.integers(1, 45), xs=st.sampled_from(DT),
       ws=st.sampled_from(DT), pc=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_shapes(path, M, K, N, xs, ws, pc, seed):
    rng = np.random.default_rng(seed)
    check_native_equal(matmul_model(rng, M, K, N, xs, ws, pc), {"x": _rand(rng, xs, (M, K))})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(C=st.integers(1, 6), H=st.integers(1, 9), W=st.integers(1, 9), Mg=st.integers(1, 9),
       k=st.sampled_from([1, 2, 3]), s=st.sampled_from([1, 2, 3]), p=st.integers(0, 2),
       g=st.sampled_from([1, 2]), xs=st.sampled_from(DT), ws=st.sampled_from(DT),
       pc=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_shapes(path, C, H, W, Mg, k, s, p, g, xs, ws, pc, seed):
    if H + 2 * p < k or W + 2 * p < k:
        return
    rng = np.random.default_rng(seed)
    m = conv_model(rng, 1, C * g, H, W, Mg * g, k, s, p, g, xs, ws, pc)
    check_native_equal(m, {"x": _rand(rng, xs, (1, C * g, H, W))})


def test_vnni_and_avx2_bit_equal(monkeypatch):
    if not (jit.has_feature("avx512vnni") or jit.has_feature("avxvnni")):
        pytest.skip("no VNNI on this host")
    rng = np.random.default_rng(3)
    m = conv_model(rng, 1, 16, 10, 10, 24, 3, 1, 1, 1, np.uint8, np.int8, True, "ConvInteger")
    x = _rand(rng, np.uint8, (1, 16, 10, 10))
    outs = []
    for v in ("1", "0"):
        monkeypatch.setenv("GALAXIR_CPU_VNNI", v)
        outs.append(_one(gx.compile(m, target="cpu")(x=x)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_quantize_dequantize_native():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 3, 5)) * 4).astype(np.float32)
    x[0, 0, 0] = 1e9
    x[0, 0, 1] = -np.inf
    for dt, axis, per in itertools.product(DT, (1, -1), (False, True)):
        n = x.shape[axis] if per else 1
        s = (rng.random(n) * 0.1 + 0.01).astype(np.float32).reshape((n,) if per else ())
        z = _rand(rng, dt, s.shape)
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
                              [numpy_helper.from_array(s, "s"), numpy_helper.from_array(z, "z")])
        check_native_equal(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), {"x": x})


@pytest.mark.parametrize("bad", [0.0, -0.5, np.nan, np.inf])
def test_bad_scale_names_the_op(bad):
    rng = np.random.default_rng(5)
    m = matmul_model(rng, 3, 8, 4, np.uint8, np.int8, False)
    for init in m.graph.initializer:
        if init.name == "ys":
            init.CopyFrom(numpy_helper.from_array(np.array(bad, np.float32), "ys"))
    with pytest.raises(CompileError, match="qlinear_matmul.*positive and finite"):
        gx.compile(m, target="cpu")


def test_bad_quantize_scale_names_the_op():
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s"], ["q"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("q", TensorProto.UINT8, [4])],
                          [numpy_helper.from_array(np.array(0.0, np.float32), "s")])
    # the IR's verifier rejects a constant non-positive scale before the backend sees it
    with pytest.raises(GalaxirError, match="quantize_linear.*scale must be positive"):
        gx.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), target="cpu")


def _qdq_cnn(tmp_path):
    torch = pytest.importorskip("torch")
    q = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1 = torch.nn.Conv2d(c, c, 3, padding=1)
            self.c2 = torch.nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))) + x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.b1, self.b2 = Block(16), Block(16)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            x = self.b2(self.pool(self.b1(torch.relu(self.stem(x)))))
            return self.fc(x.mean((2, 3)))

    fp, qp = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    torch.onnx.export(Net().eval(), torch.randn(1, 3, 32, 32), fp, input_names=["x"],
                      output_names=["y"], dynamo=False)
    rng = np.random.default_rng(0)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                            for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(fp, qp, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    return qp


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qdq_model_from_onnxruntime_is_one_native_segment(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    qp = _qdq_cnn(tmp_path)
    exe = gx.compile(qp, target="cpu")
    assert exe.fallback_ops == [] and len(exe.last.segments) == 1, exe.report()
    assert exe.native_ops.count("int8_conv") == 5 and "int8_matmul" in exe.native_ops
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(qp, so, providers=["CPUExecutionProvider"])
    model = onnx.load(qp)
    step = [numpy_helper.to_array(i) for i in model.graph.initializer
            if "y_scale" in i.name or i.name.endswith("_scale")]
    out_scale = max(float(np.max(s)) for s in step)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = _one(exe(x=x))
        assert np.abs(got - want).max() <= out_scale + 1e-6
    # the numpy reference keeps the float QDQ graph
    assert "int8_conv" not in {op.name for op in gx.optimize(gx.import_model(qp), 3).walk()}


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused", "store"])
def test_conv_fused_requantization(path, fused, monkeypatch):
    """The direct conv requantizing in its register tile (default) and the separate store
    pass give the reference's bytes: 19 output columns end each row in a partial vector."""
    monkeypatch.setenv("GALAXIR_CPU_INT8_FUSED", fused)
    monkeypatch.setenv("GALAXIR_CPU_INT8_DIRECT", "1")
    rng = np.random.default_rng(3)
    for xdt, wdt in ((np.uint8, np.int8), (np.int8, np.uint8)):
        m = conv_model(rng, 2, 12, 9, 19, 20, 3, 1, 1, 1, xdt, wdt, True)
        got = check_native_equal(m, {"x": _rand(rng, xdt, (2, 12, 9, 19))})
        assert int(got.max()) - int(got.min()) > 100


def test_conv_direct_or_im2col_by_lane_occupancy(monkeypatch):
    from galaxir.backends.cpu.lower_quant import _direct
    monkeypatch.delenv("GALAXIR_CPU_INT8_DIRECT", raising=False)
    assert not _direct(7, 49, 16)          # 7 of 16 lanes per row vs 49 of 64
    assert _direct(56, 56 * 56, 16) and _direct(14, 196, 16) and _direct(49, 49, 16)
    monkeypatch.setenv("GALAXIR_CPU_INT8_DIRECT", "1")
    assert _direct(7, 49, 16)
