"""Tensor manipulation / shape ops: shape inference with symbolic dims, old-opset import
forms, and the numpy kernels against onnxruntime."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.errors import ShapeInferenceError
from galaxir.ir import GraphBuilder, tensor

I64 = np.int64


def c(gb, *values):
    return gb.constant(np.array(values, dtype=I64))


def shape_of(v):
    return str(v.type)


# -- shape inference ---------------------------------------------------------------------------
def test_reshape_zero_and_minus_one_with_symbols():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 512, 1, 1))
    assert shape_of(gb.reshape(x, c(gb, 0, -1))) == "f32[N,512]"
    y = gb.input("y", tensor("f32", "N", "S", 768))
    assert shape_of(gb.reshape(y, c(gb, 0, 0, 12, 64))) == "f32[N,S,12,64]"
    # S*12 is a dim expression (canonical text: coefficient first, then the symbols)
    assert shape_of(gb.reshape(y, c(gb, 0, -1, 64))) == 'f32[N,"12*S",64]'
    z = gb.reshape(y, c(gb, 0, 0, 12, -1))
    assert shape_of(z) == "f32[N,S,12,64]"
    assert shape_of(gb.reshape(z, c(gb, 0, 0, -1))) == "f32[N,S,768]"
    assert shape_of(gb.reshape(y, c(gb, -1, 768))) == 'f32["N*S",768]'  # a product of symbols
    w = gb.input("w", tensor("f32", 2, 3, 4))
    assert shape_of(gb.reshape(w, c(gb, 4, -1))) == "f32[4,6]"
    w0 = gb.input("w0", tensor("f32", 0, 4))
    assert shape_of(gb.reshape(w0, c(gb, 3, 0), allowzero=1)) == "f32[3,0]"
    assert shape_of(gb.reshape(w0, c(gb, 0, 2, 2), allowzero=0)) == "f32[0,2,2]"
    with pytest.raises(ShapeInferenceError):  # without allowzero the 0 copies dim 1 (4)
        gb.reshape(w0, c(gb, 2, 0))


def test_reshape_with_runtime_shape_chain_and_errors():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "B", "T", 8))
    s = gb.shape(x)
    b = gb.gather(s, gb.constant(np.array([0], I64)))
    spec = gb.concat(b, c(gb, -1), axis=0)
    assert shape_of(gb.reshape(x, spec)) == 'f32[B,"8*T"]'  # B*T*8 / B
    spec2 = gb.concat(gb.slice(s, c(gb, 0), c(gb, 2)), c(gb, 2, 4), axis=0)
    assert shape_of(gb.reshape(x, spec2)) == "f32[B,T,2,4]"
    # a shape operand that is not known at all: rank from its length
    dyn = gb.input("d", tensor("i64", 3))
    assert shape_of(gb.reshape(x, dyn)) == "f32[?,?,?]"
    w = gb.input("w", tensor("f32", 2, 3))
    with pytest.raises(ShapeInferenceError):
        gb.reshape(w, c(gb, 4, 2))
    with pytest.raises(ShapeInferenceError):
        gb.reshape(w, c(gb, -1, -1))


def test_concat_transpose_squeeze_unsqueeze_flatten():
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", "N", 3))
    b = gb.input("b", tensor("f32", "N", 5))
    m = gb.input("m", tensor("f32", "M", 3))
    assert shape_of(gb.concat(a, b, axis=1)) == "f32[N,8]"
    assert shape_of(gb.concat(a, b, axis=-1)) == "f32[N,8]"
    assert shape_of(gb.concat(a, m, axis=0)) == "f32[?,3]"
    with pytest.raises(ShapeInferenceError):
        gb.concat(a, b, axis=0)  # 3 vs 5 in dim 1
    x = gb.input("x", tensor("f32", "N", 1, "H", 4))
    assert shape_of(gb.transpose(x, perm=(0, 2, 3, 1))) == "f32[N,H,4,1]"
    assert shape_of(gb.transpose(x)) == "f32[4,H,1,N]"
    assert shape_of(gb.squeeze(x, c(gb, 1))) == "f32[N,H,4]"
    assert shape_of(gb.squeeze(x, c(gb, -3))) == "f32[N,H,4]"
    with pytest.raises(ShapeInferenceError):
        gb.squeeze(x, c(gb, 3))
    assert shape_of(gb.unsqueeze(x, c(gb, 0, -1))) == "f32[1,N,1,H,4,1]"
    assert shape_of(gb.flatten(x)) == 'f32[N,"4*H"]'
    assert shape_of(gb.flatten(x, axis=2)) == 'f32[N,"4*H"]'
    assert shape_of(gb.flatten(gb.input("y", tensor("f32", "N", 3, 4, 4)))) == "f32[N,48]"
    assert shape_of(gb.flatten(x, axis=0)) == 'f32[1,"4*H*N"]'


def test_slice_gather_expand_tile_pad():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 10, 6))
    big = 2 ** 63 - 1
    assert shape_of(gb.slice(x, c(gb, 2), c(gb, -1), c(gb, 1))) == "f32[N,7,6]"
    assert shape_of(gb.slice(x, c(gb, 0, 1), c(gb, big, 100), c(gb, 0, 1))) == "f32[N,9,6]"
    assert shape_of(gb.slice(x, c(gb, -1), c(gb, -big), c(gb, 2), c(gb, -2))) == "f32[N,10,3]"
    assert shape_of(gb.slice(x, c(gb, 20), c(gb, 30), c(gb, 1))) == "f32[N,0,6]"
    assert shape_of(gb.slice(x, c(gb, 1), c(gb, 3))) == "f32[?,10,6]"
    idx = gb.input("i", tensor("i64", "B", 3))
    assert shape_of(gb.gather(x, idx, axis=1)) == "f32[N,B,3,6]"
    assert shape_of(gb.gather(x, gb.constant(np.array(1, I64)), axis=-1)) == "f32[N,10]"
    e = gb.input("e", tensor("f32", "N", 1, 4))
    assert shape_of(gb.expand(e, c(gb, 1, 3, 1))) == "f32[N,3,4]"
    assert shape_of(gb.expand(e, c(gb, 3, 1, 1))) == "f32[3,1,4]"  # N must be 1 or 3
    assert shape_of(gb.expand(e, c(gb, 2, 1, 5, 1))) == "f32[2,N,5,4]"
    assert shape_of(gb.tile(e, c(gb, 1, 2, 3))) == "f32[N,2,12]"
    assert shape_of(gb.pad(x, c(gb, 0, 1, 2, 0, 1, -2))) == "f32[N,12,6]"
    assert shape_of(gb.pad(x, c(gb, 1, 1), None, c(gb, 0))) == "f32[?,10,6]"


def test_shape_size_constant_of_shape_range_split_topk_onehot():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3, 4))
    assert shape_of(gb.shape(x)) == "i64[3]"
    assert shape_of(gb.shape(x, start=1)) == "i64[2]"
    assert shape_of(gb.shape(x, start=-1, end=-5)) == "i64[0]"
    assert shape_of(gb.size(x)) == "i64[]"
    assert shape_of(gb.constant_of_shape(c(gb, 2, 5), value=np.array([1], np.int32))) == "i32[2,5]"
    assert shape_of(gb.constant_of_shape(gb.shape(x))) == "f32[N,3,4]"
    r = gb.range(gb.constant(np.array(1.0, np.float32)), gb.constant(np.array(2.0, np.float32)),
                 gb.constant(np.array(0.3, np.float32)))
    assert shape_of(r) == "f32[4]"
    assert shape_of(gb.range(*(gb.constant(np.array(v, I64)) for v in (10, 0, -3)))) == "i64[4]"
    t = gb.gather(gb.shape(x), gb.constant(np.array(0, I64)))
    assert shape_of(gb.range(gb.constant(np.array(0, I64)), t, gb.constant(np.array(1, I64)))) == "i64[N]"
    parts = gb.split(x, c(gb, 1, 3), axis=2, num_results=2)
    assert [shape_of(p) for p in parts] == ["f32[N,3,1]", "f32[N,3,3]"]
    parts = gb.split(gb.input("y", tensor("f32", 7)), num_outputs=3, num_results=3)
    assert [shape_of(p) for p in parts] == ["f32[3]", "f32[3]", "f32[1]"]
    vals, idx = gb.top_k(x, c(gb, 2), axis=1)
    assert (shape_of(vals), shape_of(idx)) == ("f32[N,2,4]", "i64[N,2,4]")
    oh = gb.one_hot(gb.input("k", tensor("i64", "N", 2)), gb.constant(np.array(5, I64)),
                    gb.constant(np.array([0, 1], np.float32)), axis=1)
    assert shape_of(oh) == "f32[N,5,2]"
    assert shape_of(gb.non_zero(x)) == "i64[3,?]"


def test_unknown_rank_and_dynamic_operands_keep_what_is_known():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 4))
    starts = gb.input("s", tensor("i64", 1))
    assert shape_of(gb.slice(x, starts, starts, c(gb, 1))) == "f32[N,?]"
    axes = gb.input("a", tensor("i64", 2))
    assert shape_of(gb.unsqueeze(x, axes)) == "f32[?,?,?,?]"
    u = gb.input("u", gb.graph.inputs[0].type.with_shape(None))
    assert gb.transpose(u).type.shape is None
    assert shape_of(gb.shape(u)) == "i64[?]"


# -- import of old opset forms -------------------------------------------------------------------
def _run_onnx(nodes, inputs, outputs, feeds, opset, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset >= 12 else 6
    m = gx.import_model(model, check=False)
    return m, gx.compile(m, target="numpy", level=0).run(feeds)


def test_old_opset_attribute_forms():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
             helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             helper.make_node("Slice", ["s"], ["sl"], starts=[1, 0], ends=[100, -1], axes=[1, 2]),
             helper.make_node("Split", ["sl"], ["p0", "p1"], axis=2, split=[1, 2]),
             helper.make_node("Pad", ["p0"], ["pd"], pads=[0, 0, 1, 0, 0, 2], value=7.0)]
    outs = [vi("s", TensorProto.FLOAT, None), vi("sl", TensorProto.FLOAT, None),
            vi("p1", TensorProto.FLOAT, None), vi("pd", TensorProto.FLOAT, None)]
    m, got = _run_onnx(nodes, [vi("x", TensorProto.FLOAT, [2, 3, 4])], outs, {"x": x}, opset=9)
    np.testing.assert_array_equal(got["s"], x)
    np.testing.assert_array_equal(got["sl"], x[:, 1:, :-1])
    np.testing.assert_array_equal(got["p1"], x[:, 1:, 1:3])
    np.testing.assert_array_equal(got["pd"], np.pad(x[:, 1:, :1], [(0, 0), (0, 0), (1, 2)], constant_values=7))
    assert "f32[2,2,4]" in str(m)  # the padded result's inferred type

    nodes = [helper.make_node("Reshape", ["x"], ["r"], shape=[0, -1]),
             helper.make_node("TopK", ["r"], ["v", "i"], k=2)]
    outs = [vi("r", TensorProto.FLOAT, None), vi("v", TensorProto.FLOAT, None),
            vi("i", TensorProto.INT64, None)]
    _, got = _run_onnx(nodes, [vi("x", TensorProto.FLOAT, [2, 3, 4])], outs, {"x": x}, opset=4)
    np.testing.assert_array_equal(got["r"], x.reshape(2, 12))
    np.testing.assert_array_equal(got["v"], x.reshape(2, 12)[:, ::-1][:, :2])
    np.testing.assert_array_equal(got["i"], np.array([[11, 10], [11, 10]]))


# -- kernels against onnxruntime ---------------------------------------------------------------
ort = pytest.importorskip("onnxruntime")

ORT_CASES = {
    "slice_neg_steps": (
        [helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])],
        {"s": [-1, 5], "e": [-100, 0], "a": [2, 1], "t": [-2, -2]}, (3, 6, 5), np.float32),
    "gathernd_batch": (
        [helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=1)],
        {"i": np.array([[[1, 0], [0, -1]], [[2, 2], [1, 1]], [[0, 0], [2, 1]]])}, (3, 3, 4), np.float32),
    "scatter_elements_add": (
        [helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction="add")],
        {"i": np.array([[1, 1, 0], [2, -1, 2]]), "u": np.ones((2, 3), np.float32)}, (2, 4), np.float32),
    "scatternd_mul": (
        [helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="mul")],
        {"i": np.array([[0], [2], [0]]), "u": np.full((3, 4), 2.0, np.float32)}, (3, 4), np.float32),
    "pad_reflect": (
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")],
        {"p": [0, 2, 1, 0, 1, -1]}, (2, 4, 5), np.float32),
    "topk_ties": (
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=0, largest=1)],
        {"k": [3]}, "ties", np.float32),
    "cumsum_rev_excl": (
        [helper.make_node("CumSum", ["x", "ax"], ["y"], exclusive=1, reverse=1)],
        {"ax": np.array(1)}, (3, 5), np.int32),
    "depth_to_space_crd": (
        [helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")],
        {}, (1, 8, 2, 3), np.float32),
    "reverse_sequence": (
        [helper.make_node("ReverseSequence", ["x", "l"], ["y"], batch_axis=0, time_axis=1)],
        {"l": [4, 1, 3]}, (3, 4, 2), np.float32),
    "col2im": (
        [helper.make_node("Col2Im", ["x", "img", "blk"], ["y"], strides=[1, 2], pads=[1, 0, 0, 1],
                          dilations=[1, 1])],
        {"img": [4, 5], "blk": [2, 2]}, (1, 8, 12), np.float32),
    "unique_unsorted": (
        [helper.make_node("Unique", ["x"], ["y", "i1", "i2", "i3"], sorted=0)],
        {}, "dups", np.float32),
    "onehot_neg": (
        [helper.make_node("OneHot", ["ix", "d", "vals"], ["y"], axis=0)],
        {"ix": np.array([[0, -1], [7, 2]]), "d": np.array(4), "vals": np.array([-1.0, 5.0], np.float32)},
        None, np.float32),
}


@pytest.mark.parametrize("name", sorted(ORT_CASES))
def test_kernel_matches_onnxruntime(name):
    nodes, consts, shape, dtype = ORT_CASES[name]
    rng = np.random.default_rng(0)
    if shape == "ties":
        x = np.array([[1, 3], [3, 1], [2, 3], [3, 3]], dtype)
    elif shape == "dups":
        x = np.array([2, 1, 1, 3, 4, 3, 2], dtype)
    elif shape is None:
        x = None
    else:
        x = (rng.standard_normal(shape) * 10).astype(dtype)
    inits = [onnx.numpy_helper.from_array(np.asarray(v if isinstance(v, np.ndarray) else np.array(v, I64)), k)
             for k, v in consts.items()]
    inputs = [] if x is None else [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype),
                                                                 list(x.shape))]
    out_dtype = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outs = [helper.make_tensor_value_info(o, TensorProto.INT64 if o.startswith("i") else out_dtype, None)
            for o in nodes[-1].output]
    g = helper.make_graph(nodes, name, inputs, outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    feeds = {} if x is None else {"x": x}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    exe = gx.compile(gx.import_model(model, check=False), target="numpy", level=0)
    got = exe.run(feeds)
    for o, w in zip(nodes[-1].output, want):
        assert got[o].dtype == w.dtype, o
        np.testing.assert_allclose(got[o], w, rtol=1e-6, atol=1e-6, err_msg=f"{name}:{o}")
