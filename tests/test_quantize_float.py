"""gx.convert_float: f16/bf16 weights and activations, sensitive ops kept in f32."""
import numpy as np
import pytest

import galaxir as gx
from galaxir.precision.params import QuantizationError
from tests.quant_models import attention_block, cnn, feeds, mlp


def run(m, f, target="numpy"):
    return gx.compile(m, target=target).run(f)


@pytest.mark.parametrize("dtype, tol", [("f16", 3e-3), ("bf16", 3e-2)])
def test_cnn_close_to_f32(dtype, tol):
    m = cnn()
    hm = gx.convert_float(m, dtype)
    low = {"f16": "float16", "bf16": "bfloat16"}[dtype]
    ws = [op.attr("value") for op in hm.walk() if op.name == "constant" and op.attr("value").ndim == 4]
    assert ws and all(w.dtype.name == low for w in ws)
    assert not any(op.attr("value").dtype == np.float32 and op.attr("value").size > 100
                   for op in hm.walk() if op.name == "constant")
    assert [t.dtype.name for t in (hm.graph.inputs[0].type, hm.graph.outputs[0].type)] == ["float32"] * 2
    for f in feeds("x", (2, 3, 16, 16), 2, 5):
        ref, got = run(m, f)["z"], run(hm, f)["z"]
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
        # the cpu runs 16-bit ops natively (f32 arithmetic between 16-bit stores), the
        # reference op by op: both are held to the same distance from the f32 model
        cpu = run(hm, f, "cpu")["z"]
        assert np.abs(cpu - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_sensitive_ops_stay_f32(dtype):
    hm = gx.convert_float(mlp(), dtype)
    by = {op.name: op for op in hm.walk()}
    for name in ("softmax", "layer_norm", "exp"):
        assert by[name].results[0].type.dtype.name == "float32"
    assert by["matmul"].results[0].type.dtype.name != "float32"
    assert hm.op_counts()["cast"] >= 3   # into 16 bits, back for softmax, in for the 2nd matmul...
    f = feeds("x", (1, 8, 64), 1, 6)[0]
    np.testing.assert_allclose(run(hm, f)["y"], run(mlp(), f)["y"], rtol=3e-2 if dtype == "bf16" else 3e-3)


@pytest.mark.parametrize("dtype, tol", [("f16", 5e-3), ("bf16", 4e-2)])
def test_composites_recognized_before_conversion(dtype, tol):
    # casts around the softmax and gelu's rounded constants would hide the patterns:
    # attention (kept in f32 like its softmax) and gelu (converted) are found first
    m = attention_block()
    hm = gx.convert_float(m, dtype)
    counts = hm.op_counts()
    assert counts.get("attention") == 1 and counts.get("gelu") == 1
    assert "softmax" not in counts and "erf" not in counts
    assert next(op for op in hm.walk() if op.name == "attention").results[0].type.dtype.name == "float32"
    assert next(op for op in hm.walk() if op.name == "gelu").results[0].type.dtype.name != "float32"
    f = feeds("x", (1, 16, 32), 1, 8)[0]
    ref = run(m, f)["y"]
    # attention converted too (keep without it) runs natively on the cpu as well
    for h in (hm, gx.convert_float(m, dtype, keep=["layer_norm"])):
        exe = gx.compile(h, target="cpu")
        got = exe.run(f)["y"]
        assert exe.fallback_ops == []
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


def test_keep_overrides_the_default():
    hm = gx.convert_float(mlp(), "f16", keep=["matmul"])
    assert all(op.results[0].type.dtype.name == "float32" for op in hm.walk() if op.name == "matmul")
    assert any(op.results[0].type.dtype.name == "float16" for op in hm.walk() if op.name == "softmax")


def test_round_trip_through_gxm(tmp_path):
    hm = gx.convert_float(cnn(), "bf16")
    gx.save(hm, tmp_path / "m.gxm")
    f = feeds("x", (1, 3, 16, 16), 1, 7)[0]
    np.testing.assert_array_equal(run(gx.load(tmp_path / "m.gxm"), f)["z"], run(hm, f)["z"])


def test_bad_dtype():
    with pytest.raises(QuantizationError, match="f16"):
        gx.convert_float(cnn(), "f8")
