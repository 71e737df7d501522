"""Full-size models (slow): galaxir's static quantization against onnxruntime's
quantize_static with the same data and method, and int4 weights of a GPT-2-style decoder."""

import numpy as np
import pytest

import galaxir as gx

pytestmark = pytest.mark.slow


def _sqnr(ref, got):
    s = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    n = sum(float(np.sum((r.astype(np.float64) - g) ** 2)) for r, g in zip(ref, got))
    return 10 * np.log10(s / n)


def test_resnet18_static_sqnr_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    bench = pytest.importorskip("benchmarks.bench_quant", reason="run from the repository root")
    from galaxir.testing import modern
    why = modern.available("mobilenet_v3_small")
    if why:
        pytest.skip(why)
    model, shape = bench.build("resnet18")
    src = str(tmp_path / "r18.onnx")
    bench.export(model, shape, src)
    rng = np.random.default_rng(10)
    cal = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    ev = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    m = gx.import_model(src)
    qm = gx.quantize(m, cal, progress=False, target="cpu")
    st, _ = bench.ort_quantize(src, str(tmp_path), cal, "minmax")
    ref = [gx.compile(m, target="cpu").run(f)["y"] for f in ev]
    ours = [gx.compile(qm, target="cpu").run(f)["y"] for f in ev]
    s = bench.ort_session(st, 2)
    theirs = [s.run(None, f)[0] for f in ev]
    assert _sqnr(ref, ours) >= _sqnr(ref, theirs) - 1.0
    assert _sqnr(ref, ours) > 15


def test_gpt2_int4_weights_shrink_7x(tmp_path):
    from galaxir.precision import weight_bytes
    from galaxir.testing import modern
    why = modern.available("gpt2")
    if why:
        pytest.skip(why)
    path, feeds = modern.export("gpt2", str(tmp_path))
    m = gx.import_model(path)
    qm = gx.quantize(m, weight_bits=4, block_size=64)
    before = after = 0
    for op in qm.walk():
        if op.name == "dequantize_linear" and op.attr("block_size"):
            w, scale = op.operand(0).constant_value(), op.operand(1).constant_value()
            before += 4 * w.size
            after += w.size / 2 + scale.nbytes
    assert before > 80e6 * 4 * 0.9  # the 12 layers' ~85M attention and MLP weights
    assert 6.8 < before / after < 7.2
    assert weight_bytes(m) - weight_bytes(qm) == pytest.approx(before - after, rel=1e-3)
    ref = gx.compile(m, target="cpu").run(feeds)["output"]
    got = gx.compile(qm, target="cpu").run(feeds)["output"]
    assert _sqnr([ref], [got]) > 8  # 11.2 dB measured: 48 int4 matmuls in a row
