"""galaxir quantize / convert-float from a shell."""
import numpy as np
import onnx

import galaxir as gx
from galaxir.frontends.onnx.exporter import export_onnx
from tests.quant_models import cnn
from conftest import cli


def _files(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(export_onnx(cnn()), str(src))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((6, 2, 3, 16, 16)).astype(np.float32))
    return src


def test_quantize_static_with_report(tmp_path):
    src = _files(tmp_path)
    out = tmp_path / "m.int8.gxm"
    r = cli("quantize", src, "-o", out, "--calibration", tmp_path / "cal.npz", "--method",
            "percentile", "--report")
    assert r.returncode == 0, r.stderr
    assert "static quantization" in r.stdout and "SQNR" in r.stdout and "conv" in r.stdout
    m = gx.load(out)
    assert m.op_counts()["quantize_linear"] == 4
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = gx.compile(gx.import_model(str(src)), target="numpy").run({"x": x})["z"]
    got = gx.compile(m, target="numpy").run({"x": x})["z"]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_quantize_int4_and_dynamic_and_float(tmp_path):
    src = _files(tmp_path)
    r = cli("quantize", src, "-o", tmp_path / "q4.onnx", "--weight-bits", "4", "--block-size", "16")
    assert r.returncode == 0, r.stderr
    assert "int4-weights" in r.stdout
    r = cli("quantize", src, "-o", tmp_path / "qd.gxm", "--dynamic")
    assert r.returncode == 0 and "dynamic" in r.stdout, r.stderr
    r = cli("convert-float", src, "-o", tmp_path / "h.gxm", "--dtype", "bf16")
    assert r.returncode == 0 and "bf16" in r.stdout, r.stderr


def test_quantize_bad_input(tmp_path):
    src = _files(tmp_path)
    r = cli("quantize", src, "-o", tmp_path / "q.gxm")
    assert r.returncode == 1 and "--calibration" in r.stderr
    np.savez(tmp_path / "bad.npz", y=np.zeros((2, 2, 3, 16, 16), np.float32))
    r = cli("quantize", src, "-o", tmp_path / "q.gxm", "--calibration", tmp_path / "bad.npz")
    assert r.returncode == 1 and "no array for input(s) ['x']" in r.stderr
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 2, 3, 16, 16), np.float32))
    r = cli("quantize", src, "-o", tmp_path / "q.gxm", "--calibration", tmp_path / "empty.npz")
    assert r.returncode == 1 and "empty" in r.stderr
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 2, 4, 16, 16), np.float32))
    r = cli("quantize", src, "-o", tmp_path / "q.gxm", "--calibration", tmp_path / "shape.npz")
    assert r.returncode == 1 and "calibration item 0" in r.stderr and "'x'" in r.stderr
