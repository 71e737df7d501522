"""Recurrent, attention, quantization and signal ops: type inference with symbolic dims,
numpy kernels against independent formulas (and onnxruntime for the recurrent layers),
composite decompositions against the kernels, and ONNX import of old opsets."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.backends.numpy.registry import get_kernel
from galaxir.errors import ShapeInferenceError, UnsupportedOpError
from galaxir.ir import Builder, GraphBuilder
from galaxir.ir.opdef import lookup
from galaxir.ir.types import UNKNOWN, DType, TensorType, tensor
from conftest import run_op

RNG = np.random.default_rng(7)
F = "f32"




def _types(name, *types, **attrs):
    gb = GraphBuilder()
    xs = [None if t is None else gb.input(f"x{i}", t) for i, t in enumerate(types)]
    outs = gb.op(name, *xs, **attrs)
    return [o.type for o in (outs if isinstance(outs, tuple) else (outs,))]


# -- type inference ----------------------------------------------------------------------------------
def test_attention_types_keep_symbols():
    y, pk, pv, qk = _types("attention", tensor(F, "B", 8, "S", 16), tensor(F, "B", 2, "T", 16),
                           tensor(F, "B", 2, "T", 12))
    assert y == tensor(F, "B", 8, "S", 12)
    assert pk == tensor(F, "B", 2, "T", 16) and pv == tensor(F, "B", 2, "T", 12)
    assert qk == tensor(F, "B", 8, "S", "T")
    # 3-D packed heads, with a KV cache of symbolic length: total length is unknown
    y, pk, pv, qk = _types("attention", tensor(F, "B", "S", 64), tensor(F, "B", "S", 32),
                           tensor(F, "B", "S", 48), None, tensor(F, "B", 2, "P", 16),
                           tensor(F, "B", 2, "P", 24), q_num_heads=4, kv_num_heads=2)
    assert y == tensor(F, "B", "S", 96)
    assert pk == tensor(F, "B", 2, UNKNOWN, 16) and pv == tensor(F, "B", 2, UNKNOWN, 24)
    assert qk == tensor(F, "B", 4, "S", UNKNOWN)
    # static past + static new keys add up
    _, pk, _, _ = _types("attention", tensor(F, 1, 2, 3, 4), tensor(F, 1, 2, 3, 4), tensor(F, 1, 2, 3, 4),
                         None, tensor(F, 1, 2, 5, 4), tensor(F, 1, 2, 5, 4))
    assert pk.shape == (1, 2, 8, 4)


def test_attention_type_errors_name_the_op():
    with pytest.raises(ShapeInferenceError, match="attention.*q_num_heads"):
        _types("attention", tensor(F, 1, 3, 8), tensor(F, 1, 3, 8), tensor(F, 1, 3, 8))
    with pytest.raises(ShapeInferenceError, match="multiple"):
        _types("attention", tensor(F, 1, 3, 2, 4), tensor(F, 1, 2, 2, 4), tensor(F, 1, 2, 2, 4))
    with pytest.raises(ShapeInferenceError, match="together"):
        _types("attention", tensor(F, 1, 2, 2, 4), tensor(F, 1, 2, 2, 4), tensor(F, 1, 2, 2, 4),
               None, tensor(F, 1, 2, 1, 4))


@pytest.mark.parametrize("layout", [0, 1])
def test_recurrent_types(layout):
    x = tensor(F, "S", "N", 5) if layout == 0 else tensor(F, "N", "S", 5)
    y, h, c = _types("lstm", x, tensor(F, 2, 12, 5), tensor(F, 2, 12, 3), direction="bidirectional",
                     layout=layout)
    if layout == 0:
        assert y.shape == ("S", 2, "N", 3) and h.shape == (2, "N", 3) and c == h
    else:
        assert y.shape == ("N", "S", 2, 3) and h.shape == ("N", 2, 3)
    y, h = _types("gru", tensor(F, "S", "N", 5), tensor(F, 1, 18, 5), tensor(F, 1, 18, 6))
    assert y.shape == ("S", 1, "N", 6)
    with pytest.raises(ShapeInferenceError, match="directions"):
        _types("rnn", tensor(F, 2, 1, 5), tensor(F, 1, 4, 5), tensor(F, 1, 4, 4), direction="bidirectional")


def test_quant_and_signal_types():
    assert _types("quantize_linear", tensor(F, "N", 4), tensor(F))[0] == tensor("u8", "N", 4)
    assert _types("quantize_linear", tensor(F, "N", 4), tensor(F, 4), tensor("i4", 4))[0].dtype is DType.int4
    assert _types("quantize_linear", tensor(F, 6, 4), tensor(F, 2, 4), block_size=3, axis=0,
                  output_dtype=DType.int8)[0] == tensor("i8", 6, 4)
    with pytest.raises(ShapeInferenceError, match="blocked"):
        _types("quantize_linear", tensor(F, 6, 4), tensor(F, 3, 4), block_size=3, axis=0)
    assert _types("dequantize_linear", tensor("i8", "N", 4), tensor("f16"))[0] == tensor("f16", "N", 4)
    assert _types("matmul_integer", tensor("u8", "B", "M", 4), tensor("i8", 4, 7))[0] == tensor("i32", "B", "M", 7)
    assert _types("conv_integer", tensor("u8", "N", 2, 5, 5), tensor("u8", 3, 2, 3, 3),
                  pads=(1, 1, 1, 1))[0] == tensor("i32", "N", 3, 5, 5)
    gb = GraphBuilder()
    x = gb.input("x", tensor(F, "B", 16, 1))
    assert gb.dft(x, gb.constant(np.array(10, np.int64)), gb.constant(np.array(1, np.int64)),
                  onesided=1).type == tensor(F, "B", 6, 2)
    assert gb.dft(x, None, None).type == tensor(F, "B", 16, 2)
    assert gb.stft(x, gb.constant(np.array(4, np.int64)), gb.hann_window(gb.constant(np.array(8, np.int64))),
                   ).type == tensor(F, "B", 3, 5, 2)
    assert gb.mel_weight_matrix(*[gb.constant(np.array(v, np.int64)) for v in (8, 64, 8000, 0, 4000)]
                                ).type == tensor(F, 33, 8)


# -- kernels against independent formulas ---------------------------------------------------------------
def _attention_ref(q, k, v, mask=None, causal=False, scale=None):
    d = q.shape[-1]
    k = np.repeat(k, q.shape[1] // k.shape[1], axis=1)
    v = np.repeat(v, q.shape[1] // v.shape[1], axis=1)
    s = (q @ np.swapaxes(k, -1, -2)) * (scale if scale is not None else 1 / np.sqrt(d))
    if mask is not None:
        s = s + mask
    if causal:
        s = s + np.triu(np.full(s.shape[-2:], -np.inf), 1)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


def test_attention_kernel_matches_formula():
    q, k, v = (RNG.standard_normal(s).astype(np.float32) for s in [(2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 3)])
    y, pk, pv, qk = run_op("attention", q, k, v, is_causal=1)
    np.testing.assert_allclose(y, _attention_ref(q, k, v, causal=True), rtol=1e-5, atol=1e-6)
    assert pk is not None and np.array_equal(pk, k)
    mask = RNG.standard_normal((5, 5)).astype(np.float32)
    y = run_op("attention", q, k, v, mask, scale=0.2)[0]
    np.testing.assert_allclose(y, _attention_ref(q, k, v, mask=mask, scale=0.2), rtol=1e-5, atol=1e-6)


def test_attention_fully_masked_row_is_zero():
    q, k, v = (RNG.standard_normal((1, 1, 3, 4)).astype(np.float32) for _ in range(3))
    mask = np.ones((3, 3), bool)
    mask[1] = False
    y, _, _, probs = run_op("attention", q, k, v, mask, qk_matmul_output_mode=3)
    assert np.all(y[0, 0, 1] == 0) and np.all(probs[0, 0, 1] == 0)
    assert np.all(np.isfinite(y))


def test_linear_attention_is_causal_linear_attention():
    b, t, h, dk, dv = 2, 5, 2, 4, 3
    q, k = (RNG.standard_normal((b, t, h * dk)).astype(np.float32) for _ in range(2))
    v = RNG.standard_normal((b, t, h * dv)).astype(np.float32)
    out, state = run_op("linear_attention", q, k, v, q_num_heads=h, kv_num_heads=h, update_rule="linear")
    q4, k4 = (x.reshape(b, t, h, dk).transpose(0, 2, 1, 3) for x in (q, k))
    v4 = v.reshape(b, t, h, dv).transpose(0, 2, 1, 3)
    # unnormalized causal attention: o_t = scale * sum_{s<=t} (q_t . k_s) v_s
    w = np.tril(q4 @ np.swapaxes(k4, -1, -2)) / np.sqrt(dk)
    want = (w @ v4).transpose(0, 2, 1, 3).reshape(b, t, h * dv)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state, np.swapaxes(k4, -1, -2) @ v4, rtol=1e-4, atol=1e-5)


def test_quantize_dequantize_granularities():
    x = np.array([[-1.5, 0.49, 2.5, 300.0], [0.5, -0.5, 1.5, -300.0]], np.float32)
    y = run_op("quantize_linear", x, np.array(1.0, np.float32), np.array(3, np.int8))
    assert y.dtype == np.int8 and y.tolist() == [[1, 3, 5, 127], [3, 3, 5, -128]]  # half to even
    s = np.array([1.0, 2.0], np.float32)
    y = run_op("quantize_linear", x, s, np.array([0, 0], np.uint8), axis=0)
    assert y.tolist() == [[0, 0, 2, 255], [0, 0, 1, 0]]
    blocked = np.array([[1.0, 4.0], [2.0, 8.0]], np.float32)
    y = run_op("quantize_linear", x, blocked, block_size=2, axis=1, output_dtype=DType.int16)
    assert y.tolist() == [[-2, 0, 1, 75], [0, -0, 0, -38]]
    back = run_op("dequantize_linear", y, blocked, block_size=2, axis=1)
    assert back.dtype == np.float32 and back[0, 3] == 300.0
    i4 = run_op("quantize_linear", x, np.array(0.25, np.float32), np.array(1, DType.int4.numpy))
    assert i4.dtype == DType.int4.numpy and i4.astype(np.int32).max() == 7 and i4.astype(np.int32).min() == -8


def test_float8_saturation():
    x = np.array([1e6, -1e6, 1.0, np.nan], np.float32)
    zp = np.zeros((), DType.float8e4m3fn.numpy)
    sat = run_op("quantize_linear", x, np.array(1.0, np.float32), zp).astype(np.float32)
    assert sat[0] == 448 and sat[1] == -448 and sat[2] == 1 and np.isnan(sat[3])
    raw = run_op("quantize_linear", x, np.array(1.0, np.float32), zp, saturate=0).astype(np.float32)
    assert np.isnan(raw[0])


def test_integer_matmul_and_conv_are_exact():
    a = RNG.integers(0, 256, (3, 4, 6)).astype(np.uint8)
    b = RNG.integers(-128, 128, (6, 5)).astype(np.int8)
    got = run_op("matmul_integer", a, b, np.array(12, np.uint8), np.array(-3, np.int8))
    assert got.dtype == np.int32
    assert np.array_equal(got, (a.astype(np.int64) - 12) @ (b.astype(np.int64) + 3))
    x = RNG.integers(0, 256, (1, 2, 5, 5)).astype(np.uint8)
    w = RNG.integers(0, 256, (4, 1, 3, 3)).astype(np.uint8)
    got = run_op("conv_integer", x, w, np.array(128, np.uint8), group=2, pads=(1, 1, 1, 1), strides=(2, 2))
    xp = np.pad(x.astype(np.int64) - 128, [(0, 0), (0, 0), (1, 1), (1, 1)])
    want = np.zeros((1, 4, 3, 3), np.int64)
    for m in range(4):
        for i in range(3):
            for j in range(3):
                want[0, m, i, j] = (xp[0, m // 2, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * w[m, 0]).sum()
    assert np.array_equal(got, want)


def test_dft_and_stft_match_numpy_fft():
    x = RNG.standard_normal((2, 12, 1)).astype(np.float64)
    axis = np.array(1, np.int64)
    got = run_op("dft", x, None, axis)
    want = np.fft.fft(x[..., 0], axis=1)
    np.testing.assert_allclose(got[..., 0] + 1j * got[..., 1], want, atol=1e-12)
    back = run_op("dft", got, None, axis, inverse=1)
    np.testing.assert_allclose(back[..., 0], x[..., 0], atol=1e-12)
    half = run_op("dft", x, None, axis, onesided=1)
    real = run_op("dft", half, None, axis, inverse=1, onesided=1)
    assert real.shape == (2, 12, 1)
    np.testing.assert_allclose(real[..., 0], x[..., 0], atol=1e-12)
    win = run_op("hann_window", np.array(4, np.int64), output_datatype=DType.float64)
    np.testing.assert_allclose(win, [0, 0.5, 1, 0.5], atol=1e-15)
    spec = run_op("stft", x, np.array(4, np.int64), win)
    assert spec.shape == (2, 3, 3, 2)
    frame = x[1, 4:8, 0] * win
    np.testing.assert_allclose(spec[1, 1, :, 0] + 1j * spec[1, 1, :, 1], np.fft.rfft(frame), atol=1e-12)


# -- recurrent layers against onnxruntime ---------------------------------------------------------------
def _onnx_model(node, inputs, out_ranks, opset=22):
    ins = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for k, a in enumerate(inputs) if a is not None]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * r)
            for o, r in zip(node.output, out_ranks) if o]
    g = helper.make_graph([node], "g", ins, outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _recurrent_models(op, gates, hidden, direction, layout, seq_lens, extra_inputs, **attrs):
    """The same layer as a layout-0 model (for onnxruntime, which only runs layout 0) and
    as a model with the requested layout, with feeds for each."""
    nd = 2 if direction == "bidirectional" else 1
    seq, batch, inp = 4, 3, 5
    x = RNG.standard_normal((seq, batch, inp)).astype(np.float32)
    w = (RNG.standard_normal((nd, gates * hidden, inp)) * 0.5).astype(np.float32)
    r = (RNG.standard_normal((nd, gates * hidden, hidden)) * 0.5).astype(np.float32)
    bias = RNG.standard_normal((nd, 2 * gates * hidden)).astype(np.float32)
    lens = np.array(seq_lens, np.int32) if seq_lens is not None else None
    h0 = RNG.standard_normal((nd, batch, hidden)).astype(np.float32)
    inputs = [x, w, r, bias, lens, h0]
    if op == "LSTM":
        inputs += [RNG.standard_normal((nd, batch, hidden)).astype(np.float32),
                   RNG.standard_normal((nd, 3 * hidden)).astype(np.float32)]
    inputs = inputs[:3 + extra_inputs]
    batchwise = list(inputs)
    if layout:
        for k in (0, 5, 6):
            if k < len(batchwise):
                batchwise[k] = np.ascontiguousarray(np.swapaxes(batchwise[k], 0, 1))
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    outs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    models = []
    for lay, arrays in ((0, inputs), (layout, batchwise)):
        node = helper.make_node(op, names, outs, hidden_size=hidden, direction=direction, layout=lay, **attrs)
        models.append((_onnx_model(node, arrays, (4, 3, 3)),
                       {n: a for n, a in zip(names, arrays) if a is not None}))
    return models


RECURRENT = [
    ("RNN", 1, "forward", 0, None, 3, {}),
    ("RNN", 1, "bidirectional", 1, [4, 2, 1], 3, {"activations": ["Relu", "Tanh"], "clip": 2.0}),
    ("GRU", 3, "reverse", 0, [2, 4, 3], 3, {"linear_before_reset": 1}),
    ("GRU", 3, "bidirectional", 0, [3, 1, 4], 3, {}),
    ("GRU", 3, "forward", 1, None, 1, {"activations": ["HardSigmoid", "Tanh"], "activation_alpha": [0.3],
                                      "activation_beta": [0.4]}),
    ("LSTM", 4, "bidirectional", 0, [4, 2, 3], 5, {}),
    ("LSTM", 4, "forward", 1, [1, 4, 2], 5, {"clip": 1.5}),
    ("LSTM", 4, "reverse", 0, None, 1, {"input_forget": 1}),
    ("LSTM", 4, "forward", 0, None, 3, {"activations": ["Sigmoid", "LeakyRelu", "Tanh"],
                                       "activation_alpha": [0.2]}),
]


@pytest.mark.parametrize("case", RECURRENT, ids=[f"{c[0]}_{c[2]}_{i}" for i, c in enumerate(RECURRENT)])
def test_recurrent_matches_onnxruntime(case):
    ort = pytest.importorskip("onnxruntime")
    op, gates, direction, layout, lens, extra, attrs = case
    (ref_model, ref_feeds), (model, feeds) = _recurrent_models(op, gates, 3, direction, layout, lens,
                                                               extra, **attrs)
    sess = ort.InferenceSession(ref_model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, ref_feeds)
    if layout:  # Y [seq, nd, batch, h] -> [batch, seq, nd, h]; states [nd, batch, h] -> [batch, nd, h]
        want = [np.transpose(want[0], (2, 0, 1, 3))] + [np.swapaxes(w, 0, 1) for w in want[1:]]
    exe = gx.compile(gx.import_model(model), target="numpy", level=0)
    out = exe.run(feeds)
    got = [out[n] for n in exe.output_names]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# -- decompositions == kernels ------------------------------------------------------------------------
def _decomposed(module, names):
    changed = True
    while changed:
        changed = False
        for op in list(module.walk()):
            od = lookup(op.name)
            if op.name in names and od.decompose is not None:
                op.replace_with(list(od.decompose(Builder(op.parent, before=op), op)))
                changed = True
    return module


S = (2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 6)
DECOMPOSED = [
    ("attention", [*S], {}),
    ("attention", [(2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6)], {"is_causal": 1, "softcap": 2.0}),
    ("attention", [(2, 3, 32), (2, 5, 16), (2, 5, 12)], {"q_num_heads": 4, "kv_num_heads": 2, "scale": 0.3}),
    ("attention", [*S, ("bool", 3, 5)], {"qk_matmul_output_mode": 3}),
    ("attention", [*S, ("bool", 3, 4)], {"qk_matmul_output_mode": 1, "is_causal": 1}),
    ("attention", [*S, (2, 1, 3, 7), (2, 4, 2, 8), (2, 4, 2, 6)], {"is_causal": 1, "qk_matmul_output_mode": 2}),
    ("attention", [*S], {"softmax_precision": DType.float64}),
    ("rotary_embedding", [(2, 3, 4, 8), (2, 4, 4), (2, 4, 4)], {}),
    ("rotary_embedding", [(2, 3, 4, 8), (10, 2), (10, 2), ("i64", 2, 4)], {"interleaved": 1,
                                                                            "rotary_embedding_dim": 4}),
    ("rotary_embedding", [(2, 4, 24), (10, 3), (10, 3), ("i64", 2, 4)], {"num_heads": 4}),
    ("swiglu", [(2, 3, 8), (2, 3, 8)], {"alpha": 1.7}),
]


def _spec(s):
    return (s[0], s[1:]) if isinstance(s[0], str) else (F, s)


@pytest.mark.parametrize("name,shapes,attrs", DECOMPOSED, ids=[f"{c[0]}{i}" for i, c in enumerate(DECOMPOSED)])
def test_decomposition_matches_kernel(name, shapes, attrs):
    assert lookup(name).is_composite
    specs = [_spec(s) for s in shapes]

    def build(symbolic=False):
        gb = GraphBuilder()
        xs = []
        for i, (dt, shp) in enumerate(specs):
            if symbolic and dt == F and shp[0] == specs[0][1][0]:  # batch as a symbol: not needed
                shp = ("B",) + tuple(shp[1:])
            xs.append(gb.input(f"x{i}", tensor(dt, *shp)))
        outs = gb.op(name, *xs, **attrs)
        for i, o in enumerate(outs if isinstance(outs, tuple) else (outs,)):
            gb.output(o, f"y{i}")
        return gb.module()

    arrays = []
    for dt, shp in specs:
        if dt == "bool":
            arrays.append(RNG.random(shp) > 0.3)
        elif dt == "i64":
            arrays.append(RNG.integers(0, 10, shp))
        else:
            arrays.append(RNG.standard_normal(shp).astype(np.float32))
    want = gx.compile(build(), target="numpy", level=0)(*arrays)
    for symbolic in (False, True):
        dec = _decomposed(build(symbolic), {name})
        assert name not in dec.op_counts()
        dec.verify()
        missing = sorted({op.name for op in dec.walk() if not op.is_terminator and get_kernel(op.name) is None})
        assert not missing, f"the decomposition uses ops with no numpy kernel: {missing}"
        got = gx.compile(dec, target="numpy", level=0)(*arrays)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_attention_decomposition_refuses_window():
    gb = GraphBuilder()
    q = gb.input("q", tensor(F, 1, 2, 3, 4))
    outs = gb.attention(q, q, q, left_window_size=1)
    with pytest.raises(UnsupportedOpError, match="window"):
        lookup("attention").decompose(Builder(gb.graph.block, before=outs[0].producer), outs[0].producer)


# -- ONNX import --------------------------------------------------------------------------------------
def test_dft_opset17_axis_attribute_becomes_operand():
    x = RNG.standard_normal((1, 6, 4, 1)).astype(np.float32)
    node = helper.make_node("DFT", ["i0"], ["y"], axis=2)
    model = _onnx_model(node, [x], (4,), opset=17)
    m = gx.import_model(model)
    (op,) = [o for o in m.walk() if o.name == "dft"]
    assert op.operand(2) is not None and op.operand(2).producer.attrs["value"] == 2
    (y,) = gx.compile(m, target="numpy", level=0)(x)
    want = np.fft.fft(x[..., 0].astype(np.float64), axis=2)
    np.testing.assert_allclose(y[..., 0] + 1j * y[..., 1], want, rtol=1e-4, atol=1e-5)


def test_flex_attention_imports_score_mod_as_region():
    q = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    score_mod = helper.make_graph(
        [helper.make_node("Mul", ["s", "c"], ["o"])], "mod",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [None] * 4)],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [None] * 4)],
        [helper.make_tensor("c", TensorProto.FLOAT, [], [0.0])])
    node = helper.make_node("FlexAttention", ["i0", "i0", "i0"], ["y"], domain="ai.onnx.preview",
                            score_mod=score_mod)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("i0", TensorProto.FLOAT, q.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 26),
                                                helper.make_opsetid("ai.onnx.preview", 1)])
    m = gx.import_model(model)
    (op,) = [o for o in m.walk() if o.name == "preview.flex_attention"]
    assert len(op.regions) == 2 and op.results[0].type == TensorType(DType.float32, (1, 2, 3, 4))
    (y,) = gx.compile(m, target="numpy", level=0)(q)
    # scores multiplied by 0: uniform attention, every query gets the mean of the values
    np.testing.assert_allclose(y, np.broadcast_to(q.mean(axis=2, keepdims=True), q.shape), rtol=1e-5)
