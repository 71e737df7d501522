"""Elementwise ops: shape inference with symbolic dims, numpy kernels against onnxruntime,
composite decompositions against their kernels, cast corner cases (float8 saturation,
float8e8m0 rounding, sub-byte ints, strings) and the importer's upgrade of old opsets."""
import math

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.errors import ShapeInferenceError, VerificationError
from galaxir.ir.builder import GraphBuilder
from galaxir.ir.opdef import lookup
from galaxir.ir.types import DType, tensor
from conftest import run_op

RNG = np.random.default_rng(0)


def _infer(name, *types, **attrs):
    gb = GraphBuilder()
    xs = [gb.input(f"x{i}", t) for i, t in enumerate(types)]
    out = gb.op(name, *xs, **attrs)
    return str(out.type) if not isinstance(out, tuple) else tuple(str(o.type) for o in out)




# -- shape inference ----------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,want", [
    (("N", 3), (1, 3), "f32[N,3]"),
    (("N", 1), (1, "M"), "f32[N,M]"),
    (("N", 3), (3,), "f32[N,3]"),
    ((), ("B", "S", 8), "f32[B,S,8]"),
    (("N", 4), ("N", 4), "f32[N,4]"),
    (("N",), (5,), "f32[5]"),
    (("?", 2), (7, 1), "f32[7,2]"),
])
def test_binary_broadcast_symbolic(a, b, want):
    assert _infer("add", tensor("f32", *a), tensor("f32", *b)) == want
    assert _infer("less", tensor("f32", *a), tensor("f32", *b)) == want.replace("f32", "bool")


def test_unary_variadic_where_infer():
    t = tensor("f16", "N", "C", 7)
    assert _infer("tanh", t) == "f16[N,C,7]"
    assert _infer("gelu", t, approximate="tanh") == "f16[N,C,7]"
    assert _infer("isnan", t) == "bool[N,C,7]"
    assert _infer("max", tensor("f32", "N", 1), tensor("f32", 1, 4), tensor("f32", 4)) == "f32[N,4]"
    assert _infer("where", tensor("bool", "N", 1), tensor("i64", 1, "M"), tensor("i64")) == "i64[N,M]"
    assert _infer("cast", t, to=DType.bfloat16) == "bf16[N,C,7]"
    assert _infer("bit_cast", tensor("f32", "N"), to=DType.int32) == "i32[N]"
    assert _infer("pow", tensor("f32", "N", 1), tensor("i64", 3)) == "f32[N,3]"
    assert _infer("prelu", tensor("f32", "N", 3, 5), tensor("f32", 3, 1)) == "f32[N,3,5]"
    assert _infer("dropout", t, num_results=2) == ("f16[N,C,7]", "bool[N,C,7]")
    u = tensor("f32", 1).with_shape(None)
    assert _infer("add", u, tensor("f32", 3)) == "f32[*]"
    assert _infer("cast", u, to=DType.int8) == "i8[*]"


def test_infer_errors():
    with pytest.raises(ShapeInferenceError, match="do not broadcast"):
        _infer("mul", tensor("f32", "N", 3), tensor("f32", 4))
    with pytest.raises(ShapeInferenceError, match="one element type"):
        _infer("add", tensor("f32", 3), tensor("f16", 3))
    with pytest.raises(ShapeInferenceError, match="must be bool"):
        _infer("and", tensor("i32", 3), tensor("bool", 3))
    with pytest.raises(ShapeInferenceError, match=r"condition \(operand 0\) must be bool"):
        _infer("where", tensor("f32", 3), tensor("f32", 3), tensor("f32", 3))
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4))
    gb.output(gb.bit_cast(x, to=DType.int16), "y")
    with pytest.raises(VerificationError, match="widths must be equal"):
        gb.module().verify()
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4))
    gb.output(gb.gelu(x, approximate="erf"), "y")
    with pytest.raises(VerificationError, match="approximate must be one of none, tanh"):
        gb.module().verify()


