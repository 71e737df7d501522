"""gx.quantize (static QDQ, dynamic, int4 weights), the accuracy report and min_sqnr,
against the float model on the numpy reference (and the cpu backend, which runs what it
lacks natively on the reference)."""
import json

import numpy as np
import pytest

import galaxir as gx
from galaxir.errors import ExecutionError, GalaxirError, InputValidationError, ShapeInferenceError
from galaxir.ir.builder import GraphBuilder
from galaxir.ir.types import tensor
from galaxir.precision import quantization_info, weight_bytes
from galaxir.precision.params import QuantizationError, check_params, from_range
from tests.quant_models import cnn, feeds, mlp

CAL = feeds("x", (2, 3, 16, 16), 8, 1)
EVAL = feeds("x", (2, 3, 16, 16), 3, 2)


def run(m, f, target="numpy"):
    return gx.compile(m, target=target).run(f)


def sqnr(a, b):
    return 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum((a - b).astype(np.float64) ** 2))


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_qdq_structure_and_accuracy(method):
    m = cnn()
    qm = gx.quantize(m, CAL, method=method, progress=False)
    c = qm.op_counts()
    # x, relu output, add output (gemm input) and conv#1 output; 3 weights + 2 biases
    assert c["quantize_linear"] == 4 and c["dequantize_linear"] == 4 + 3 + 2
    int8 = [op.attr("value") for op in qm.walk() if op.name == "constant" and op.attr("value").dtype == np.int8]
    assert sorted(a.shape for a in int8 if a.ndim > 1) == [(8, 3, 3, 3), (8, 8, 1, 1), (10, 2048)]
    ref, got = run(m, EVAL[0])["z"], run(qm, EVAL[0])["z"]
    assert sqnr(ref, got) > (30 if method != "entropy" else 15)
    np.testing.assert_allclose(run(qm, EVAL[0], "cpu")["z"], got, rtol=1e-4, atol=1e-4)
    assert quantization_info(qm)["mode"] == "static" and quantization_info(qm)["method"] == method


def test_per_channel_is_per_output_channel_and_bias_is_int32():
    qm = gx.quantize(cnn(), CAL, progress=False)
    dqs = [op for op in qm.walk() if op.name == "dequantize_linear"]
    w_conv = [d for d in dqs if d.operand(0).type.dtype.name == "int8" and len(d.operand(0).type.shape) == 4]
    assert all(d.attr("axis") == 0 and d.operand(1).type.shape == (8,) for d in w_conv)
    gemm_w = [d for d in dqs if d.operand(0).type.shape == (10, 2048)][0]
    assert gemm_w.attr("axis") == 0  # transB: [N, K], per output row
    biases = [d for d in dqs if d.operand(0).type.dtype.name == "int32"]
    assert len(biases) == 2
    pt = gx.quantize(cnn(), CAL, per_channel=False, progress=False)
    assert all(d.operand(1).type.shape in ((), (1,)) for d in pt.walk() if d.name == "dequantize_linear")


def test_relu_output_is_quantized_after_the_relu_unsigned():
    qm = gx.quantize(cnn(), CAL, progress=False)
    relu = [op for op in qm.walk() if op.name == "relu"][0]
    q = [u for u in relu.results[0].users if u.name == "quantize_linear"]
    assert q and q[0].operand(2).constant_value() == 0  # [0, max]: zero point 0


def test_exclude_keeps_ops_float():
    qm = gx.quantize(cnn(), CAL, exclude=["gemm"], progress=False)
    gemm = [op for op in qm.walk() if op.name == "gemm"][0]
    assert gemm.operand(1).constant_value() is not None  # the weight stays f32
    assert json.loads(qm.metadata["quantization"])["kept_float"] == []


def test_dynamic_quantization():
    m = cnn()
    qm = gx.quantize(m, None, progress=False)
    c = qm.op_counts()
    assert c["dynamic_quantize_linear"] == 3 and c["conv_integer"] == 2 and c["matmul_integer"] == 1
    assert "conv" not in c and "gemm" not in c
    ref, got = run(m, EVAL[1])["z"], run(qm, EVAL[1])["z"]
    assert sqnr(ref, got) > 30
    np.testing.assert_allclose(run(qm, EVAL[1], "cpu")["z"], got, rtol=1e-4, atol=1e-4)


def test_dynamic_3d_matmul_model():
    m = mlp()
    f = feeds("x", (1, 8, 64), 2, 3)
    qm = gx.quantize(m, None)
    assert qm.op_counts()["matmul_integer"] == 2
    assert sqnr(run(m, f[0])["y"], run(qm, f[0])["y"]) > 30


