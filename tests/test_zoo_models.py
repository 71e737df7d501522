"""The 9 model-zoo CNN architectures the onnx package ships (onnx/backend/test/data/light):
import each, run it on the numpy backend with onnx's dummy input, and compare with the
expected output shipped beside it, within onnx's model-test tolerances.

The "light" models carry no weights: ConstantOfShape nodes build them.  onnx's runner
feeds every non-initializer input ``arange(n).reshape(shape) / n`` (float32) and compares
with ``<model>_output_0.pb``; this does the same.
"""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

import galaxir as gx
from galaxir.testing import zoo

MODELS = sorted(zoo.MODELS)
# Over ~10 s on a busy 2-core machine: run with `pytest -m slow`.
SLOW = {"densenet121", "vgg19"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in MODELS])
def test_zoo_model_matches_expected(name):
    model = onnx.load(str(zoo.model_path(name)))
    module = gx.import_model(model)
    counts = module.op_counts()
    assert counts.get("conv", 0) > 0
    exe = gx.compile(module, target="numpy", level=0)
    feeds = zoo.dummy_inputs(model)
    t0 = time.perf_counter()
    out = exe.run(feeds)
    elapsed = time.perf_counter() - t0
    got = [out[n] for n in exe.output_names]
    want = zoo.expected_outputs(name, model)
    rtol, atol = zoo.MODELS[name]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    assert elapsed < 120, f"{name} took {elapsed:.1f}s on the numpy backend"


# alexnet, vgg19 and zfnet512 hold 60-140M weights: too big to randomize in a test.
@pytest.mark.parametrize("name", [n if n in ("shufflenet", "squeezenet")
                                  else pytest.param(n, marks=pytest.mark.slow)
                                  for n in ("densenet121", "inception_v1", "inception_v2",
                                            "resnet50", "shufflenet", "squeezenet")])
def test_zoo_model_random_weights_vs_onnxruntime(name):
    """With random weights and a random input, the logits agree with onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    model = zoo.with_random_weights(onnx.load(str(zoo.model_path(name))))
    rng = np.random.default_rng(1)
    feeds = {k: rng.random(v.shape, dtype=np.float32) for k, v in zoo.dummy_inputs(model).items()}
    exe = gx.compile(gx.import_model(model), target="numpy", level=0)
    out = exe.run(feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    for n, r in zip(exe.output_names, ref):
        assert np.unique(r).size > 10  # the comparison sees distinct class scores
        np.testing.assert_allclose(out[n], r, rtol=zoo.MODELS[name][0], atol=1e-6)


def test_resnet50_output_shape_symbolic_batch():
    """Import with a symbolic batch: shapes flow through every conv/pool."""
    model = onnx.load(str(zoo.model_path("resnet50")))
    inp = model.graph.input[0]
    inp.type.tensor_type.shape.dim[0].dim_param = "N"
    module = gx.import_model(model)
    convs = [op for op in module.walk() if op.name == "conv"]
    assert str(convs[0].results[0].type) == "f32[N,64,112,112]"
    assert all(op.results[0].type.shape[0] == "N" for op in convs)
