"""The 45 quantization cases of the ONNX node suite run natively on cpu (no op on the
numpy reference) and match their expected outputs; and the kernels behind them
(kernels_qtypes.py, kernels_qlinear_rt.py) give the reference's bits over inputs chosen to
hit rounding ties, saturation, NaN, subnormals and every float8 / float4 code."""
from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.errors import GalaxirError
from galaxir.testing.onnx_conformance import _normalize, assert_similar, data_inputs, load_cases

pytest.importorskip("llvmlite")

QUANT_CASES = r"quantize|qlinear|integer"
ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
             np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
             np.dtype(np.uint16): TensorProto.UINT16, np.dtype(np.int16): TensorProto.INT16,
             np.dtype(np.int32): TensorProto.INT32,
             np.dtype(ml_dtypes.uint4): TensorProto.UINT4, np.dtype(ml_dtypes.int4): TensorProto.INT4,
             np.dtype(ml_dtypes.uint2): TensorProto.UINT2, np.dtype(ml_dtypes.int2): TensorProto.INT2,
             np.dtype(ml_dtypes.float8_e4m3fn): TensorProto.FLOAT8E4M3FN,
             np.dtype(ml_dtypes.float8_e5m2): TensorProto.FLOAT8E5M2,
             np.dtype(ml_dtypes.float4_e2m1fn): TensorProto.FLOAT4E2M1}


def test_quantization_node_cases_run_natively():
    cases = load_cases(QUANT_CASES)
    assert len(cases) == 45
    for case in cases:
        exe = gx.compile(gx.import_model(case.model), target="cpu", level=0)
        assert exe.fallback_ops == [], f"{case.name}:\n{exe.report()}"
        names = data_inputs(case.model)
        for inputs, ref in case.data_sets:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                out = exe.run(dict(zip(names, [_normalize(x) for x in inputs])))
            assert_similar([_normalize(r) for r in ref], [out[n] for n in exe.output_names],
                           case.rtol, case.atol)


# -- the kernels against the reference, bit for bit --------------------------------------------
def node_model(op_type, inputs: dict, out_types: list, **attrs):
    """One ``op_type`` node, every operand a graph input (None: an absent operand)."""
    names = [k if v is not None else "" for k, v in inputs.items()]
    vi = [helper.make_tensor_value_info(k, ONNX_TYPE[np.asarray(v).dtype], np.shape(v))
          for k, v in inputs.items() if v is not None]
    outs = [helper.make_empty_tensor_value_info(f"y{i}") for i, _ in enumerate(out_types)]
    node = helper.make_node(op_type, names, [o.name for o in outs], **attrs)
    g = helper.make_graph([node], "g", vi, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    return onnx.shape_inference.infer_shapes(m)   # the outputs' types


def run_both(model, feeds):
    """(cpu outputs, reference outputs); the cpu executable must run it all natively."""
    m = gx.import_model(model)
    cpu = gx.compile(m, target="cpu", level=0)
    assert cpu.fallback_ops == [], cpu.report()
    ref = gx.compile(m, target="numpy", level=0)
    with np.errstate(all="ignore"):
        a, b = cpu.run(feeds), ref.run(feeds)
    return [a[n] for n in cpu.output_names], [b[n] for n in ref.output_names]


def same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    g = np.ascontiguousarray(got).view(np.uint8)
    w = np.ascontiguousarray(want).view(np.uint8)
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, f"{bad.size} differ, first at byte {bad[:5]}: {g[bad[:5]]} vs {w[bad[:5]]}"


def _feeds(**kw):
    return {k: v for k, v in kw.items() if v is not None}


FLOAT_FORMATS = [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float4_e2m1fn]


def _hard_floats(t) -> np.ndarray:
    """Every finite value of the format, the midpoints between neighbours and one float32
    step either side of them, far out-of-range, subnormal float32, +-0, inf and NaN."""
    n = 16 if t is ml_dtypes.float4_e2m1fn else 256
    vals = np.arange(n, dtype=np.uint8).view(t).astype(np.float32)
    pos = np.unique(vals[np.isfinite(vals) & (vals >= 0)])
    mids = (pos[:-1] + pos[1:]) / 2
    top = pos[-1] + (pos[-1] - pos[-2]) * np.array([0.25, 0.5, 0.75, 1, 2], np.float32)
    near = [np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(np.inf))]
    core = np.concatenate([pos, mids, *near, top, [1e-42, 1e-30, 3e38, np.inf, np.nan]]).astype(np.float32)
    return np.concatenate([core, -core, [0.0, -0.0]]).astype(np.float32)