def test_weights_shared_through_identity_are_quantized():
    """torch's ONNX export shares the equal weights of copied layers through Identity
    nodes: every matmul behind one is quantized (static and dynamic), the input untouched."""
    rng = np.random.default_rng(5)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 8, 32))
    w = gb.constant((rng.standard_normal((32, 32)) / 6).astype(np.float32))
    h = gb.relu(gb.matmul(x, w))
    gb.output(gb.matmul(h, gb.identity(w)), "y")
    m = gb.module()
    before = m.to_text()
    f = feeds("x", (1, 8, 32), 4, 6)
    st = gx.quantize(m, f, progress=False)
    dy = gx.quantize(m, None)
    assert m.to_text() == before and m.op_counts()["identity"] == 1
    assert "matmul" not in dy.op_counts() and dy.op_counts()["matmul_integer"] == 2
    mm = [op for op in st.walk() if op.name == "matmul"]
    assert len(mm) == 2 and all(op.operand(1).producer.name == "dequantize_linear" for op in mm)
    for q in (st, dy):
        assert sqnr(run(m, f[0])["y"], run(q, f[0])["y"]) > 30


@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_blockwise_weights(block, symmetric):
    m = mlp(k=128, n=128)
    qm = gx.quantize(m, weight_bits=4, block_size=block, symmetric=symmetric)
    dqs = [op for op in qm.walk() if op.name == "dequantize_linear"]
    assert len(dqs) == 2 and all(d.attr("block_size") == block and d.attr("axis") == 0 for d in dqs)
    w = dqs[0].operand(0).constant_value()
    assert w.dtype.name == ("int4" if symmetric else "uint4") and w.shape == (128, 128)
    assert dqs[0].operand(1).type.shape == (128 // block, 128)
    assert (len(dqs[0].operands) == 3) == (not symmetric)
    f = feeds("x", (1, 8, 128), 2, 4)
    assert sqnr(run(m, f[0])["y"], run(qm, f[0])["y"]) > 15
    # the dequantized weight: every element within half a step of the float weight
    orig = [op for op in m.walk() if op.name == "matmul"][0].operand(1).constant_value()
    scale = np.repeat(dqs[0].operand(1).constant_value(), block, axis=0)
    zp = np.repeat(dqs[0].operand(2).constant_value().astype(np.float32), block, axis=0) if not symmetric else 0
    back = (w.astype(np.float32) - zp) * scale
    assert np.all(np.abs(back - orig) <= scale * 0.5 + 1e-6)


def test_int4_weight_size_shrinks():
    m = mlp(k=256, n=256)
    qm = gx.quantize(m, weight_bits=4, block_size=64)
    ratio = weight_bytes(m) / weight_bytes(qm)
    assert 6.0 < ratio < 8.0


def test_report_lists_ops_worst_first():
    m = cnn()
    qm = gx.quantize(m, CAL, progress=False)
    rep = gx.quantization_report(m, qm, EVAL)
    assert [r.label for r in sorted(rep.rows, key=lambda r: r.label)] == ["conv#0", "conv#1", "gemm#2"]
    s = [r.sqnr_db for r in rep.rows]
    assert s == sorted(s) and all(np.isfinite(s))
    assert abs(rep.model_sqnr_db - np.mean([sqnr(run(m, f)["z"], run(qm, f)["z"]) for f in EVAL])) < 1.5
    assert "conv#0" in str(rep) and rep.as_dicts()[0]["label"] == rep.rows[0].label
    assert rep.feeds == 3


def test_min_sqnr_keeps_the_worst_ops_in_float():
    m = cnn()
    full = gx.quantize(m, CAL, progress=False)
    base = gx.quantization_report(m, full, EVAL).model_sqnr_db
    target = base + 4
    qm = gx.quantize(m, CAL, min_sqnr=target, feeds=EVAL, progress=False)
    kept = quantization_info(qm)["kept_float"]
    assert kept, "something must stay float to gain 4 dB"
    assert gx.quantization_report(m, qm, EVAL).model_sqnr_db >= target
    # those ops still have their float weights
    labels = {op.results[0].name: op for op in qm.walk() if op.name in ("conv", "gemm")}
    assert all(labels[k].operand(1).constant_value() is not None for k in kept)
    assert gx.quantize(m, CAL, min_sqnr=base - 1, feeds=EVAL, progress=False).metadata == full.metadata


# -- bad input --------------------------------------------------------------------------------
def test_empty_calibration_set():
    with pytest.raises(QuantizationError, match="empty"):
        gx.quantize(cnn(), [], progress=False)
    with pytest.raises(QuantizationError, match="empty"):
        gx.quantize(cnn(), iter(()), progress=False)


def test_feeds_that_do_not_match_the_model():
    with pytest.raises(InputValidationError, match="calibration item 1.*'y'"):
        gx.quantize(cnn(), [CAL[0], {"y": CAL[0]["x"]}], progress=False)
    with pytest.raises(InputValidationError, match="calibration item 0.*x"):
        gx.quantize(cnn(), [{"x": np.ones((2, 4, 16, 16), np.float32)}], progress=False)
    with pytest.raises(InputValidationError, match="calibration item 0 is a ndarray"):
        gx.quantize(cnn(), [CAL[0]["x"]], progress=False)


def test_bad_options():
    with pytest.raises(QuantizationError, match="method"):
        gx.quantize(cnn(), CAL, method="mse")
    with pytest.raises(QuantizationError, match="weight_type"):
        gx.quantize(cnn(), CAL, weight_type="s16")
    with pytest.raises(QuantizationError, match="block_size"):
        gx.quantize(mlp(), weight_bits=4, block_size=48)
    with pytest.raises(QuantizationError, match="weight_bits"):
        gx.quantize(mlp(), weight_bits=2)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_calibration_values_name_the_tensor():
    bad = {"x": np.full((2, 3, 16, 16), np.inf, np.float32)}
    with pytest.raises(QuantizationError, match="NaN/inf in input 'x'"):
        gx.quantize(cnn(), [bad], progress=False)


@pytest.mark.parametrize("scale", [0.0, -0.5, np.inf, np.nan])
def test_bad_scales_name_the_op(scale):
    with pytest.raises(QuantizationError, match="conv#0: scale must be positive"):
        check_params(np.array([0.1, scale]), None, np.int8, "conv#0")
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4))
    q = gb.quantize_linear(x, gb.constant(np.float32(scale)), gb.constant(np.uint8(3)))
    gb.output(q, "y")
    m = gb.module()
    with pytest.raises(ShapeInferenceError, match="quantize_linear.*scale must be positive"):
        m.verify()
    with pytest.raises(ExecutionError, match="quantize_linear.*scale must be positive"):
        gx.compile(m, target="numpy")(np.ones(4, np.float32))
    # a scale computed at run time
    gb = GraphBuilder()
    x, s = gb.input("x", tensor("f32", 4)), gb.input("s", tensor("f32"))
    gb.output(gb.dequantize_linear(gb.quantize_linear(x, s), s), "y")
    with pytest.raises(ExecutionError, match="dequantize_linear|quantize_linear"):
        gx.compile(gb.module(), target="numpy")(np.ones(4, np.float32), np.float32(scale))


