"""The 9 model-zoo architectures the onnx package ships (onnx/backend/test/data/light),
with the inputs onnx's backend test runner feeds them and the outputs it expects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

#: name -> (rtol, atol), as onnx's model test cases declare them
MODELS = {
    "bvlc_alexnet": (1e-3, 1e-7), "densenet121": (2e-3, 1e-7), "inception_v1": (1e-3, 1e-7),
    "inception_v2": (1e-3, 1e-7), "resnet50": (1e-3, 1e-7), "shufflenet": (1e-3, 1e-7),
    "squeezenet": (1e-3, 1e-7), "vgg19": (1e-3, 1e-7), "zfnet512": (1e-3, 1e-7),
}


def light_dir() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def model_path(name: str) -> Path:
    return light_dir() / f"light_{name}.onnx"


def dummy_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every non-initializer float input as ``arange(n) / n``, as onnx's runner feeds them
    (unknown dims become 1)."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for x in model.graph.input:
        if x.name in inits:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in x.type.tensor_type.shape.dim)
        n = int(np.prod(dims)) if dims else 1
        feeds[x.name] = (np.arange(n).reshape(dims) / n).astype(np.float32)
    return feeds


def expected_outputs(name: str, model: onnx.ModelProto) -> list[np.ndarray]:
    """The reference outputs shipped beside the model."""
    outs = []
    for i in range(len(model.graph.output)):
        t = onnx.TensorProto()
        t.ParseFromString((light_dir() / f"light_{name}_output_{i}.pb").read_bytes())
        outs.append(onnx.numpy_helper.to_array(t))
    return outs


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
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