# -- kernels against onnxruntime ------------------------------------------------------------------
def _onnx_model(op_type, inputs, attrs, n_out=1, opset=21):
    def elem(a):
        return TensorProto.STRING if a.dtype == object else helper.np_dtype_to_tensor_dtype(a.dtype)
    ins = [helper.make_tensor_value_info(f"x{i}", elem(a), a.shape) for i, a in enumerate(inputs)]
    outs = [helper.make_empty_tensor_value_info(f"y{i}") for i in range(n_out)]
    node = helper.make_node(op_type, [f"x{i}" for i in range(len(inputs))],
                            [f"y{i}" for i in range(n_out)], **attrs)
    m = helper.make_model(helper.make_graph([node], "g", ins, outs),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return onnx.shape_inference.infer_shapes(m)  # output types for onnxruntime


def _vs_onnxruntime(op_type, inputs, attrs=None, opset=21, rtol=1e-6, atol=1e-6):
    ort = pytest.importorskip("onnxruntime")
    m = _onnx_model(op_type, inputs, attrs or {}, opset=opset)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    want = sess.run(None, feeds)
    exe = gx.compile(gx.import_model(m), target="numpy", level=0)
    got = exe.run(feeds)
    for w, name in zip(want, exe.output_names):
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape
        if w.dtype == object:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def _f(*shape, dtype=np.float32, scale=3.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def _i(*shape, dtype=np.int32, lo=-50, hi=50):
    return RNG.integers(lo, hi, shape).astype(dtype)


ORT_CASES = [
    ("Div", [_i(4, 5), np.array([3, -4, 9, -1, 2], np.int32)], {}),
    ("Div", [_i(3, 4, dtype=np.int64), np.array([7, -7, 3, -2], np.int64)], {}),
    ("Mod", [_i(4, 5), np.array([3, -3, 7, -7, 5], np.int32)], {}),
    ("Mod", [_f(4, 5), _f(5) + 0.5], {"fmod": 1}),
    ("Pow", [_f(3, 4), np.array([2, 3, 0, 1], np.int64)], {}),
    ("Pow", [_i(3, 4, lo=-5, hi=6), np.array([2, 3, 0, 1], np.int32)], {}),
    ("BitShift", [_i(6, dtype=np.uint8, lo=0, hi=255), np.array([0, 1, 3, 7, 2, 5], np.uint8)],
     {"direction": "LEFT"}),
    ("BitShift", [_i(6, dtype=np.uint32, lo=0, hi=10 ** 6), np.array([0, 1, 3, 31, 2, 5], np.uint32)],
     {"direction": "RIGHT"}),
    ("Clip", [_i(3, 6, dtype=np.int8), np.array(-10, np.int8), np.array(20, np.int8)], {}),
    ("Max", [_f(2, 1, 4), _f(3, 1), _f(4)], {}),
    ("Mean", [_f(2, 3), _f(3), _f(1, 3)], {}),
    ("Sum", [_f(2, 3, dtype=np.float64), _f(3, dtype=np.float64)], {}),
    ("Gelu", [_f(3, 7)], {"approximate": "tanh"}),
    ("Gelu", [_f(3, 7)], {}),
    ("Elu", [_f(3, 7)], {"alpha": 0.7}),
    ("Selu", [_f(3, 7)], {}),
    ("Celu", [_f(3, 7)], {"alpha": 2.0}),
    ("HardSwish", [_f(3, 7)], {}),
    ("HardSigmoid", [_f(3, 7)], {"alpha": 0.3, "beta": 0.4}),
    ("Mish", [_f(3, 7)], {}),
    ("Softplus", [_f(3, 7, scale=30)], {}),
    ("Sigmoid", [_f(3, 7, scale=30)], {}),
    ("Softsign", [_f(3, 7)], {}),
    ("Shrink", [_f(3, 7)], {"lambd": 1.5, "bias": 0.25}),
    ("ThresholdedRelu", [_f(3, 7)], {"alpha": 0.5}),
    ("LeakyRelu", [_f(3, 7)], {"alpha": 0.2}),
    ("PRelu", [_f(2, 3, 4), _f(3, 1)], {}),
    ("Erf", [_f(50)], {}),
    ("Round", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6], np.float32)], {}),
    ("Sign", [_i(9, lo=-3, hi=3)], {}),
    ("Where", [_f(3, 1) > 0, _i(1, 4), _i(3, 4)], {}),
    ("Equal", [np.array(["a", "b", "c"], dtype=object), np.array(["a", "x", "c"], dtype=object)], {}),
    ("IsInf", [np.array([1, np.inf, -np.inf, np.nan], np.float32)], {"detect_negative": 0}),
    ("Cast", [np.array([-1.7, 0.2, 300.5, 2.5], np.float32)], {"to": TensorProto.INT8}),
    ("Cast", [np.array([-129, 0, 300, 255], np.int32)], {"to": TensorProto.UINT8}),
    ("Cast", [np.array([0.0, -2.0, np.nan], np.float32)], {"to": TensorProto.BOOL}),
    ("Cast", [np.array([1.0e5, 3.14159, -1e-3], np.float32)], {"to": TensorProto.FLOAT16}),
    ("Cast", [np.array(["1.5", "-2", "+INF", "nan", "1E3"], dtype=object)], {"to": TensorProto.FLOAT}),
    ("Cast", [np.array([0.5, -1.25, 3.0, np.inf, 1 / 3], np.float32)], {"to": TensorProto.STRING}),
]