@pytest.mark.parametrize("t", FLOAT_FORMATS, ids=lambda t: t.__name__)
@pytest.mark.parametrize("saturate", [1, 0])
def test_quantize_to_narrow_floats_bit_exact(t, saturate):
    if t is ml_dtypes.float4_e2m1fn and not saturate:
        pytest.skip("saturate applies to float8 only")
    x = _hard_floats(t)
    rng = np.random.default_rng(0)
    x = np.concatenate([x, (rng.standard_normal(500) * 10.0 ** rng.uniform(-4, 4, 500)).astype(np.float32)])
    s = np.array(0.5, np.float32)
    z = np.zeros((), t)
    m = node_model("QuantizeLinear", {"x": x, "s": s, "z": z}, [ONNX_TYPE[np.dtype(t)]],
                   saturate=saturate)
    (got,), (want,) = run_both(m, _feeds(x=x, s=s, z=z))
    same_bits(got, want)


@pytest.mark.parametrize("t", FLOAT_FORMATS, ids=lambda t: t.__name__)
@pytest.mark.parametrize("out", [np.float32, np.float16])
def test_dequantize_every_narrow_float_code(t, out):
    n = 16 if t is ml_dtypes.float4_e2m1fn else 256
    x = np.arange(n, dtype=np.uint8).view(t)
    s = np.array(1.5, out)
    m = node_model("DequantizeLinear", {"x": x, "s": s}, [ONNX_TYPE[np.dtype(out)]], axis=0)
    (got,), (want,) = run_both(m, _feeds(x=x, s=s))
    same_bits(got, want)


INT_TYPES = [np.uint8, np.int8, np.uint16, np.int16, ml_dtypes.uint4, ml_dtypes.int4,
             ml_dtypes.uint2, ml_dtypes.int2]


def _info(t):
    return ml_dtypes.iinfo(t) if t in (ml_dtypes.uint4, ml_dtypes.int4, ml_dtypes.uint2, ml_dtypes.int2) \
        else np.iinfo(t)


