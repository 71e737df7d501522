"""Type refinement: once folding makes a computed shape constant, the ops that consume it
(and everything downstream) get static types again, so the cpu backend compiles them."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.ir.types import DType, TensorType
from galaxir.passes.basic.refine import refined


def _window_model():
    """Swin-style shape arithmetic: reshape(x, concat(shape(x)[1] mod 5, 4, -1)) -> relu, which
    import leaves untyped (it does not evaluate arithmetic on shapes)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["n0"], axis=0),
        helper.make_node("Mod", ["n0", "five"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "tail"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    g = helper.make_graph(
        nodes, "win", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c"])],
        [helper.make_tensor("one", TensorProto.INT64, [], [1]),
         helper.make_tensor("five", TensorProto.INT64, [], [5]),
         helper.make_tensor("axes0", TensorProto.INT64, [1], [0]),
         helper.make_tensor("tail", TensorProto.INT64, [2], [4, -1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_folded_shape_makes_downstream_types_static():
    m = gx.import_model(_window_model())
    relu = [op for op in m.graph.block if op.name == "relu"][0]
    assert not relu.results[0].type.is_static          # as imported
    o1 = gx.optimize(m, level=1)
    relu = [op for op in o1.graph.block if op.name == "relu"][0]
    assert relu.results[0].type == TensorType(DType.float32, (3, 4, 8))
    assert "shape" not in o1.op_counts()
    exe = gx.compile(o1, target="cpu")
    assert not exe.fallback_ops, exe.report()
    x = np.random.default_rng(0).standard_normal((2, 8, 6)).astype(np.float32)
    np.testing.assert_array_equal(exe(x)[0], np.maximum(x.reshape(3, 4, 8), 0))


def test_refined_keeps_the_sharper_dims():
    f32 = DType.float32
    assert refined(TensorType(f32, ("?", 3)), TensorType(f32, (5, 3))) == TensorType(f32, (5, 3))
    assert refined(TensorType(f32, ("N", 3)), TensorType(f32, ("?", 3))) is None
    assert refined(TensorType(f32, ("N", "?")), TensorType(f32, ("?", 7))) == TensorType(f32, ("N", 7))
    assert refined(TensorType(f32, None), TensorType(f32, (1,))) == TensorType(f32, (1,))
    assert refined(TensorType(f32, (2, 3)), TensorType(f32, (4, 3))) is None     # disagrees
    assert refined(TensorType(f32, ("?",)), TensorType(DType.int64, (4,))) is None