@pytest.mark.parametrize("op_type,inputs,attrs", ORT_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ORT_CASES)])
def test_kernel_vs_onnxruntime(op_type, inputs, attrs):
    rtol = 1e-3 if op_type == "Cast" else 2e-6
    _vs_onnxruntime(op_type, inputs, attrs, rtol=rtol, atol=1e-6)


# -- decompositions ---------------------------------------------------------------------------------
DECOMPOSED = [
    ("softplus", {}), ("softsign", {}), ("elu", {"alpha": 0.5}), ("selu", {}), ("celu", {"alpha": 1.5}),
    ("leaky_relu", {"alpha": 0.1}), ("thresholded_relu", {"alpha": 0.3}),
    ("hard_sigmoid", {"alpha": 0.25, "beta": 0.4}), ("hard_swish", {}), ("mish", {}),
    ("swish", {"alpha": 1.7}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
    ("shrink", {"lambd": 0.7, "bias": 0.2}), ("prelu", {}), ("ml.binarizer", {"threshold": 0.3}),
]


@pytest.mark.parametrize("name,attrs", DECOMPOSED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(DECOMPOSED)])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_decomposition_matches_kernel(name, attrs, dtype):
    od = lookup(name)
    assert od.is_composite
    gb = GraphBuilder()
    x = gb.input("x", tensor(dtype, "N", 6))
    operands = [x] + ([gb.input("s", tensor(dtype, 6))] if name == "prelu" else [])
    op = gb.create(name, *operands, **attrs)
    (dec,) = od.decompose(gb, op)
    assert dec.type == op.results[0].type
    used = {o.name for o in gb.graph.block if o is not op}
    assert not any(lookup(n).is_composite for n in used), used
    gb.output(op.results[0], "kernel")
    gb.output(dec, "decomposed")
    exe = gx.compile(gb.module(), target="numpy", level=0)
    npdt = DType.from_short(dtype).numpy
    xv = (RNG.standard_normal((5, 6)) * 4).astype(npdt)
    xv[0, :3] = [0.0, 40.0, -40.0]
    args = [xv] + ([RNG.standard_normal(6).astype(npdt)] if name == "prelu" else [])
    k, d = exe(*args)
    np.testing.assert_allclose(d, k, rtol=1e-5, atol=1e-6)


# -- cast corner cases ------------------------------------------------------------------------------
def test_cast_float8_saturate_and_not():
    x = np.array([1e6, -1e6, np.inf, -np.inf, np.nan, 0.3, 1e-9], np.float32)
    for to in (DType.float8e4m3fn, DType.float8e4m3fnuz, DType.float8e5m2, DType.float8e5m2fnuz):
        info = ml_dtypes.finfo(to.numpy)
        sat = run_op("cast", x, to=to).astype(np.float32)
        assert sat[0] == float(info.max) and sat[1] == float(info.min)
        assert sat[2] == float(info.max) and sat[3] == float(info.min)
        assert np.isnan(sat[4])
        assert sat[5] == np.float32(x[5]).astype(to.numpy).astype(np.float32)
        raw = run_op("cast", x, to=to, saturate=0).astype(np.float32)
        assert not np.isfinite(raw[0])  # out of range: inf or NaN without saturation
    f16 = run_op("cast", np.array([60000.0, -np.inf], np.float16), to=DType.float8e5m2)
    assert f16.astype(np.float32).tolist() == [57344.0, -57344.0]