@pytest.mark.parametrize("t", INT_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("granularity", ["tensor", "axis", "block"])
def test_quantize_dequantize_integers_bit_exact(t, granularity):
    """Ties (k + 0.5 steps), saturation both ways and NaN, random zero points; per tensor,
    per axis (axis 1 of 3) and blocked (block 3 along an axis of 7: a short last block)."""
    rng = np.random.default_rng(1)
    info = _info(t)
    lo, hi = int(info.min), int(info.max)
    shape = (2, 7, 5)
    steps = rng.integers(lo - 3, hi + 4, shape) + rng.choice([0.0, 0.5, -0.5, 0.25], shape)
    if granularity == "tensor":
        s_shape, attrs = (), {}
    elif granularity == "axis":
        s_shape, attrs = (7,), dict(axis=1)
    else:
        s_shape, attrs = (2, 3, 5), dict(axis=1, block_size=3)
    s = rng.uniform(0.05, 2.0, s_shape).astype(np.float32)
    z = rng.integers(lo, hi + 1, s_shape).astype(t)
    from galaxir.reference.kernels.quant import expand_param

    class Ctx:  # the reference's broadcasting of a parameter, for the test's own input
        op = None
    big = expand_param(Ctx, s, shape, attrs.get("axis", 1), attrs.get("block_size", 0))
    x = (steps * big).astype(np.float32)
    x.reshape(-1)[:3] = [np.nan, 1e30, -1e30]
    q = node_model("QuantizeLinear", {"x": x, "s": s, "z": z}, [ONNX_TYPE[np.dtype(t)]], **attrs)
    (got,), (want,) = run_both(q, _feeds(x=x, s=s, z=z))
    same_bits(got, want)
    d = node_model("DequantizeLinear", {"x": want, "s": s, "z": z}, [TensorProto.FLOAT], **attrs)
    (got,), (ref,) = run_both(d, _feeds(x=want, s=s, z=z))
    same_bits(got, ref)


def test_dequantize_int32_and_float16_scales():
    rng = np.random.default_rng(2)
    x = rng.integers(-2 ** 31, 2 ** 31 - 1, (4, 6), dtype=np.int64).astype(np.int32)
    s = rng.uniform(0.01, 1, 6).astype(np.float16)
    m = node_model("DequantizeLinear", {"x": x, "s": s}, [TensorProto.FLOAT16], axis=1)
    (got,), (want,) = run_both(m, _feeds(x=x, s=s))
    same_bits(got, want)
    xf = rng.standard_normal((3, 8)).astype(np.float16) * 40
    q = node_model("QuantizeLinear", {"x": xf, "s": s[:1].reshape(()), "z": np.int8(3)}, [TensorProto.INT8])
    (got,), (want,) = run_both(q, _feeds(x=xf, s=s[:1].reshape(()), z=np.array(3, np.int8)))
    same_bits(got, want)


def test_dynamic_quantize_matches_reference():
    rng = np.random.default_rng(3)
    for x in (rng.standard_normal((5, 9)).astype(np.float32) * 3,
              np.abs(rng.standard_normal(40)).astype(np.float32),        # min clamps to 0
              -np.abs(rng.standard_normal(40)).astype(np.float32),       # max clamps to 0
              np.zeros(7, np.float32), np.array([1.0, np.nan, -2.0], np.float32),
              # the range pass runs 16 lanes at a time, then a tail: extremes and NaN in each
              rng.standard_normal((7, 15)).astype(np.float32) * 5,
              np.where(np.arange(100) == 20, np.nan, np.linspace(-3, 9, 100)).astype(np.float32),
              np.where(np.arange(100) == 99, np.nan, np.linspace(-3, 9, 100)).astype(np.float32),
              np.linspace(-7, 2, 100).astype(np.float32)[::-1].copy()):
        m = node_model("DynamicQuantizeLinear", {"x": x},
                       [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8])
        got, want = run_both(m, {"x": x})
        for g, w in zip(got, want):
            same_bits(np.asarray(g), np.asarray(w))


def _q8(rng, t, shape):
    info = np.iinfo(t)
    return rng.integers(int(info.min), int(info.max) + 1, shape).astype(t)


@pytest.mark.parametrize("at,bt", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
def test_integer_and_qlinear_matmul_run_time_operands(at, bt):
    """Batch broadcasting, per-row a / per-column b zero points and scales, float32 and
    float16 scales: exactly the reference's int32 / requantized values."""
    rng = np.random.default_rng(4)
    for a_shape, b_shape in (((5, 13), (13, 7)), ((3, 1, 4, 9), (2, 9, 6)), ((2, 3, 17), (17, 1))):
        a, b = _q8(rng, at, a_shape), _q8(rng, bt, b_shape)
        M, N = a_shape[-2], b_shape[-1]
        za, zb = _q8(rng, at, (M,)), _q8(rng, bt, (N,))
        m = node_model("MatMulInteger", {"a": a, "b": b, "za": za, "zb": zb}, [TensorProto.INT32])
        (got,), (want,) = run_both(m, dict(a=a, b=b, za=za, zb=zb))
        same_bits(got, want)
        m = node_model("MatMulInteger", {"a": a, "b": b}, [TensorProto.INT32])
        (got,), (want,) = run_both(m, dict(a=a, b=b))
        same_bits(got, want)
        for sdt in (np.float32, np.float16):
            f = dict(a=a, sa=rng.uniform(0.01, 0.1, (M,)).astype(sdt), za=za[:1].reshape(()),
                     b=b, sb=rng.uniform(0.01, 0.1, (N,)).astype(sdt), zb=zb,
                     sy=np.array(0.3, sdt), zy=_q8(rng, at, ()))
            m = node_model("QLinearMatMul", f, [ONNX_TYPE[np.dtype(at)]])
            (got,), (want,) = run_both(m, f)
            same_bits(got, want)


@pytest.mark.parametrize("xt,wt", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
def test_integer_and_qlinear_conv_run_time_operands(xt, wt):
    """Groups, strides, dilations, asymmetric pads, 1-d; per-channel weight zero points and
    scales, a bias: exactly the reference's values."""
    rng = np.random.default_rng(5)
    for xs, ws, attrs in (((2, 4, 9, 8), (6, 2, 3, 3), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1])),
                          ((1, 3, 7, 7), (4, 3, 2, 3), dict(dilations=[2, 1], auto_pad="SAME_UPPER")),
                          ((1, 5, 11), (3, 5, 4), dict(pads=[2, 1], strides=[3]))):
        x, w = _q8(rng, xt, xs), _q8(rng, wt, ws)
        M = ws[0]
        zx, zw = _q8(rng, xt, ()), _q8(rng, wt, (M,))
        m = node_model("ConvInteger", {"x": x, "w": w, "zx": zx, "zw": zw}, [TensorProto.INT32], **attrs)
        (got,), (want,) = run_both(m, dict(x=x, w=w, zx=zx, zw=zw))
        same_bits(got, want)
        f = dict(x=x, sx=np.array(0.05, np.float32), zx=zx, w=w,
                 sw=rng.uniform(0.01, 0.05, (M,)).astype(np.float32), zw=zw,
                 sy=np.array(0.2, np.float32), zy=_q8(rng, xt, ()),
                 bias=rng.integers(-500, 500, M).astype(np.int32))
        m = node_model("QLinearConv", f, [ONNX_TYPE[np.dtype(xt)]], **attrs)
        (got,), (want,) = run_both(m, f)
        same_bits(got, want)


@pytest.mark.parametrize("op", ["QuantizeLinear", "DequantizeLinear", "QLinearMatMul"])
@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan])
def test_bad_run_time_scale_is_refused(op, bad):
    """A scale fed at run time that is not positive and finite stops the native call with a
    galaxir error naming the op, as the reference refuses it."""
    if op == "QuantizeLinear":
        f = dict(x=np.ones((2, 3), np.float32), s=np.array([1.0, bad, 1.0], np.float32),
                 z=np.zeros(3, ml_dtypes.int4))
        m = node_model(op, f, [TensorProto.INT4], axis=1)
    elif op == "DequantizeLinear":
        f = dict(x=np.ones(4, np.uint16), s=np.array(bad, np.float32))
        m = node_model(op, f, [TensorProto.FLOAT])
    else:
        f = dict(a=np.ones((2, 3), np.uint8), sa=np.array(1.0, np.float32), za=np.array(0, np.uint8),
                 b=np.ones((3, 2), np.uint8), sb=np.array(1.0, np.float32), zb=np.array(0, np.uint8),
                 sy=np.array(bad, np.float32), zy=np.array(0, np.uint8))
        m = node_model(op, f, [TensorProto.UINT8])
    exe = gx.compile(gx.import_model(m), target="cpu", level=0)
    assert exe.fallback_ops == [], exe.report()
    with pytest.raises(GalaxirError, match=r"(?i)(quantize_linear|qlinear_matmul).*scale"):
        exe.run(f)


