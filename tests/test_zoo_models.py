"""The 9 model-zoo CNN architectures the onnx package ships (onnx/backend/test/data/light):
import each, run it on the numpy backend with onnx's dummy input, and compare with the
expected output shipped beside it, within onnx's model-test tolerances.

The "light" models carry no weights: ConstantOfShape nodes build them.  onnx's runner
feeds every non-initializer input ``arange(n).reshape(shape) / n`` (float32) and compares
with ``<model>_output_0.pb``; this does the same.
"""
from __future__ import annotations

import os
import time

import numpy as np
import onnx
import pytest

import galaxir as gx

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512"]
# Over ~10 s on a busy 2-core machine: run with `pytest -m slow`.
SLOW = {"densenet121", "vgg19"}
RTOL, ATOL = 1e-3, 1e-7  # onnx.backend.test.loader's defaults for model tests


def _dummy_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """onnx's runner's generate_dummy_data(random=False) for every graph input."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                      for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def _expected(name: str, model: onnx.ModelProto) -> list[np.ndarray]:
    outs = []
    for i in range(len(model.graph.output)):
        path = os.path.join(LIGHT, f"light_{name}_output_{i}.pb")
        if not os.path.exists(path):  # none shipped: onnxruntime is the reference
            import onnxruntime as ort
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return sess.run(None, _dummy_inputs(model))
        outs.append(onnx.numpy_helper.to_array(onnx.load_tensor(path)))
    return outs


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in MODELS])
def test_zoo_model_matches_expected(name):
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{path} is not shipped with this onnx version")
    model = onnx.load(path)
    module = gx.import_model(model)
    counts = module.op_counts()
    assert counts.get("conv", 0) > 0
    exe = gx.compile(module, target="numpy", level=0)
    feeds = _dummy_inputs(model)
    t0 = time.perf_counter()
    out = exe.run(feeds)
    elapsed = time.perf_counter() - t0
    got = [out[n] for n in exe.output_names]
    want = _expected(name, model)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    assert elapsed < 120, f"{name} took {elapsed:.1f}s on the numpy backend"


def _with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The model with every float ConstantOfShape weight replaced by a random initializer.

    The shipped weights are constants, which makes every class score equal; random
    weights (scaled so activations stay O(1)) make the comparison see every channel.
    """
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits or \
                value is None or value.data_type != onnx.TensorProto.FLOAT:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
        else:  # biases, batch-norm scale/shift/mean/var: positive, near 1
            arr = rng.uniform(0.5, 1.5, shape)
        keep.append(onnx.helper.make_node("Constant", [], [node.output[0]],
                                          value=onnx.numpy_helper.from_array(arr.astype(np.float32))))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


# alexnet, vgg19 and zfnet512 hold 60-140M weights: too big to randomize in a test.
@pytest.mark.parametrize("name", [n if n in ("shufflenet", "squeezenet")
                                  else pytest.param(n, marks=pytest.mark.slow)
                                  for n in ("densenet121", "inception_v1", "inception_v2",
                                            "resnet50", "shufflenet", "squeezenet")])
def test_zoo_model_random_weights_vs_onnxruntime(name):
    """With random weights and a random input, the logits agree with onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    model = _with_random_weights(onnx.load(os.path.join(LIGHT, f"light_{name}.onnx")))
    rng = np.random.default_rng(1)
    feeds = {k: rng.random(v.shape, dtype=np.float32) for k, v in _dummy_inputs(model).items()}
    exe = gx.compile(gx.import_model(model), target="numpy", level=0)
    out = exe.run(feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    for n, r in zip(exe.output_names, ref):
        assert np.unique(r).size > 10  # the comparison sees distinct class scores
        np.testing.assert_allclose(out[n], r, rtol=RTOL, atol=1e-6)


def test_resnet50_output_shape_symbolic_batch():
    """Import with a symbolic batch: shapes flow through every conv/pool."""
    model = onnx.load(os.path.join(LIGHT, "light_resnet50.onnx"))
    inp = model.graph.input[0]
    inp.type.tensor_type.shape.dim[0].dim_param = "N"
    module = gx.import_model(model)
    convs = [op for op in module.walk() if op.name == "conv"]
    assert str(convs[0].results[0].type) == "f32[N,64,112,112]"
    assert all(op.results[0].type.shape[0] == "N" for op in convs)
