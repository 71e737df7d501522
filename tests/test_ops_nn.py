"""Convolution / pooling / image ops: shape inference (symbolic dims included), auto_pad
resolution at import, and the numpy kernels against onnxruntime and a direct-loop conv."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.ir import parse
from galaxir.ir.builder import GraphBuilder
from galaxir.ir.ops.nn import same_pads, window_out_dim
from galaxir.ir.types import UNKNOWN, tensor

ort = pytest.importorskip("onnxruntime")


def _model(op_type, inputs, outputs, attrs=None, inits=(), opset=22):
    """A one-node ONNX model: inputs/outputs are (name, elem_type, shape) triples."""
    node = helper.make_node(op_type, [i[0] for i in inputs] + [t.name for t in inits],
                            [o[0] for o in outputs], **(attrs or {}))
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(o[0], o[1], o[2] if o[2] is not None else [None] * 4)
                           for o in outputs],
                          initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _both(model, feeds):
    exe = gx.compile(gx.import_model(model), target="numpy", level=0)
    ours = exe.run(feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    return [ours[n] for n in exe.output_names], ref


def _close(ours, ref, rtol=1e-4, atol=1e-5):
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        assert o.shape == r.shape, (o.shape, r.shape)
        assert o.dtype == r.dtype, (o.dtype, r.dtype)
        np.testing.assert_allclose(o, r, rtol=rtol, atol=atol)


# -- shape inference ----------------------------------------------------------------------
def test_conv_shape_symbolic_batch():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3, 224, 224))
    w = gb.constant(np.zeros((64, 3, 7, 7), np.float32))
    y = gb.conv(x, w, strides=(2, 2), pads=(3, 3, 3, 3))
    assert str(y.type) == "f32[N,64,112,112]"
    gb.output(y, "y")
    m = gb.module()
    m.verify()
    from galaxir.ir.printer import print_module
    text = print_module(m)
    assert "strides=[2,2]" in text.replace(" ", "")
    assert print_module(parse(text)) == text


def test_pool_shapes_ceil_and_auto_pad():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 8, 112, 112))
    y = gb.op("max_pool", x, num_results=1, kernel_shape=(3, 3), strides=(2, 2), ceil_mode=1)
    assert y.type.shape == ("N", 8, 56, 56)
    y2, idx = gb.op("max_pool", x, num_results=2, kernel_shape=(3, 3), strides=(2, 2))
    assert y2.type.shape == ("N", 8, 55, 55) and idx.type.dtype.name == "int64"
    z = gb.average_pool(x, kernel_shape=(3, 3), strides=(2, 2), auto_pad="SAME_UPPER")
    assert z.type.shape == ("N", 8, 56, 56)
    h = gb.input("h", tensor("f32", 1, 8, "H", 30))
    u = gb.average_pool(h, kernel_shape=(2, 2), strides=(2, 2))
    assert u.type.shape == (1, 8, UNKNOWN, 15)
    g = gb.global_average_pool(x)
    assert g.type.shape == ("N", 8, 1, 1)


def test_conv_transpose_and_resize_shapes():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 4, 10, 10))
    w = gb.constant(np.zeros((4, 6, 3, 3), np.float32))
    y = gb.conv_transpose(x, w, strides=(2, 2), pads=(1, 1, 1, 1), output_padding=(1, 1))
    assert y.type.shape == ("N", 6, 20, 20)
    s = gb.constant(np.array([1, 1, 2, 0.5], np.float32))
    r = gb.resize(x, None, s, None, mode="linear")
    assert r.type.shape == ("N", 4, 20, 5)


def test_window_geometry_helpers():
    assert window_out_dim(224, 7, 2, 1, 3, 3) == 112
    assert window_out_dim(5, 2, 2, 1, 0, 0, ceil_mode=True) == 3
    # the last window would start in the end pad: dropped
    assert window_out_dim(4, 2, 2, 1, 1, 1, ceil_mode=True) == 3
    assert same_pads([5], [4], [1], [1], "SAME_UPPER") == [1, 2]
    assert same_pads([5], [4], [1], [1], "SAME_LOWER") == [2, 1]


def test_auto_pad_resolved_only_when_static():
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 3, 3], np.ones(54, np.float32))
    for shape, resolved in (([1, 3, 9, 9], True), (["N", 3, "H", "W"], False)):
        m = _model("Conv", [("x", TensorProto.FLOAT, shape)], [("y", TensorProto.FLOAT, None)],
                   {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, inits=[w])
        conv = [op for op in gx.import_model(m).walk() if op.name == "conv"][0]
        if resolved:
            assert "auto_pad" not in conv.attrs and conv.attrs["pads"] == (1, 1, 1, 1)
        else:
            assert conv.attrs["auto_pad"] == "SAME_UPPER"
        x = np.random.default_rng(0).random((1, 3, 9, 9), np.float32)
        ours, ref = _both(m, {"x": x})
        _close(ours, ref)


# -- kernels ------------------------------------------------------------------------------
def _naive_conv(x, w, b, strides, dil, pads, group):
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    y = np.zeros((N, M, oh, ow), np.float64)
    Mg = M // group
    for n, m, i, j in itertools.product(range(N), range(M), range(oh), range(ow)):
        g = m // Mg
        patch = xp[n, g * Cg:(g + 1) * Cg, i * strides[0]:i * strides[0] + (kh - 1) * dil[0] + 1:dil[0],
                   j * strides[1]:j * strides[1] + (kw - 1) * dil[1] + 1:dil[1]]
        y[n, m, i, j] = (patch * w[m]).sum() + (b[m] if b is not None else 0)
    return y.astype(np.float32)


@pytest.mark.parametrize("group,strides,dil,pads,k", [
    (1, (1, 1), (1, 1), (1, 1, 1, 1), 3),
    (2, (2, 1), (1, 2), (0, 1, 2, 1), 3),
    (4, (1, 1), (1, 1), (1, 1, 1, 1), 3),   # depthwise
    (1, (2, 2), (1, 1), (0, 0, 0, 0), 1),   # strided 1x1
])
def test_conv_matches_direct_loops(group, strides, dil, pads, k):
    from galaxir.backends.numpy.kernels.nn import conv_nd
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 7, 8)).astype(np.float32)
    w = rng.standard_normal((4 if group == 4 else 6, 4 // group, k, k)).astype(np.float32)
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    y = conv_nd(x, w, b, strides, dil, pads, group)
    np.testing.assert_allclose(y, _naive_conv(x, w, b, strides, dil, pads, group), rtol=1e-4, atol=1e-4)
    assert y.dtype == np.float32


@pytest.mark.parametrize("attrs,wshape", [
    ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, [4, 3, 3, 3]),
    ({"group": 2, "dilations": [2, 1]}, [4, 2, 3, 2]),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, [4, 3, 3, 3]),
    ({"output_shape": [11, 12], "strides": [2, 2]}, [4, 3, 3, 3]),
])
def test_conv_transpose_vs_onnxruntime(attrs, wshape):
    rng = np.random.default_rng(2)
    w = helper.make_tensor("w", TensorProto.FLOAT, wshape, rng.standard_normal(int(np.prod(wshape))).astype(np.float32))
    m = _model("ConvTranspose", [("x", TensorProto.FLOAT, [1, 4, 5, 6])], [("y", TensorProto.FLOAT, None)],
               attrs, inits=[w])
    ours, ref = _both(m, {"x": rng.standard_normal((1, 4, 5, 6)).astype(np.float32)})
    _close(ours, ref, atol=1e-4)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("MaxPool", {"kernel_shape": [2, 3], "pads": [1, 0, 0, 1], "dilations": [2, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                     "count_include_pad": 1, "ceil_mode": 1}),
    ("LpPool", {"kernel_shape": [2, 2], "strides": [2, 2], "p": 3}),
    ("GlobalMaxPool", {}),
    ("GlobalAveragePool", {}),
])
def test_pools_vs_onnxruntime(op, attrs):
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 10)).astype(np.float32)
    m = _model(op, [("x", TensorProto.FLOAT, list(x.shape))], [("y", TensorProto.FLOAT, None)], attrs)
    ours, ref = _both(m, {"x": x})
    _close(ours, ref)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices_vs_onnxruntime(storage_order):
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 8)).astype(np.float32)
    m = _model("MaxPool", [("x", TensorProto.FLOAT, list(x.shape))],
               [("y", TensorProto.FLOAT, None), ("i", TensorProto.INT64, None)],
               {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                "storage_order": storage_order}, opset=12)
    ours, ref = _both(m, {"x": x})
    _close(ours, ref)


@pytest.mark.parametrize("attrs,scales,sizes", [
    ({"mode": "linear"}, [1, 1, 1.7, 0.6], None),
    ({"mode": "cubic", "coordinate_transformation_mode": "align_corners"}, [1, 1, 2, 2], None),
    ({"mode": "nearest", "nearest_mode": "round_prefer_ceil",
      "coordinate_transformation_mode": "asymmetric"}, None, [2, 3, 13, 4]),
    ({"mode": "linear", "antialias": 1}, None, [2, 3, 4, 3]),
])
def test_resize_vs_onnxruntime(attrs, scales, sizes):
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 7)).astype(np.float32)
    inits = [helper.make_tensor("roi", TensorProto.FLOAT, [0], [])]
    inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [len(scales or [])], scales or []))
    if sizes is not None:
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [4], sizes))
    m = _model("Resize", [("x", TensorProto.FLOAT, list(x.shape))], [("y", TensorProto.FLOAT, None)],
               attrs, inits=inits, opset=19)
    ours, ref = _both(m, {"x": x})
    _close(ours, ref, atol=1e-4)


@pytest.mark.parametrize("mode,padding", [("linear", "zeros"), ("nearest", "border"),
                                          ("cubic", "reflection")])
def test_grid_sample_vs_onnxruntime(mode, padding):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
    grid = (rng.random((1, 4, 3, 2)) * 2.6 - 1.3).astype(np.float32)
    m = _model("GridSample", [("x", TensorProto.FLOAT, list(x.shape)), ("g", TensorProto.FLOAT, list(grid.shape))],
               [("y", TensorProto.FLOAT, None)], {"mode": mode, "padding_mode": padding}, opset=20)
    ours, ref = _both(m, {"x": x, "g": grid})
    _close(ours, ref, atol=1e-4)


def test_upsample_opset9_is_nearest_floor():
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    s = helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 3])
    m = _model("Upsample", [("x", TensorProto.FLOAT, [1, 1, 2, 3])], [("y", TensorProto.FLOAT, None)],
               {"mode": "nearest"}, inits=[s], opset=9)
    mod = gx.import_model(m)
    assert [op.name for op in mod.walk()].count("resize") == 1
    (y,) = gx.compile(mod, target="numpy", level=0)(x)
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))


def test_conv_error_names_op():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 3, 8, 8))
    w = gb.constant(np.zeros((4, 2, 3, 3), np.float32))
    from galaxir.errors import GalaxirError
    with pytest.raises(GalaxirError, match="conv"):
        y = gb.conv(x, w)
        gb.output(y, "y")
        gb.module().verify()