@pytest.mark.parametrize("xt,wt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
def test_matmul_integer_run_time_zero_point_on_packed_weights(path, xt, wt):
    """Dynamic quantization's matmul_integer (constant weights, x's zero point computed at
    run time) runs on the packed int8 kernel plus a zero-point correction: the reference's
    int32 values exactly, on every forced instruction path."""
    from conftest import native_kernels
    rng = np.random.default_rng(6)
    for xs, (K, N), zw_size in (((3, 5, 37), (37, 21), 21), ((64, 300), (300, 96), 1)):
        w = _q8(rng, wt, (K, N))
        zw = _q8(rng, wt, (zw_size,))
        nodes = [helper.make_node("MatMulInteger", ["a", "w", "za", "zw"], ["y"])]
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("a", ONNX_TYPE[np.dtype(xt)], xs),
                         helper.make_tensor_value_info("za", ONNX_TYPE[np.dtype(xt)], ())],
            [helper.make_tensor_value_info("y", TensorProto.INT32, xs[:-1] + (N,))],
            [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(zw, "zw")])
        m = gx.import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
        exe = gx.compile(m, target="cpu")
        ref = gx.compile(m, target="numpy")
        for _ in range(2):
            f = {"a": _q8(rng, xt, xs), "za": _q8(rng, xt, ())}
            same_bits(exe.run(f)["y"], ref.run(f)["y"])
        assert native_kernels(exe) == ["RuntimeZeroPoint"], exe.report()


@pytest.mark.parametrize("xt,wt", [(np.uint8, np.int8), (np.int8, np.uint8)])
def test_conv_integer_run_time_zero_point_on_packed_weights(path, xt, wt):
    """Dynamic quantization's conv_integer (constant weights, x's zero point computed at run
    time) runs on the packed conv with zero point 0 plus the zero point times the weights'
    sum over each output's valid taps: the reference's int32 values exactly, borders,
    strides, dilations, groups and 1x1 convs included, on every forced instruction path."""
    from tests.conftest import native_kernels
    rng = np.random.default_rng(7)
    cases = (((2, 5, 9, 11), (8, 5, 3, 3), dict(pads=[1, 2, 0, 1], strides=[2, 1])),
             ((1, 6, 7, 7), (6, 2, 3, 3), dict(pads=[2, 2, 2, 2], dilations=[2, 2], group=3)),
             ((1, 16, 5, 6), (12, 16, 1, 1), {}),
             ((1, 4, 8, 8), (4, 1, 5, 5), dict(pads=[2, 2, 2, 2], group=4)))
    for xs, ws, attrs in cases:
        w = _q8(rng, wt, ws)
        zw = _q8(rng, wt, (ws[0],)) if wt == np.uint8 else np.zeros((), wt)
        nodes = [helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], **attrs)]
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", ONNX_TYPE[np.dtype(xt)], xs),
                         helper.make_tensor_value_info("zx", ONNX_TYPE[np.dtype(xt)], ())],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [None] * 4)],
            [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(zw, "zw")])
        m = gx.import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
        exe = gx.compile(m, target="cpu")
        ref = gx.compile(m, target="numpy")
        for _ in range(2):
            f = {"x": _q8(rng, xt, xs), "zx": _q8(rng, xt, ())}
            same_bits(exe.run(f)["y"], ref.run(f)["y"])
        assert native_kernels(exe) == ["RuntimeZeroPointConv"], (attrs, exe.report())