def test_cast_float8e8m0_round_modes():
    x = np.array([1.0, 1.5, 3.0, 0.75, 2.0 ** 127 * 1.5, np.inf, np.nan], np.float32)
    up = run_op("cast", x, to=DType.float8e8m0).astype(np.float32)
    np.testing.assert_array_equal(up[:4], [1.0, 2.0, 4.0, 1.0])
    assert up[4] == 2.0 ** 127  # saturated: no round-up past the largest exponent
    assert np.isnan(up[5]) and np.isnan(up[6])
    down = run_op("cast", x, to=DType.float8e8m0, round_mode="down").astype(np.float32)
    np.testing.assert_array_equal(down[:4], [1.0, 1.0, 2.0, 0.5])
    near = run_op("cast", x, to=DType.float8e8m0, round_mode="nearest").astype(np.float32)
    np.testing.assert_array_equal(near[:4], [1.0, 2.0, 4.0, 1.0])
    want = onnx.numpy_helper.to_float8e8m0(x, True, "nearest").astype(np.float32)
    np.testing.assert_array_equal(near[:5], want[:5])


def test_cast_subbyte_bf16_and_strings():
    x = np.arange(-9, 16).astype(np.float32)
    np.testing.assert_array_equal(run_op("cast", x, to=DType.int4).astype(np.int8),
                                  x.astype(ml_dtypes.int4).astype(np.int8))
    np.testing.assert_array_equal(run_op("cast", x, to=DType.uint4).astype(np.int8),
                                  x.astype(ml_dtypes.uint4).astype(np.int8))
    i4 = np.array([-8, -1, 0, 7], ml_dtypes.int4)
    np.testing.assert_array_equal(run_op("cast", i4, to=DType.float16), [-8, -1, 0, 7])
    bf = run_op("cast", np.array([1, 300, -7], np.int64), to=DType.bfloat16)
    assert bf.dtype == ml_dtypes.bfloat16 and bf.astype(np.float32).tolist() == [1, 300, -7]
    s = run_op("cast", np.array([1.5, -2.0, np.nan, -np.inf], np.float64), to=DType.string)
    assert s.tolist() == ["1.5", "-2", "NaN", "-INF"]
    back = run_op("cast", np.array(["7", "-3", "12"], dtype=object), to=DType.int16)
    assert back.dtype == np.int16 and back.tolist() == [7, -3, 12]
    b = run_op("cast", np.array([True, False]), to=DType.string)
    assert b.tolist() == ["1", "0"]


def test_bit_cast_and_bitshift_out_of_range():
    x = np.array([1.0, -2.5], np.float32)
    np.testing.assert_array_equal(run_op("bit_cast", x, to=DType.int32), x.view(np.int32))
    a = np.array([-8, 8, -1, 5], np.int8)
    s = np.array([1, 9, 8, -1], np.int8)
    np.testing.assert_array_equal(run_op("bit_shift", a, s, direction="RIGHT"), [-4, 0, -1, 0])
    np.testing.assert_array_equal(run_op("bit_shift", a, s, direction="LEFT"), [-16, 0, 0, 0])


def test_int_div_mod_semantics():
    a = np.array([7, -7, 7, -7, 5], np.int32)
    b = np.array([2, 2, -2, -2, 0], np.int32)
    np.testing.assert_array_equal(run_op("div", a, b), [3, -3, -3, 3, 0])  # truncates toward zero
    np.testing.assert_array_equal(run_op("mod", a, b), [1, 1, -1, -1, 0])  # divisor's sign
    np.testing.assert_array_equal(run_op("mod", a, b, fmod=1), [1, -1, 1, -1, 0])
    np.testing.assert_array_equal(run_op("pow", np.array([2, 3], np.int64), np.array([-1, 2], np.int64)), [0, 9])


