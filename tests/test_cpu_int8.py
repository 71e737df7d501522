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

from conftest import DT, _one, _qdq_cnn, _rand, conv_model, matmul_model  # noqa: E402


def check_native_equal(model, feeds):
    ref = _one(gx.compile(model, target="numpy")(**feeds))
    exe = gx.compile(model, target="cpu")
    got = _one(exe(**feeds))
    assert exe.fallback_ops == [], exe.report()
    np.testing.assert_array_equal(got, ref)
    return got


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
