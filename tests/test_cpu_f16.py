"""float16 / bfloat16 models on the cpu backend (lower_f16.py, kernels_f16.py): no conv,
matmul, gemm, elementwise or reduction op falls back, results match the numpy reference
within the 16-bit type's rounding, on both lane widths."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import galaxir as gx  # noqa: E402

TYPES = {"f16": (np.float16, TensorProto.FLOAT16, 2e-2),
         "bf16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16, 8e-2)}


@pytest.fixture(params=["1", "0"], ids=["wide", "narrow"])
def wide(request, monkeypatch):
    monkeypatch.setenv("GALAXIR_CPU_WIDE", request.param)
    return request.param


def _one(r):
    return r[0] if isinstance(r, (list, tuple)) else r


def _check(model, feeds, tol):
    ref = _one(gx.compile(model, target="numpy")(**feeds)).astype(np.float32)
    exe = gx.compile(model, target="cpu")
    got = _one(exe(**feeds))
    assert exe.fallback_ops == [], exe.report()
    assert got.dtype == next(iter(feeds.values())).dtype
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got.astype(np.float32), ref, rtol=0, atol=tol * scale)
    return exe


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_conv_block(wide, kind):
    dt, onnx_t, tol = TYPES[kind]
    rng = np.random.default_rng(0)
    C = 16
    w = (rng.standard_normal((C, C, 3, 3)) * 0.1).astype(dt)
    b = (rng.standard_normal(C) * 0.1).astype(dt)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", onnx_t, [2, C, 12, 12])],
               [helper.make_tensor_value_info("y", onnx_t, [2, C, 1, 1])],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    exe = _check(m, {"x": rng.standard_normal((2, C, 12, 12)).astype(dt)}, tol)
    assert "cast" in exe.native_ops


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(1, 20), K=st.integers(1, 40), N=st.integers(1, 30),
       kind=st.sampled_from(["f16", "bf16"]), seed=st.integers(0, 2**16))
def test_gemm_and_elementwise(wide, M, K, N, kind, seed):
    dt, onnx_t, tol = TYPES[kind]
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(dt)
    b = rng.standard_normal(N).astype(dt)
    w2 = (rng.standard_normal((N, N)) / np.sqrt(N)).astype(dt)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Tanh", ["g"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["mm"]),
             helper.make_node("Mul", ["mm", "t"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", onnx_t, [M, K])],
               [helper.make_tensor_value_info("y", onnx_t, [M, N])],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                numpy_helper.from_array(w2, "w2")])
    _check(m, {"x": rng.standard_normal((M, K)).astype(dt)}, tol)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_casts_round_like_the_reference(kind):
    dt, onnx_t, _ = TYPES[kind]
    x = np.array([0.1, -2.5, 65504.0, 1e-8, np.inf, -np.inf, np.nan, 3.0e38, 1.00390625],
                 np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=onnx_t),
             helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])], [])
    exe = gx.compile(m, target="cpu")
    assert exe.fallback_ops == []
    np.testing.assert_array_equal(_one(exe(x=x)), _one(gx.compile(m, target="numpy")(x=x)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_f16_model_runs_natively(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Sigmoid()).eval().half()
    p = str(tmp_path / "m.onnx")
    torch.onnx.export(net, torch.randn(1, 8, 10, 10).half(), p, input_names=["x"], dynamo=False)
    x = np.random.default_rng(1).standard_normal((1, 8, 10, 10)).astype(np.float16)
    _check(p, {"x": x}, 2e-2)


# -- bf16 products on vdpbf16ps (kernels_bf16.GemmBf16, lower_bf16.py) ----------------------------
def _host_bf16() -> bool:
    from galaxir.backends.cpu import jit
    return jit.has_feature("avx512bf16") and jit.has_feature("avx512f")


@pytest.fixture(params=["1", "0"], ids=["dpbf16", "f32-path"])
def bf16dot(request, monkeypatch):
    """Both bf16 product paths, forced: vdpbf16ps (on hosts with AVX512-BF16) and the
    float32 kernels between casts."""
    if request.param == "1" and not _host_bf16():
        pytest.skip("host has no AVX512-BF16")
    monkeypatch.setenv("GALAXIR_CPU_WIDE", "1")
    monkeypatch.setenv("GALAXIR_CPU_BF16DOT", request.param)
    return request.param == "1"


def _kernels(exe) -> list[str]:
    return [detail for _, where, detail in exe.last.placement() if where == "native"]


def test_pack_b_bf16_pairs_k_two_at_a_time():
    from galaxir.backends.cpu.kernels_bf16 import NW, pack_b_bf16
    rng = np.random.default_rng(0)
    b = rng.standard_normal((7, 40)).astype(ml_dtypes.bfloat16)
    p = pack_b_bf16(b)
    assert p.shape == (2, 4, NW) and p.dtype == np.uint32
    bits = b.view(np.uint16)
    for k in range(7):
        for n in (0, 5, 31, 32, 39):
            half = (p[n // NW, k // 2, n % NW] >> (16 * (k % 2))) & 0xFFFF
            assert half == bits[k, n]
    assert not (p[1, :, 8:]).any()              # columns past N
    assert not (p[:, 3, :] >> 16).any()         # the pair row past an odd K


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(1, 30), K=st.integers(1, 70), N=st.integers(16, 70),
       form=st.sampled_from(["gemm_relu", "matmul3d", "linear_tanh"]), seed=st.integers(0, 2**16))
def test_bf16_products(bf16dot, M, K, N, form, seed):
    dt, onnx_t, tol = TYPES["bf16"]
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(dt)
    b = rng.standard_normal(N).astype(dt)
    inits = [numpy_helper.from_array(b, "b")]
    if form == "gemm_relu":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "w"))
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
                 helper.make_node("Relu", ["g"], ["y"])]
        xshape = [M, K]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
                 helper.make_node("Add", ["mm", "b"], ["y" if form == "matmul3d" else "l"])]
        if form == "linear_tanh":
            nodes.append(helper.make_node("Tanh", ["l"], ["y"]))
        xshape = [2, M, K]
    m = _model(nodes, [helper.make_tensor_value_info("x", onnx_t, xshape)],
               [helper.make_tensor_value_info("y", onnx_t, xshape[:-1] + [N])], inits)
    exe = _check(m, {"x": rng.standard_normal(xshape).astype(dt)}, tol)
    assert ("gemm_bf16" in _kernels(exe)) == bf16dot


def test_bf16_dot_path_is_chosen_from_the_host(monkeypatch):
    from galaxir.backends.cpu import jit
    from galaxir.backends.cpu.lower_bf16 import use_bf16_dot
    monkeypatch.delenv("GALAXIR_CPU_BF16DOT", raising=False)
    monkeypatch.setenv("GALAXIR_CPU_WIDE", "1")
    assert use_bf16_dot() == (_host_bf16() and not jit.has_feature("avx512fp16"))
    monkeypatch.setenv("GALAXIR_CPU_BF16DOT", "1")
    assert use_bf16_dot() == _host_bf16()     # forcing cannot add an instruction
    monkeypatch.setenv("GALAXIR_CPU_WIDE", "0")
    assert not use_bf16_dot()                 # 16-lane tiles only
    monkeypatch.setenv("GALAXIR_CPU_WIDE", "1")
    monkeypatch.setenv("GALAXIR_CPU_BF16DOT", "0")
    assert not use_bf16_dot()


def test_convert_float_round_trips_are_skipped():
    # convert_float's f32 -> f16 -> f32 boundary casts between a kept op (softmax,
    # layer_norm) and a widened one read the f32 value; the dead casts are dropped
    from tests.quant_models import feeds, mlp
    m = mlp()
    hm = gx.convert_float(m, "f16")
    exe = gx.compile(hm, target="cpu")
    f = feeds("x", (1, 8, 64), 1, 6)[0]
    got = exe.run(f)["y"]
    casts = [op for op, where, _ in exe.last.placement() if op.name == "cast"]
    assert exe.fallback_ops == [] and len(casts) < hm.op_counts()["cast"]
    assert not any(op.operands[0].producer is not None and op.operands[0].producer.name == "cast"
                   for op in casts)
    ref = gx.compile(m, target="numpy").run(f)["y"]
    np.testing.assert_allclose(got, ref, rtol=3e-3, atol=1e-3)