def test_dropout_inference_and_seeded_training():
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    y, mask = run_op("dropout", x, num_results=2)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all()
    r, t = np.array(0.25, np.float32), np.array(True)
    y, mask = run_op("dropout", x, r, t, num_results=2, seed=3)
    keep = np.random.RandomState(3).uniform(0, 1, x.shape) >= 0.25
    np.testing.assert_array_equal(mask, keep)
    np.testing.assert_allclose(y, x * keep / 0.75, rtol=1e-6)


# -- the importer: old opset forms ------------------------------------------------------------------
def _importrun_op(nodes, ins, outs, feeds, opset, inits=()):
    g = helper.make_graph(nodes, "g", ins, outs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    exe = gx.compile(gx.import_model(m), target="numpy", level=0)
    return exe.run(feeds)


def test_legacy_broadcast_axis_clip_attrs_cast_string_to():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    vi = helper.make_tensor_value_info
    out = _importrun_op([helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)],
                      [vi("x", TensorProto.FLOAT, [2, 3, 4]), vi("b", TensorProto.FLOAT, [3])],
                      [vi("y", TensorProto.FLOAT, [2, 3, 4])], {"x": x, "b": b}, opset=6)
    np.testing.assert_allclose(out["y"], x + b[:, None], rtol=1e-6)
    out = _importrun_op([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)],
                      [vi("x", TensorProto.FLOAT, [2, 3, 4])], [vi("y", TensorProto.FLOAT, [2, 3, 4])],
                      {"x": x}, opset=6)
    np.testing.assert_allclose(out["y"], np.clip(x, -0.5, 0.25))
    out = _importrun_op([helper.make_node("Cast", ["x"], ["y"], to="INT32")],
                      [vi("x", TensorProto.FLOAT, [2, 3, 4])], [vi("y", TensorProto.INT32, [2, 3, 4])],
                      {"x": x * 10}, opset=5)
    np.testing.assert_array_equal(out["y"], (x * 10).astype(np.int32))


def test_legacy_dropout_mask_dtype_and_castlike():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    vi = helper.make_tensor_value_info
    out = _importrun_op([helper.make_node("Dropout", ["x"], ["y", "m"], ratio=0.3)],
                      [vi("x", TensorProto.FLOAT, [2, 3])],
                      [vi("y", TensorProto.FLOAT, [2, 3]), vi("m", TensorProto.FLOAT, [2, 3])],
                      {"x": x}, opset=7)
    np.testing.assert_array_equal(out["y"], x)
    assert out["m"].dtype == np.float32 and (out["m"] == 1).all()
    like = np.zeros(1, np.float16)
    out = _importrun_op([helper.make_node("CastLike", ["x", "t"], ["y"])],
                      [vi("x", TensorProto.FLOAT, [2, 3]), vi("t", TensorProto.FLOAT16, [1])],
                      [vi("y", TensorProto.FLOAT16, [2, 3])], {"x": x, "t": like}, opset=19)
    assert out["y"].dtype == np.float16
    np.testing.assert_allclose(out["y"], x.astype(np.float16))


def test_gelu_kernel_matches_formula():
    x = np.linspace(-6, 6, 101).astype(np.float64)
    y = run_op("gelu", x)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-15)


def test_erf_imports_scipy_special_only_when_used():
    """scipy.special (about 0.5 s to import) loads at the first erf the reference runs,
    not with the reference kernels that every gx.compile's constant folding loads."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, galaxir as gx\n"
            "from galaxir.ir import GraphBuilder, tensor\n"
            "gb = GraphBuilder()\n"
            "gb.output(gb.relu(gb.add(gb.input('x', tensor('f32', 4)), gb.constant(np.ones(4, np.float32)))), 'y')\n"
            "exe = gx.compile(gb.module(), target='numpy')\n"
            "exe(np.ones(4, np.float32))\n"
            "print('special' if 'scipy.special' in sys.modules else 'lazy')\n"
            "from galaxir.reference.kernels.elementwise import erf_array\n"
            "print(float(erf_array(np.array([0.5], np.float32))[0]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.split()
    assert lines[0] == "lazy"
    assert abs(float(lines[1]) - math.erf(0.5)) < 1e-6
