"""Zero-size tensors through every op family: each case runs on onnxruntime, on the numpy
reference (O0) and on the cpu target at its default level (O3: fusion and channels-last
layout), and all three agree on the result's shape and values.  A zero-size dim is where
shape arithmetic, empty loops and pointer math go wrong."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import galaxir as gx

ort = pytest.importorskip("onnxruntime")

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _case(op, shapes, attrs=None, consts=None, dtypes=None, n_out=1):
    return dict(op=op, shapes=shapes, attrs=attrs or {}, consts=consts or {},
                dtypes=dtypes or [F] * len(shapes), n_out=n_out)


def _c(name, arr):
    arr = np.asarray(arr)
    kind = I64 if arr.dtype == np.int64 else F
    return name, helper.make_tensor(name, kind, arr.shape, arr.reshape(-1).tolist())


CASES = {
    # elementwise, unary / binary / broadcasting / fused chain
    "relu": _case("Relu", [(0, 4)]),
    "sigmoid": _case("Sigmoid", [(3, 0, 2)]),
    "add_broadcast": _case("Add", [(0, 1, 4), (3, 1)]),
    "mul_both_empty": _case("Mul", [(2, 0), (2, 0)]),
    "where": _case("Where", [(0, 3), (0, 3), (0, 3)], dtypes=[TensorProto.BOOL, F, F]),
    "cast": _case("Cast", [(4, 0)], attrs=dict(to=I64)),
    # linear algebra
    "matmul_empty_m": _case("MatMul", [(0, 8), (8, 5)]),
    "matmul_empty_k": _case("MatMul", [(3, 0), (0, 5)]),
    "matmul_batched": _case("MatMul", [(0, 2, 4), (4, 3)]),
    "gemm_empty_m": _case("Gemm", [(0, 6)], attrs=dict(transB=1),
                          consts=dict([_c("w", np.ones((4, 6), np.float32)),
                                       _c("b", np.ones(4, np.float32))])),
    # convolution and pooling (batch 0 and a zero-size spatial dim)
    "conv_batch0": _case("Conv", [(0, 3, 8, 8)], attrs=dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                         consts=dict([_c("w", np.ones((4, 3, 3, 3), np.float32))])),
    "depthwise_batch0": _case("Conv", [(0, 4, 6, 6)], attrs=dict(kernel_shape=[3, 3], group=4),
                              consts=dict([_c("w", np.ones((4, 1, 3, 3), np.float32))])),
    "maxpool_batch0": _case("MaxPool", [(0, 2, 4, 4)], attrs=dict(kernel_shape=[2, 2])),
    "avgpool_batch0": _case("AveragePool", [(0, 2, 5, 5)], attrs=dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "global_avg_pool": _case("GlobalAveragePool", [(0, 3, 5, 5)]),
    # normalization
    "softmax": _case("Softmax", [(0, 7)], attrs=dict(axis=-1)),
    "layer_norm": _case("LayerNormalization", [(0, 6)], attrs=dict(axis=-1),
                        consts=dict([_c("g", np.ones(6, np.float32)), _c("bb", np.zeros(6, np.float32))])),
    "batch_norm": _case("BatchNormalization", [(0, 3, 2, 2)],
                        consts=dict([_c(n, np.ones(3, np.float32)) for n in ("s", "b2", "m", "v")])),
    # reductions
    "reduce_sum_empty_axis": _case("ReduceSum", [(3, 0)], attrs=dict(keepdims=0),
                                   consts=dict([_c("ax", np.array([1], np.int64))])),
    "reduce_max_empty_rows": _case("ReduceMax", [(0, 4)], attrs=dict(axes=[1], keepdims=1)),
    # data movement
    "concat": _case("Concat", [(2, 0), (2, 3)], attrs=dict(axis=1)),
    "transpose": _case("Transpose", [(0, 3, 2)], attrs=dict(perm=[2, 0, 1])),
    "reshape": _case("Reshape", [(0, 6)], consts=dict([_c("shp", np.array([0, 3, 2], np.int64))])),
    "slice_to_empty": _case("Slice", [(4, 5)], consts=dict([_c("st", np.array([2], np.int64)),
                                                           _c("en", np.array([2], np.int64))])),
    "gather_empty_indices": _case("Gather", [(5, 3)], attrs=dict(axis=0),
                                  consts=dict([_c("idx", np.zeros((0,), np.int64))])),
    "pad": _case("Pad", [(0, 3)], consts=dict([_c("pads", np.array([0, 1, 0, 1], np.int64))])),
    "split": _case("Split", [(0, 4)], attrs=dict(axis=1), n_out=2),
    "tile": _case("Tile", [(0, 2)], consts=dict([_c("reps", np.array([3, 2], np.int64))])),
    "expand": _case("Expand", [(1, 3)], consts=dict([_c("to", np.array([0, 3], np.int64))])),
}

#: Which consts are operands (in order after the runtime inputs), per case.
OPERANDS = {"gemm_empty_m": ["w", "b"], "conv_batch0": ["w"], "depthwise_batch0": ["w"],
            "layer_norm": ["g", "bb"], "batch_norm": ["s", "b2", "m", "v"],
            "reduce_sum_empty_axis": ["ax"], "reshape": ["shp"], "slice_to_empty": ["st", "en"],
            "gather_empty_indices": ["idx"], "pad": ["pads"], "tile": ["reps"], "expand": ["to"]}


def _model(name):
    c = CASES[name]
    ins = [f"x{i}" for i in range(len(c["shapes"]))]
    outs = [f"y{i}" for i in range(c["n_out"])]
    node = helper.make_node(c["op"], ins + OPERANDS.get(name, []), outs, **c["attrs"])
    out_type = I64 if c["op"] == "Cast" else F
    out_vi = [helper.make_tensor_value_info(o, out_type, None) for o in outs]
    g = helper.make_graph([node], name,
                          [helper.make_tensor_value_info(n, t, list(s))
                           for n, t, s in zip(ins, c["dtypes"], c["shapes"])],
                          out_vi, list(c["consts"].values()))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _feeds(name):
    c = CASES[name]
    rng = np.random.default_rng(0)
    feeds = {}
    for i, (s, t) in enumerate(zip(c["shapes"], c["dtypes"])):
        x = rng.standard_normal(s).astype(np.float32)
        feeds[f"x{i}"] = x > 0 if t == TensorProto.BOOL else x
    return feeds


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_size_agrees_with_onnxruntime(name):
    model = _model(name)
    feeds = _feeds(name)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert any(w.size == 0 for w in want) or any(x.size == 0 for x in feeds.values())
    m = gx.import_model(model)
    for target, level in (("numpy", 0), ("cpu", None)):
        opts = {} if level is None else {"level": level}
        mod = m if level == 0 else gx.optimize(m, level=3, target=target)
        got = gx.compile(mod, target=target, **opts).run(feeds)
        for w, o in zip(want, sorted(got)):
            g = got[o]
            assert g.shape == w.shape, f"{target}: {o} has shape {g.shape}, onnxruntime {w.shape}"
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=target)


@pytest.mark.parametrize("dynamic", [False, True])
def test_zero_batch_linear_writes_nothing(dynamic):
    # [0, 3, 4] @ [4, 5] + c -> tanh: the size-0 batch dim broadcast against the weight's
    # absent one must stay 0 (it became 1, and the kernel wrote a row block past the output)
    from galaxir.ir import GraphBuilder, tensor
    rng = np.random.default_rng(3)
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", "B" if dynamic else 0, 3, 4))
    w, c = gb.constant(rng.standard_normal((4, 5)).astype(np.float32)), gb.constant(np.ones(5, np.float32))
    gb.output(gb.op("tanh", gb.op("add", gb.op("matmul", a, w), c)), "y")
    exe = gx.compile(gb.module(), target="cpu")
    for b in ([2, 0, 1, 0] if dynamic else [0]):
        guard = np.full(b * 15 + 64, 7.0, np.float32)
        out = guard[:b * 15].reshape(b, 3, 5)
        feeds = {"a": rng.standard_normal((b, 3, 4)).astype(np.float32)}
        got = exe.run(feeds, out={"y": out})["y"]
        assert got.shape == (b, 3, 5)
        np.testing.assert_allclose(got, np.tanh(feeds["a"] @ w.producer.attr("value") + 1), rtol=1e-5, atol=1e-6)
        assert (guard[b * 15:] == 7.0).all(), "the kernel wrote past the output"
