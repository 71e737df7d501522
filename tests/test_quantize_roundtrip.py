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
