"""The ONNX importer: sources (proto, path, bytes), initializers, symbolic dims, external
data inside the model folder, the onnx.backend adapter, and clear errors for bad input."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir import errors
from galaxir.onnx_backend import GalaxirBackend
from conftest import add_relu_model


def test_import_from_proto_path_and_bytes(tmp_path):
    model = add_relu_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.randn(3, 4).astype(np.float32)
    want = np.maximum(x + np.arange(4, dtype=np.float32), 0)
    for src in (model, str(path), path, model.SerializeToString()):
        m = gx.import_model(src)
        assert m.graph.input_names == ["x"]
        assert m.graph.output_names == ["y", "s_copy"]
        assert str(m.graph.inputs[0].type) == "f32[batch,4]"
        assert str(m.graph.outputs[0].type) == "f32[batch,4]"
        y, s = gx.compile(m, target="numpy", level=0)(x)
        np.testing.assert_allclose(y, want, rtol=1e-6)
        np.testing.assert_allclose(s, x + np.arange(4, dtype=np.float32), rtol=1e-6)
    prov = [op.provenance for op in m.walk() if op.name == "relu"]
    assert prov == [("relu0",)]


def test_external_data_inside_folder_loads(tmp_path):
    model = add_relu_model()
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    m = gx.import_model(str(tmp_path / "m.onnx"))
    (y, _) = gx.compile(m, target="numpy", level=0)(np.zeros((1, 4), np.float32))
    np.testing.assert_allclose(y, [[0, 1, 2, 3]])


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    model = add_relu_model()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    d = tmp_path / "model"
    d.mkdir()
    (d / "m.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(errors.ModelImportError, match="external data location .* (escapes|must be a relative)"):
        gx.import_model(str(d / "m.onnx"))


def test_truncated_file(tmp_path):
    data = add_relu_model().SerializeToString()
    for cut in (len(data) // 3, len(data) - 7, 5):
        p = tmp_path / f"cut{cut}.onnx"
        p.write_bytes(data[:cut])
        with pytest.raises(errors.ModelImportError):
            gx.import_model(str(p))
    with pytest.raises(errors.ModelImportError, match="no ONNX model file"):
        gx.import_model(str(tmp_path / "missing.onnx"))


def test_cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
             helper.make_node("Relu", ["a"], ["b"], name="n2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(errors.ModelImportError, match="cycle"):
        gx.import_model(model, check=False)
    with pytest.raises(errors.ModelImportError):
        gx.import_model(model)


def test_unknown_domain_op():
    node = helper.make_node("Frob", ["x"], ["y"], name="frob0", domain="com.example")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(errors.UnsupportedOpError, match=r"'frob0'.*com\.example::Frob \(opset 1\)"):
        gx.import_model(model)


def test_checker_rejection_is_an_import_error():
    model = add_relu_model()
    model.graph.node[0].input[1] = "does_not_exist"
    with pytest.raises(errors.ModelImportError, match="checker"):
        gx.import_model(model)


def test_wrong_input_shape_and_dtype():
    exe = gx.compile(gx.import_model(add_relu_model()), target="numpy", level=0)
    with pytest.raises(errors.InputValidationError, match="input 'x': dim 1 must be 4"):
        exe(np.zeros((2, 5), np.float32))
    with pytest.raises(errors.InputValidationError, match="input 'x': expected dtype float32, got int64"):
        exe(np.zeros((2, 4), np.int64))


def test_onnx_backend_adapter_runs_a_model_and_a_node():
    model = add_relu_model()
    x = np.random.randn(2, 4).astype(np.float32)
    y, s = GalaxirBackend.run_model(model, [x])
    np.testing.assert_allclose(y, np.maximum(x + np.arange(4, dtype=np.float32), 0), rtol=1e-6)
    node = helper.make_node("Relu", ["a"], ["b"])
    (b,) = GalaxirBackend.run_node(node, [x])
    np.testing.assert_array_equal(b, np.maximum(x, 0))
    assert GalaxirBackend.supports_device("CPU") and not GalaxirBackend.supports_device("CUDA")
