"""Symbolic shape propagation (ir/ops/tensor.py value_of and dim expressions) and the O1
symbolic shape patterns (passes/basic/symbolic.py): reshape / expand targets computed from
``shape(x)`` become constants over x's own dims, with static-rank symbolic result types,
and the shape arithmetic behind them is left dead; the rewritten module computes what the
original does for any input shape.  Torch exports with dynamic batch and sequence axes run
with nothing on the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor
from galaxir.passes import optimize

I64 = np.int64


def c(gb, *vals):
    return gb.constant(np.array(vals, I64))


def _ops(m) -> list[str]:
    return [op.name for op in m.graph.block if not op.is_terminator]


def _shape_target_module():
    """x: f32[B,S,256] -> reshape to [B,S,4,64] and to [B*S, 256], expand of a [B,1,256]
    column to [B,3,256], targets all computed from shape(x), as torch exports build them."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "B", "S", 256))
    s = gb.shape(x)
    b = gb.unsqueeze(gb.gather(s, gb.constant(np.array(0, I64))), c(gb, 0))
    n = gb.unsqueeze(gb.gather(s, gb.constant(np.array(1, I64))), c(gb, 0))
    heads = gb.reshape(x, gb.concat(b, n, c(gb, 4), c(gb, 64), axis=0))
    flat = gb.reshape(x, gb.concat(gb.mul(b, n), c(gb, 256), axis=0))
    col = gb.op("reduce_sum", x, c(gb, 1), keepdims=1)                  # f32[B,1,256]
    wide = gb.expand(col, gb.concat(b, c(gb, 3), gb.slice(s, c(gb, 2), c(gb, 3)), axis=0))
    gb.output(heads, "heads")
    gb.output(flat, "flat")
    gb.output(wide, "wide")
    return gb.module()


def test_shape_targets_become_constants_over_symbolic_dims():
    m = _shape_target_module()
    o = optimize(m, 1)
    assert "shape" not in _ops(o) and "concat" not in _ops(o), o
    outs = {n: v for n, v in zip(o.graph.output_names, o.graph.outputs)}
    assert str(outs["heads"].type) == "f32[B,S,4,64]"
    assert str(outs["flat"].type) == 'f32["B*S",256]'
    assert str(outs["wide"].type) == "f32[B,3,256]"
    targets = {}
    for op in o.graph.block:
        if op.name in ("reshape", "expand"):
            targets[(op.name, str(op.results[0].type))] = list(op.operands[1].constant_value())
    assert targets[("reshape", "f32[B,S,4,64]")] == [0, 0, 4, 64]
    assert targets[("reshape", 'f32["B*S",256]')] == [-1, 256]
    assert targets[("expand", "f32[B,3,256]")] == [1, 3, 256]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 4), s=st.integers(1, 9))
def test_symbolic_rewrite_computes_what_the_original_does(b, s):
    m = _shape_target_module()
    x = np.random.default_rng(b * 10 + s).standard_normal((b, s, 256)).astype(np.float32)
    want = gx.compile(m, target="numpy", level=0)(x)
    for target in ("numpy", "cpu"):
        got = gx.compile(m, target=target, level=1)(x)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_target_that_needs_a_size_x_lacks_stays_a_value():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "B", "S"))
    y = gb.input("y", tensor("f32", "T"))
    t = gb.concat(gb.slice(gb.shape(x), c(gb, 0), c(gb, 1)), gb.shape(y), axis=0)   # [B, T]
    gb.output(gb.expand(gb.reshape(y, c(gb, 1, -1)), t), "e")      # expand [1,T] to [B,T]
    o = optimize(gb.module(), 1)
    ex = [op for op in o.graph.block if op.name == "expand"][0]
    assert ex.operands[1].constant_value() is None     # B is not a dim of the operand
    assert str(ex.results[0].type) == "f32[B,T]"


def test_dim_expressions_cancel():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "B", "S", 8))
    flat = gb.reshape(x, c(gb, -1, 8))
    assert str(flat.type) == 'f32["B*S",8]'
    back = gb.reshape(flat, gb.concat(gb.slice(gb.shape(x), c(gb, 0), c(gb, 2)), c(gb, 2, 4), axis=0))
    assert str(back.type) == "f32[B,S,2,4]"
    assert str(gb.reshape(flat, c(gb, 2, -1)).type) == 'f32[2,"4*B*S"]'   # B*S*8 / 2


def test_range_of_a_shape_dim_has_that_length():
    gb = GraphBuilder()
    x = gb.input("x", tensor("i64", "B", "S"))
    n = gb.gather(gb.shape(x), gb.constant(np.array(1, I64)))
    r = gb.op("range", gb.constant(np.array(0, I64)), n, gb.constant(np.array(1, I64)))
    assert str(r.type) == "i64[S]"


# -- torch exports with dynamic axes ------------------------------------------------------------
def _export(tmp_path, name, exporter="torchscript"):
    pytest.importorskip("torch")
    from galaxir.testing import dynamic_models as dm
    why = dm.available(name, exporter)
    if why:
        pytest.skip(why)
    return dm, dm.export(name, str(tmp_path / f"{name}.onnx"), exporter)


def test_bert_style_export_runs_with_nothing_on_the_reference(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    dm, path = _export(tmp_path, "bert")
    m = gx.import_model(path)
    o = optimize(m, 1)
    # every reshape target is a constant now; only the position ids still read a shape
    for op in o.graph.block:
        if op.name == "reshape":
            assert op.operands[1].constant_value() is not None, op
            assert op.results[0].type.rank is not None
    assert _ops(o).count("shape") <= 1
    exe = gx.compile(m, target="cpu")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b, s in ((1, 8), (3, 17), (2, 40)):
        feeds = dm.feeds(b, s, seed=b + s)
        got = exe(*(feeds[n] for n in exe.input_names))[0]
        np.testing.assert_allclose(got, sess.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
    assert exe.fallback_ops == [], exe.report()


def test_where_equal_on_shape_values_fold():
    """expand_as as the TorchScript exporter writes it: where(equal(t, -1), 1, t) over a
    shape-derived target, and constant_of_shape of a length."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "B", "S"))
    t = gb.shape(x)
    fixed = gb.where(gb.equal(t, c(gb, -1)), gb.constant(np.ones(2, I64)), t)
    gb.output(gb.expand(gb.unsqueeze(x, c(gb, 0)), gb.concat(c(gb, 2), fixed, axis=0)), "e")
    ones = gb.op("constant_of_shape", c(gb, 2), value=np.array([1], I64))
    gb.output(gb.reshape(x, gb.mul(gb.shape(x), ones)), "r")
    m = gb.module()
    outs = dict(zip(m.graph.output_names, m.graph.outputs))
    assert str(outs["e"].type) == "f32[2,B,S]" and str(outs["r"].type) == "f32[B,S]"
    o = optimize(m, 1)
    assert "shape" not in _ops(o) and "where" not in _ops(o), _ops(o)
    xv = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    want = gx.compile(m, target="numpy", level=0)(xv)
    for g, w in zip(gx.compile(m, target="cpu")(xv), want):
        np.testing.assert_array_equal(g, w)
