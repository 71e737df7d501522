"""Quantized models through .gxm and ONNX: quantize -> save -> load gives the same outputs;
quantize -> ONNX export -> onnxruntime agrees within one quantization step; onnxruntime's
own QDQ models run on galaxir within one step of onnxruntime."""
import numpy as np
import pytest

import galaxir as gx
from galaxir.frontends.onnx.exporter import export_onnx
from tests.quant_models import cnn, feeds

ort = pytest.importorskip("onnxruntime")
CAL = feeds("x", (2, 3, 16, 16), 8, 1)
X = feeds("x", (2, 3, 16, 16), 1, 9)[0]
MODES = {"static": dict(calibration=CAL), "static-s8": dict(calibration=CAL, activation_type="s8"),
         "dynamic": dict(calibration=None), "int4": dict(weight_bits=4, block_size=16),
         "uint4": dict(weight_bits=4, block_size=32, symmetric=False)}


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def output_step(qm):
    """The scale of the last activation quantizer before the output (one step there)."""
    qs = [op for op in qm.walk() if op.name == "quantize_linear"]
    return float(np.max(qs[-1].operand(1).constant_value())) if qs else 0.0


@pytest.mark.parametrize("mode", list(MODES))
def test_gxm_round_trip_same_outputs(mode, tmp_path):
    qm = gx.quantize(cnn(), progress=False, **MODES[mode])
    gx.save(qm, tmp_path / "q.gxm")
    back = gx.load(tmp_path / "q.gxm", verify=True)
    assert back == qm and back.metadata["quantization"] == qm.metadata["quantization"]
    a = gx.compile(qm, target="numpy").run(X)["z"]
    np.testing.assert_array_equal(gx.compile(back, target="numpy").run(X)["z"], a)
    np.testing.assert_allclose(gx.compile(back, target="cpu").run(X)["z"], a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", list(MODES))
def test_onnx_export_runs_in_onnxruntime(mode):
    qm = gx.quantize(cnn(), progress=False, **MODES[mode])
    a = gx.compile(qm, target="numpy").run(X)["z"]
    (b,) = session(export_onnx(qm)).run(None, X)
    # the output is float (gemm of dequantized values): the difference is float rounding
    # order, or at most a flip of one step in an activation
    step = max(output_step(qm), 1e-5)
    assert np.abs(a - b).max() <= step * np.abs(a).max() + 1e-4


def test_gxm_holds_the_int8_weights(tmp_path):
    m = cnn()
    gx.save(m, tmp_path / "f.gxm")
    gx.save(gx.quantize(m, CAL, progress=False), tmp_path / "q.gxm")
    assert (tmp_path / "q.gxm").stat().st_size < 0.45 * (tmp_path / "f.gxm").stat().st_size


def test_onnxruntime_qdq_model_runs_on_galaxir(tmp_path):
    """A model quantized by onnxruntime's quantize_static (QDQ, per channel) imports and
    runs on galaxir within one quantization step of onnxruntime."""
    qz = pytest.importorskip("onnxruntime.quantization")
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    import onnx
    onnx.save(export_onnx(cnn()), str(src))

    class Reader(qz.CalibrationDataReader):
        def __init__(self):
            self.it = iter(CAL)

        def get_next(self):
            return next(self.it, None)

    qz.quantize_static(str(src), str(dst), Reader(), quant_format=qz.QuantFormat.QDQ,
                       per_channel=True, activation_type=qz.QuantType.QUInt8,
                       weight_type=qz.QuantType.QInt8)
    (b,) = session(onnx.load(str(dst))).run(None, X)
    m = gx.import_model(str(dst))
    assert m.op_counts()["dequantize_linear"] > 0
    a = gx.compile(m, target="numpy").run(X)["z"]
    step = float(np.max([op.operand(1).constant_value() for op in m.walk()
                         if op.name == "quantize_linear"][-1]))
    assert np.abs(a - b).max() <= step + 1e-5


def test_gxm_packs_int4_weights_two_per_byte(tmp_path):
    """int4 weights take half a byte each in the file (format version 4): a matmul model's
    file shrinks about 7x with block_size 64, and load unpacks the same values."""
    from tests.quant_models import mlp
    m = mlp(k=512, n=512)
    qm = gx.quantize(m, weight_bits=4, block_size=64)
    gx.save(m, tmp_path / "f.gxm")
    gx.save(qm, tmp_path / "q4.gxm")
    ratio = (tmp_path / "f.gxm").stat().st_size / (tmp_path / "q4.gxm").stat().st_size
    assert 6.2 < ratio < 7.2, ratio    # one byte per value would give about 3.8x
    back = gx.load(tmp_path / "q4.gxm", verify=True)
    assert back == qm
    w = [op.operand(0).constant_value() for op in back.walk()
         if op.name == "dequantize_linear" and op.attr("block_size")]
    assert len(w) == 2 and all(a.dtype.name == "int4" and not a.flags.writeable for a in w)
    x = {"x": np.random.default_rng(3).standard_normal((1, 8, 512)).astype(np.float32)}
    np.testing.assert_array_equal(gx.compile(back, target="numpy").run(x)["y"],
                                  gx.compile(qm, target="numpy").run(x)["y"])


@pytest.mark.parametrize("dtype", ["int4", "uint4", "float4_e2m1fn", "int2", "uint2"])
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_gxm_subbyte_constants_round_trip(dtype, n, tmp_path):
    """Every sub-byte dtype, odd and even element counts: packed on save, the same bit
    patterns after load."""
    import ml_dtypes

    from galaxir.ir.builder import GraphBuilder
    from galaxir.ir.types import DType, tensor
    dt = np.dtype(getattr(ml_dtypes, dtype))
    bits = 2 if dtype.endswith("2") else 4
    rng = np.random.default_rng(n)
    vals = rng.integers(0, 1 << bits, n).astype(np.uint8).view(dt)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", n))
    gb.output(gb.add(x, gb.cast(gb.constant(vals), to=DType.float32)), "y")
    m = gb.module()
    gx.save(m, tmp_path / "s.gxm")
    back = gx.load(tmp_path / "s.gxm", verify=True)
    (c,) = [op.attr("value") for op in back.walk() if op.name == "constant"]
    np.testing.assert_array_equal(c.view(np.uint8), vals.view(np.uint8))
    assert back == m