def test_zero_points_out_of_range():
    with pytest.raises(QuantizationError, match="zero point \\[300.0\\] is outside"):
        check_params(np.float32(0.1), np.array(300), np.uint8, "x")
    with pytest.raises(QuantizationError, match="outside the range \\[-8, 7\\]"):
        check_params(np.float32(0.1), np.array(-9), np.dtype("int4") if False else
                     __import__("ml_dtypes").int4, "w")


def test_from_range_covers_zero_and_is_exact_at_the_ends():
    p = from_range(-1.0, 3.0, "u8")
    assert p.zero_point.dtype == np.uint8 and p.zero_point == 64
    assert np.isclose(p.scale, 4 / 255)
    p = from_range(0.5, 2.0, "u8")  # widened to [0, 2]
    assert p.zero_point == 0 and np.isclose(p.scale, 2 / 255)
    p = from_range(np.array([-1.0, -2.0]), np.array([0.5, 1.0]), "s8", symmetric=True)
    assert np.allclose(p.scale, [1 / 127, 2 / 127]) and not p.zero_point.any()
    assert from_range(0.0, 0.0, "u8").scale == 1.0  # an all-zero tensor gets a usable scale


def test_quantize_does_not_touch_its_input():
    m = cnn()
    before = m.to_text()
    gx.quantize(m, CAL, progress=False)
    gx.quantize(m, None)
    assert m.to_text() == before


def test_error_types_are_galaxir_errors():
    assert issubclass(QuantizationError, GalaxirError)


# -- weight quantization across shapes (hypothesis) --------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from galaxir.precision.params import quantize_array, weight_params  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 70), n=st.integers(1, 9), block=st.sampled_from([0, 16, 32]),
       name=st.sampled_from(["s8", "u8", "s4", "u4"]), seed=st.integers(0, 2**16))
def test_weight_round_trip_within_half_a_step(k, n, block, name, seed):
    """Per channel or blockwise (with a ragged last block), symmetric or not: dequantizing
    the quantized weight gives it back within half a step, and the numpy reference's
    dequantize_linear agrees with that formula."""
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    sym = name.startswith("s")
    axis = 0 if block else 1
    p = weight_params(w, name, axis, symmetric=sym, block=block)
    q = quantize_array(w, p, name, axis, block)
    gb = GraphBuilder()
    zp = () if sym else (gb.constant(p.zero_point),)
    attrs = {"axis": axis, **({"block_size": block} if block else {})}
    gb.output(gb.dequantize_linear(gb.constant(q), gb.constant(p.scale), *zp, **attrs), "y")
    back = gx.compile(gb.module(), target="numpy")()[0]
    s = np.repeat(p.scale, block, axis=0)[:k] if block else p.scale.reshape(1, -1)
    assert np.all(np.abs(back - w) <= 0.5 * s + 1e-6 * np.abs(w).max())
