"""Native int8 between the quantized convs (int8_add, 8-bit max pooling, concat and nearest
resize on quantized tensors: passes/qdq.py, kernels_int8.QAdd / MaxPool8) and the int8
GEMM split over the thread pool (every work-split mode, 1-3 threads): bit-equal to the
numpy reference on the forced instruction-set paths."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import galaxir as gx  # noqa: E402
from galaxir.backends.cpu import kernels_int8 as KI  # noqa: E402

from conftest import DT, _one, _qdq_cnn, _rand, conv_model, matmul_model  # noqa: E402

ONNX_T = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}


def _model(nodes, inputs, out_shape, inits, out_t=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_tensor_value_info("y", out_t, out_shape or [None] * 4)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _native(model, feeds, num_threads=None, want=()):
    """cpu result (asserting no fallback and the ops in ``want`` native) and the reference."""
    ref = _one(gx.compile(model, target="numpy")(**feeds))
    exe = gx.compile(model, target="cpu", num_threads=num_threads)
    got = _one(exe(**feeds))
    assert exe.fallback_ops == [], exe.report()
    for w in want:
        assert w in exe.native_ops, exe.report()
    return got, ref, exe


# -- int8_add ----------------------------------------------------------------------------------
def add_model(adt, bdt, ydt, relu, shape, rng):
    inits = {"sa": np.float32(rng.random() * 0.1 + 0.01), "za": _rand(rng, adt, ()),
             "sb": np.float32(rng.random() * 0.1 + 0.01), "zb": _rand(rng, bdt, ()),
             "sy": np.float32(rng.random() * 0.1 + 0.02), "zy": _rand(rng, ydt, ())}
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
             helper.make_node("Add", ["fa", "fb"], ["s"])]
    last = "s"
    if relu:
        nodes.append(helper.make_node("Relu", ["s"], ["r"]))
        last = "r"
    nodes += [helper.make_node("QuantizeLinear", [last, "sy", "zy"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "sy", "zy"], ["y"])]
    return _model(nodes, [("a", ONNX_T[adt], shape), ("b", ONNX_T[bdt], shape)], shape, inits)


def test_int8_add_every_type_combination():
    rng = np.random.default_rng(0)
    shape = [2, 5, 7, 9]
    for adt, bdt, ydt, relu in itertools.product(DT, DT, DT, (False, True)):
        m = add_model(adt, bdt, ydt, relu, shape, rng)
        feeds = {"a": _rand(rng, adt, shape), "b": _rand(rng, bdt, shape)}
        got, ref, exe = _native(m, feeds, want=("int8_add",))
        assert "quantize_linear" not in exe.native_ops     # the round trip is gone
        np.testing.assert_array_equal(got, ref)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 70000), threads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**16))
def test_int8_add_sizes_and_threads(n, threads, seed):
    rng = np.random.default_rng(seed)
    m = add_model(np.uint8, np.uint8, np.uint8, True, [n], rng)
    feeds = {"a": _rand(rng, np.uint8, (n,)), "b": _rand(rng, np.uint8, (n,))}
    got, ref, _ = _native(m, feeds, threads, want=("int8_add",))
    np.testing.assert_array_equal(got, ref)


def test_int8_add_other_params_stay_float():
    """A broadcast operand is not fused into the native kernel's form: the QDQ graph
    stays and still matches the reference."""
    rng = np.random.default_rng(1)
    m = add_model(np.uint8, np.uint8, np.uint8, False, [3, 4], rng)
    m.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 1
    feeds = {"a": _rand(rng, np.uint8, (3, 4)), "b": _rand(rng, np.uint8, (1, 4))}
    ref = _one(gx.compile(m, target="numpy")(**feeds))
    exe = gx.compile(m, target="cpu")
    np.testing.assert_array_equal(_one(exe(**feeds)), ref)


# -- selecting ops on 8-bit values -------------------------------------------------------------
def select_model(op, dt, shape, rng, same=True, **attrs):
    s, z = np.float32(0.05), _rand(rng, dt, ())
    inits = {"s": s, "z": z, "s2": np.float32(0.07) if not same else s, "z2": z}
    n_in = 2 if op == "Concat" else 1
    nodes = [helper.make_node("DequantizeLinear", [f"x{i}", "s", "z"], [f"f{i}"]) for i in range(n_in)]
    ins = [f"f{i}" for i in range(n_in)]
    if op == "Resize":
        inits["scales"] = np.array([1, 1, 2, 3], np.float32)
        ins += ["", "scales"]
    nodes += [helper.make_node(op, ins, ["p"], **attrs),
              helper.make_node("QuantizeLinear", ["p", "s2", "z2"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "s2", "z2"], ["y"])]
    return _model(nodes, [(f"x{i}", ONNX_T[dt], shape) for i in range(n_in)], None, inits)


POOLS = [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         dict(kernel_shape=[2, 2], strides=[2, 2]),
         dict(kernel_shape=[3, 2], strides=[1, 3], pads=[2, 0, 1, 1], dilations=[2, 1]),
         dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)]


@pytest.mark.parametrize("attrs", POOLS, ids=range(len(POOLS)))
@pytest.mark.parametrize("dt", DT, ids=["u8", "s8"])
def test_max_pool_on_8_bits(attrs, dt):
    rng = np.random.default_rng(2)
    for shape in ([1, 3, 9, 11], [2, 20, 16, 16]):
        m = select_model("MaxPool", dt, shape, rng, **attrs)
        feeds = {"x0": _rand(rng, dt, shape)}
        got, ref, exe = _native(m, feeds, want=("max_pool",))
        assert "quantize_linear" not in exe.native_ops, exe.report()
        np.testing.assert_array_equal(got, ref)


def test_max_pool_on_8_bits_direct():
    """An ONNX MaxPool on a uint8 tensor runs on the 8-bit kernel too."""
    rng = np.random.default_rng(3)
    m = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
               [("x", TensorProto.UINT8, [1, 4, 10, 10])], None, {}, TensorProto.UINT8)
    feeds = {"x": _rand(rng, np.uint8, (1, 4, 10, 10))}
    got, ref, _ = _native(m, feeds, want=("max_pool",))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("op,attrs", [("Concat", dict(axis=1)), ("Resize", dict(mode="nearest"))])
def test_concat_resize_on_8_bits(op, attrs):
    rng = np.random.default_rng(4)
    shape = [1, 3, 5, 6]
    for dt in DT:
        m = select_model(op, dt, shape, rng, **attrs)
        feeds = {f"x{i}": _rand(rng, dt, shape) for i in range(2 if op == "Concat" else 1)}
        got, ref, exe = _native(m, feeds)
        assert "quantize_linear" not in exe.native_ops, exe.report()
        np.testing.assert_array_equal(got, ref)


def test_selecting_op_with_other_scale_keeps_the_round_trip():
    rng = np.random.default_rng(5)
    m = select_model("MaxPool", np.uint8, [1, 2, 6, 6], rng, same=False, kernel_shape=[2, 2])
    feeds = {"x0": _rand(rng, np.uint8, (1, 2, 6, 6))}
    got, ref, exe = _native(m, feeds)
    assert "quantize_linear" in exe.native_ops
    np.testing.assert_array_equal(got, ref)


# -- the int8 GEMM over the thread pool --------------------------------------------------------
CONVS = {  # N, C, H, W, M, k, s, p, g: one per work-split mode / corner
    "phased-wide": (2, 8, 9, 37, 24, 3, 1, 1, 1),
    "phased-strided": (1, 6, 17, 19, 40, 3, 2, 1, 1),
    "phased-groups": (1, 64, 6, 20, 64, 3, 1, 1, 2),
    "depthwise": (2, 24, 11, 18, 24, 3, 1, 1, 24),
    "grouped-few": (1, 12, 8, 8, 12, 3, 2, 0, 3),
    "pointwise": (2, 16, 7, 7, 40, 1, 1, 0, 1),       # 1x1: pixels as one row
    "pointwise-strided": (1, 16, 9, 9, 24, 1, 2, 0, 1),
}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "im2col"])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_split_over_threads(path, case, direct, threads, monkeypatch):
    monkeypatch.setenv("GALAXIR_CPU_INT8_DIRECT", direct)
    rng = np.random.default_rng(6)
    N, C, H, W, M, k, s, p, g = CONVS[case]
    for xdt, wdt in ((np.uint8, np.int8), (np.int8, np.uint8)):   # u8 weights: column sums
        m = conv_model(rng, N, C, H, W, M, k, s, p, g, xdt, wdt, True)
        got, ref, _ = _native(m, {"x": _rand(rng, xdt, (N, C, H, W))}, threads)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matmul_split_over_threads(path, threads):
    rng = np.random.default_rng(7)
    for M in (1, 5, 67):
        for xdt, wdt in ((np.uint8, np.int8), (np.int8, np.uint8)):
            m = matmul_model(rng, M, 45, 37, xdt, wdt, True)
            got, ref, _ = _native(m, {"x": _rand(rng, xdt, (M, 45))}, threads)
            np.testing.assert_array_equal(got, ref)


def test_work_split_modes():
    """The split the kernels choose: several tasks for big convs, grouped convs with few
    channels per group by (image, group) pairs, matmuls by row chunks."""
    base = dict(vnni=True, lanes=16, x_signed=False, zx=0, out="u8", direct=True)
    conv = KI.QGemm(kind="conv", M=256, batch=1, C=256, H=14, W=14, OH=14, OW=14, kh=3, kw=3,
                    pt=1, pl=1, **base)
    assert conv.mode == "phased" and conv.n_tasks() >= 8
    small = KI.QGemm(kind="conv", M=8, batch=1, C=8, H=30, W=30, OH=30, OW=30, kh=3, kw=3,
                     pt=1, pl=1, **base)
    assert small.mode == "phased" and small.n_tasks() >= 8      # split over output rows
    dw = KI.QGemm(kind="conv", M=32, batch=1, C=32, H=8, W=8, OH=8, OW=8, kh=3, kw=3, pt=1,
                  pl=1, group=32, **base)
    assert dw.mode == "groups" and dw.n_tasks() == KI.SLOTS
    assert dw.scratch_bytes == KI.SLOTS * dw.slot_bytes
    mm = KI.QGemm(kind="matmul", M=128, K=64, N=64, **{**base, "direct": False})
    assert mm.mode == "matmul" and mm.n_tasks() == KI.TASKS
    no_zp = KI.QGemm(kind="conv", M=16, batch=1, C=8, H=8, W=8, OH=8, OW=8, kh=1, kw=1,
                     colsum=False, **base)
    assert no_zp.gemm_rows == 16 and no_zp.rows == 17


# -- a QDQ CNN from onnxruntime's quantizer ----------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qdq_cnn_has_no_round_trips(tmp_path):
    """Residual adds and max pooling of onnxruntime's QDQ model run in int8: the only
    quantize/dequantize left are at the input, the output and around the global average
    pool (float in this form)."""
    qp = _qdq_cnn(tmp_path)
    exe = gx.compile(qp, target="cpu")
    assert exe.fallback_ops == [] and len(exe.last.segments) == 1, exe.report()
    ops = exe.native_ops
    assert ops.count("int8_add") == 2 and "max_pool" in ops
    assert ops.count("quantize_linear") <= 2 and ops.count("dequantize_linear") <= 2, exe.report()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = _one(gx.compile(qp, target="numpy")(x=x))
    got = _one(exe(x=x))
    model = onnx.load(qp)
    step = max(float(np.max(numpy_helper.to_array(i))) for i in model.graph.initializer
               if i.name.endswith("_scale"))
    assert np.abs(got - ref).max() <= 2 * step + 1e-6


def test_quantize_shares_max_pool_params():
    """gx.quantize gives a max pool's output its input's scale, so it runs on 8 bits."""
    from galaxir.ir.builder import GraphBuilder
    from galaxir.ir.types import tensor
    rng = np.random.default_rng(9)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 3, 12, 12))
    y = gb.relu(gb.conv(x, gb.constant(rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
                        pads=(1, 1, 1, 1)))
    y = gb.max_pool(y, kernel_shape=(2, 2), strides=(2, 2), num_results=1)
    y = gb.conv(y, gb.constant(rng.standard_normal((4, 8, 1, 1)).astype(np.float32)))
    gb.output(y, "y")
    m = gb.module()
    cal = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32) * (1 + k)} for k in range(4)]
    qm = gx.quantize(m, cal, method="percentile", progress=False)
    exe = gx.compile(qm, target="cpu")
    assert exe.fallback_ops == [] and exe.native_ops.count("quantize_linear") == 1, exe.report()
    got = _one(exe(**cal[0]))
    ref = _one(gx.compile(qm, target="numpy")(**cal[0]))
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
