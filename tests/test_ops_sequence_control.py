"""Control flow (if/loop/scan), sequence and optional ops, strings, ai.onnx.ml, training
and random ops: built with the galaxir Builder and imported from onnx.helper models,
compared with numpy formulas and with onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir import errors
from galaxir.ir import parse
from galaxir.ir.builder import GraphBuilder
from galaxir.ir.types import DType, OptionalType, SequenceType, tensor

F = TensorProto.FLOAT
I64 = TensorProto.INT64
B = TensorProto.BOOL


def run_gx(model, feeds):
    exe = gx.compile(gx.import_model(model), target="numpy", level=0)
    out = exe.run(feeds)
    return [out[n] for n in exe.output_names]


def run_ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, list):
            assert isinstance(g, list) and len(g) == len(w)
            assert_same(g, w)
            continue
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def model(nodes, inputs, outputs, opset=17, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def seq_vi(name, elem, shape=(None,)):
    return helper.make_tensor_sequence_value_info(name, elem, shape)


# -- Builder: regions reading outer-scope values --------------------------------------------
def test_builder_if_loop_scan_with_outer_values():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3))
    c = gb.input("c", tensor("bool"))
    w = gb.constant(np.array([1.0, 2.0, 3.0], np.float32))
    then_r = gb.region((), lambda b: [b.add(x, w)])          # reads x and w from outside
    else_r = gb.region((), lambda b: [b.mul(x, w)])
    y = gb.op("if", c, regions=[then_r, else_r])

    trip = gb.constant(np.array(4, np.int64))

    def body(b, i, cond, acc):
        nxt = b.add(acc, w)                                  # outer constant inside the loop
        return [cond, nxt, b.mul(nxt, x)]                    # carried + a scan output

    loop_r = gb.region([tensor("i64"), tensor("bool"), tensor("f32", 3)], body)
    acc, stacked = gb.op("loop", trip, None, x, regions=[loop_r])

    def scan_body(b, state, row):
        s = b.add(state, row)
        return [s, b.sub(s, x)]

    scan_r = gb.region([tensor("f32", 3), tensor("f32", 3)], scan_body)
    xs = gb.input("xs", tensor("f32", 5, 3))
    final, outs = gb.op("scan", x, xs, regions=[scan_r], num_scan_inputs=1)
    for v, n in ((y, "y"), (acc, "acc"), (stacked, "stacked"), (final, "final"), (outs, "outs")):
        gb.output(v, n)
    m = gb.module().verify()
    assert str(stacked.type) == "f32[?,3]" and str(outs.type) == "f32[5,3]"
    assert parse(m.to_text()) == m

    exe = gx.compile(m, target="numpy", level=0)
    xv = np.array([1.0, -2.0, 0.5], np.float32)
    xsv = np.arange(15, dtype=np.float32).reshape(5, 3)
    wv = np.array([1.0, 2.0, 3.0], np.float32)
    for cv in (True, False):
        yv, accv, stv, fv, ov = exe(xv, np.array(cv), xsv)
        np.testing.assert_allclose(yv, xv + wv if cv else xv * wv)
        np.testing.assert_allclose(accv, xv + 4 * wv)
        np.testing.assert_allclose(stv, np.stack([(xv + k * wv) * xv for k in range(1, 5)]))
        np.testing.assert_allclose(fv, xv + xsv.sum(0))
        np.testing.assert_allclose(ov, xv + np.cumsum(xsv, 0) - xv)


# -- ONNX models against onnxruntime ---------------------------------------------------------
def test_if_branches_read_outer_scope_and_return_sequences():
    then_g = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["t0"]),
         helper.make_node("SequenceConstruct", ["t0", "x"], ["tseq"])],
        "then", [], [seq_vi("tseq", F)])
    else_g = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["eseq"])], "else", [], [seq_vi("eseq", F)])
    m = model([helper.make_node("If", ["c"], ["s"], then_branch=then_g, else_branch=else_g),
               helper.make_node("SequenceLength", ["s"], ["n"]),
               helper.make_node("ConcatFromSequence", ["s"], ["cat"], axis=0)],
              [vi("c", B, []), vi("x", F, [2])],
              [vi("n", I64, []), vi("cat", F, [None])])
    x = np.array([1.5, -1.0], np.float32)
    for c in (True, False):
        feeds = {"c": np.array(c), "x": x}
        assert_same(run_gx(m, feeds), run_ort(m, feeds))


def loop_with_sequence_model():
    """Loop carrying a growing tensor and a sequence, with a scan output, reading outer x."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=F),
         helper.make_node("Mul", ["fi", "x"], ["scaled"]),
         helper.make_node("Concat", ["acc_in", "scaled"], ["acc_out"], axis=0),
         helper.make_node("SequenceInsert", ["seq_in", "scaled"], ["seq_out"]),
         helper.make_node("ReduceSum", ["scaled"], ["total"], keepdims=0),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [vi("i", I64, []), vi("cond_in", B, []), vi("acc_in", F, None), seq_vi("seq_in", F)],
        [vi("cond_out", B, []), vi("acc_out", F, None), seq_vi("seq_out", F), vi("total", F, [])])
    return model(
        [helper.make_node("SequenceEmpty", [], ["seq0"], dtype=F),
         helper.make_node("Loop", ["n", "", "acc0", "seq0"], ["acc", "seq", "totals"], body=body),
         helper.make_node("SequenceLength", ["seq"], ["len"])],
        [vi("n", I64, []), vi("acc0", F, [1]), vi("x", F, [2])],
        [vi("acc", F, [None]), seq_vi("seq", F, [2]), vi("totals", F, [None]), vi("len", I64, [])])


def test_loop_sequence_carried_growing_tensor_and_scan_output():
    m = loop_with_sequence_model()
    mod = gx.import_model(m)
    loop_op = next(op for op in mod.walk() if op.name == "loop")
    assert isinstance(loop_op.results[1].type, SequenceType)
    assert str(loop_op.results[0].type) == "f32[?]"  # grows each iteration
    for n in (0, 1, 4):
        feeds = {"n": np.array(n, np.int64), "acc0": np.array([7.0], np.float32),
                 "x": np.array([1.0, 2.0], np.float32)}
        got = run_gx(m, feeds)
        assert_same(got, run_ort(m, feeds))
        assert got[0].shape == (1 + 2 * n,)


def test_loop_condition_stops_early():
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]),
         helper.make_node("Less", ["v_out", "limit"], ["cond_out"])],
        "body", [vi("i", I64, []), vi("cond_in", B, []), vi("v_in", F, [])],
        [vi("cond_out", B, []), vi("v_out", F, []), vi("v_out", F, [])])
    one = helper.make_tensor("one", F, [], [1.0])
    m = model([helper.make_node("Loop", ["", "c", "v0"], ["v", "vs"], body=body)],
              [vi("c", B, []), vi("v0", F, []), vi("limit", F, [])],
              [vi("v", F, []), vi("vs", F, [None])], inits=[one])
    for c, limit in ((True, 5.0), (False, 5.0), (True, -1.0)):
        feeds = {"c": np.array(c), "v0": np.array(0.0, np.float32),
                 "limit": np.array(limit, np.float32)}
        assert_same(run_gx(m, feeds), run_ort(m, feeds))


def test_scan_directions_axes_and_outer_scope():
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "a"], ["t"]),
         helper.make_node("Mul", ["t", "w"], ["s_out"]),      # w: outer scope
         helper.make_node("Sub", ["b", "s_out"], ["y"])],
        "body", [vi("s_in", F, [2]), vi("a", F, [2]), vi("b", F, [2])],
        [vi("s_out", F, [2]), vi("y", F, [2])])
    m = model([helper.make_node("Scan", ["s0", "xa", "xb"], ["s", "ys"], body=body,
                                num_scan_inputs=2, scan_input_axes=[0, 1],
                                scan_input_directions=[1, 0], scan_output_axes=[-1],
                                scan_output_directions=[1])],
              [vi("s0", F, [2]), vi("xa", F, [4, 2]), vi("xb", F, [2, 4]), vi("w", F, [2])],
              [vi("s", F, [2]), vi("ys", F, [2, 4])], opset=16)
    rng = np.random.default_rng(0)
    feeds = {"s0": rng.standard_normal(2).astype(np.float32),
             "xa": rng.standard_normal((4, 2)).astype(np.float32),
             "xb": rng.standard_normal((2, 4)).astype(np.float32),
             "w": np.array([0.5, -1.0], np.float32)}
    assert_same(run_gx(m, feeds), run_ort(m, feeds))


def test_scan8_batched_form():
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y"])],
        "body", [vi("s_in", F, [2]), vi("x", F, [2])], [vi("s_out", F, [2]), vi("y", F, [2])])
    m = model([helper.make_node("Scan", ["", "s0", "xs"], ["s", "ys"], body=body,
                                num_scan_inputs=1, directions=[1])],
              [vi("s0", F, [3, 2]), vi("xs", F, [3, 4, 2])],
              [vi("s", F, [3, 2]), vi("ys", F, [3, 4, 2])], opset=8)
    s0 = np.ones((3, 2), np.float32)
    xs = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
    s, ys = run_gx(m, {"s0": s0, "xs": xs})
    np.testing.assert_allclose(s, s0 + xs.sum(1))
    np.testing.assert_allclose(ys, s0[:, None] + np.cumsum(xs[:, ::-1], axis=1))


def test_sequence_map_with_tensor_operand_matches_onnxruntime():
    body = helper.make_graph(
        [helper.make_node("Add", ["e", "t"], ["o"]), helper.make_node("Shape", ["e"], ["sh"])],
        "body", [vi("e", F, None), vi("t", F, [1])], [vi("o", F, None), vi("sh", I64, [None])])
    m = model([helper.make_node("SplitToSequence", ["x", "split"], ["seq"], axis=0),
               helper.make_node("SequenceMap", ["seq", "t"], ["outs", "shapes"], body=body)],
              [vi("x", F, [5, 2]), vi("split", I64, [2]), vi("t", F, [1])],
              [seq_vi("outs", F, [None, 2]), seq_vi("shapes", I64, [2])])
    feeds = {"x": np.arange(10, dtype=np.float32).reshape(5, 2),
             "split": np.array([2, 3], np.int64), "t": np.array([0.5], np.float32)}
    assert_same(run_gx(m, feeds), run_ort(m, feeds))


@pytest.mark.parametrize("pos", [None, 0, -1, 2])
def test_sequence_insert_erase_at_positions(pos):
    inputs = ["seq", "t"] + (["p"] if pos is not None else [])
    m = model([helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, keepdims=0),
               helper.make_node("SequenceInsert", inputs, ["ins"]),
               helper.make_node("SequenceErase", ["ins"] + (["p"] if pos is not None else []),
                                ["er"]),
               helper.make_node("SequenceAt", ["ins", "q"], ["at"]),
               helper.make_node("ConcatFromSequence", ["er"], ["stacked"], axis=-1, new_axis=1)],
              [vi("x", F, [2, 3]), vi("t", F, [2]), vi("p", I64, []), vi("q", I64, [])]
              if pos is not None else [vi("x", F, [2, 3]), vi("t", F, [2]), vi("q", I64, [])],
              [seq_vi("ins", F, [2]), vi("at", F, [2]), vi("stacked", F, [2, None])])
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3),
             "t": np.array([9.0, 8.0], np.float32), "q": np.array(-2, np.int64)}
    if pos is not None:
        feeds["p"] = np.array(pos, np.int64)
    assert_same(run_gx(m, feeds), run_ort(m, feeds))


def test_sequence_position_out_of_range_is_a_clear_error():
    m = model([helper.make_node("SequenceConstruct", ["x", "x"], ["s"]),
               helper.make_node("SequenceAt", ["s", "p"], ["y"])],
              [vi("x", F, [2]), vi("p", I64, [])], [vi("y", F, [2])])
    exe = gx.compile(gx.import_model(m), target="numpy", level=0)
    with pytest.raises(errors.ExecutionError, match="out of range"):
        exe.run({"x": np.zeros(2, np.float32), "p": np.array(2, np.int64)})


def test_optionals_through_if_and_identity():
    then_g = helper.make_graph([helper.make_node("Optional", ["x"], ["o1"])], "then", [],
                               [helper.make_value_info("o1", helper.make_optional_type_proto(
                                   helper.make_tensor_type_proto(F, [2])))])
    empty_t = helper.make_optional_type_proto(helper.make_tensor_type_proto(F, [2]))
    else_g = helper.make_graph([helper.make_node("Optional", [], ["o2"],
                                                 type=helper.make_tensor_type_proto(F, [2]))],
                               "else", [], [helper.make_value_info("o2", empty_t)])
    m = model([helper.make_node("If", ["c"], ["o"], then_branch=then_g, else_branch=else_g),
               helper.make_node("Identity", ["o"], ["o_copy"]),
               helper.make_node("OptionalHasElement", ["o_copy"], ["has"])],
              [vi("c", B, []), vi("x", F, [2])],
              [helper.make_value_info("o_copy", empty_t), vi("has", B, [])], opset=18)
    mod = gx.import_model(m)
    assert isinstance(mod.graph.outputs[0].type, OptionalType)
    exe = gx.compile(mod, target="numpy", level=0)
    x = np.array([1.0, 2.0], np.float32)
    o, has = exe(np.array(True), x)
    np.testing.assert_array_equal(o, x)
    assert has.dtype == np.bool_ and bool(has)
    o, has = exe(np.array(False), x)
    assert o is None and not bool(has)


PAIR = helper.make_tensor("pair", F, [2], [1.0, 2.0])


def test_if_on_a_static_condition_is_inlined():
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["a"])], "then", [], [vi("a", F, [3])])
    # the else branch cannot type-check for x: f32[3] (adds a 2-element tensor)
    else_g = helper.make_graph([helper.make_node("Add", ["x", "pair"], ["b0"])],
                               "else", [], [vi("b0", F, None)])
    m = model([helper.make_node("Size", ["x"], ["n"]),
               helper.make_node("Equal", ["n", "three"], ["c"]),
               helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
              [vi("x", F, [3])], [vi("y", F, [3])], opset=18,
              inits=[helper.make_tensor("three", I64, [], [3]), PAIR])
    mod = gx.import_model(m)
    assert "if" not in mod.op_counts() and "unreachable" not in mod.op_counts()
    (y,) = gx.compile(mod, target="numpy", level=0)(np.array([1.0, 2.0, 3.0], np.float32))
    np.testing.assert_allclose(y, [-1.0, -2.0, -3.0])


def test_if_branch_that_cannot_type_check_fails_only_when_taken():
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["a"])], "then", [], [vi("a", F, [3])])
    else_g = helper.make_graph([helper.make_node("Add", ["x", "pair"], ["b0"])],
                               "else", [], [vi("b0", F, None)])
    m = model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
              [vi("c", B, []), vi("x", F, [3])], [vi("y", F, [3])], opset=18, inits=[PAIR])
    mod = gx.import_model(m)
    assert mod.op_counts().get("unreachable") == 1
    x_in = mod.graph.inputs[1]
    assert all(op.parent is not None for op, _ in x_in.uses)  # no uses left by the failed import
    exe = gx.compile(mod, target="numpy", level=0)
    x = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(exe(np.array(True), x)[0], -x)
    with pytest.raises(errors.ExecutionError, match="else_branch"):
        exe(np.array(False), x)


# -- strings, ml, training, random --------------------------------------------------------
def test_string_ops_match_onnxruntime():
    m = model([helper.make_node("StringConcat", ["a", "b"], ["ab"]),
               helper.make_node("RegexFullMatch", ["ab"], ["ok"], pattern=r"[a-z]+@\w+\.com"),
               helper.make_node("StringSplit", ["ab"], ["parts", "n"], delimiter="@")],
              [vi("a", TensorProto.STRING, [3]), vi("b", TensorProto.STRING, [1])],
              [vi("ab", TensorProto.STRING, [3]), vi("ok", B, [3]),
               vi("parts", TensorProto.STRING, [3, None]), vi("n", I64, [3])], opset=20)
    feeds = {"a": np.array(["alice", "bob", "Émile"], dtype=object),
             "b": np.array(["@mail.com"], dtype=object)}
    got, want = run_gx(m, feeds), run_ort(m, feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_string_normalizer_stopwords_and_case():
    # (onnxruntime's StringNormalizer needs an installed en_US locale, so: expected values)
    node = helper.make_node("StringNormalizer", ["a"], ["norm"], case_change_action="UPPER",
                            stopwords=["BOB"], is_case_sensitive=0)
    m = model([node], [vi("a", TensorProto.STRING, [1, "C"])],
              [vi("norm", TensorProto.STRING, [1, None])], opset=20)
    (y,) = run_gx(m, {"a": np.array([["alice", "bob", "Zoë"]], dtype=object)})
    np.testing.assert_array_equal(y, np.array([["ALICE", "ZOË"]], dtype=object))
    (y,) = run_gx(m, {"a": np.array([["Bob"]], dtype=object)})
    np.testing.assert_array_equal(y, np.array([[""]], dtype=object))


def test_tree_ensemble_average_and_logistic():
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=1, aggregate_function=0,
        post_transform=2, tree_roots=[0, 1],
        nodes_featureids=[0, 1], nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [2], [0, 3]),
        nodes_splits=helper.make_tensor("s", F, [2], [0.5, -1.0]),
        nodes_truenodeids=[0, 2], nodes_trueleafs=[1, 1], nodes_falsenodeids=[1, 3],
        nodes_falseleafs=[1, 1], leaf_targetids=[0, 0, 0, 0],
        leaf_weights=helper.make_tensor("w", F, [4], [1.0, 2.0, 3.0, 4.0]))
    g = helper.make_graph([node], "g", [vi("X", F, [3, 2])], [vi("Y", F, [3, 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21),
                                            helper.make_opsetid("ai.onnx.ml", 5)])
    x = np.array([[0.0, 0.0], [1.0, -2.0], [np.nan, 5.0]], np.float32)
    (y,) = run_gx(m, {"X": x})
    # tree 0: x0 <= 0.5 -> leaf 0 (1) else leaf 1 (2); tree 1: x1 > -1 -> leaf 2 (3) else leaf 3 (4)
    raw = np.array([(1 + 3) / 2, (2 + 4) / 2, (2 + 3) / 2])
    np.testing.assert_allclose(y[:, 0], 1 / (1 + np.exp(-raw)), rtol=1e-6)


def test_label_encoder_float_keys_with_nan():
    node = helper.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml",
                            keys_floats=[1.0, float("nan"), 2.5], values_int64s=[10, 20, 30])
    g = helper.make_graph([node], "g", [vi("x", F, [4])], [vi("y", I64, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21),
                                            helper.make_opsetid("ai.onnx.ml", 3)])
    (y,) = run_gx(m, {"x": np.array([2.5, np.nan, 7.0, 1.0], np.float32)})
    np.testing.assert_array_equal(y, [30, 20, -1, 10])


def test_random_ops_shapes_ranges_and_seeds():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 5))
    u = gb.random_uniform_like(x, low=2.0, high=3.0, seed=1.0)
    n = gb.random_normal(shape=(1000,), mean=5.0, scale=0.1, dtype=DType.float64)
    b = gb.bernoulli(x)
    mn = gb.multinomial(gb.constant(np.array([[0.0, -1e9], [-1e9, 0.0]], np.float32)),
                        sample_size=6, dtype=DType.int64)
    for v in (u, n, b, mn):
        gb.output(v)
    exe = gx.compile(gb.module().verify(), target="numpy", level=0)
    p = np.array([[0.0, 1.0, 0.0, 1.0, 1.0]] * 4, np.float32)
    u1, n1, b1, m1 = exe(p)
    u2, *_ = exe(p)
    assert u1.dtype == np.float32 and u1.shape == (4, 5) and ((u1 >= 2) & (u1 < 3)).all()
    np.testing.assert_array_equal(u1, u2)                       # seeded: reproducible
    assert n1.dtype == np.float64 and abs(n1.mean() - 5.0) < 0.05
    np.testing.assert_array_equal(b1, p)                        # p in {0, 1}: deterministic
    np.testing.assert_array_equal(m1, [[0] * 6, [1] * 6])       # all mass on one class
    ops = gb.module().op_counts()
    from galaxir.passes.rewrite import is_pure
    assert not any(is_pure(op) for op in gb.graph.block if op.name in ("bernoulli", "multinomial"))
    assert ops["random_normal"] == 1


def test_adam_matches_the_spec_formula():
    node = helper.make_node("Adam", ["R", "T", "X", "G", "V", "H"], ["X2", "V2", "H2"],
                            domain="ai.onnx.preview.training", alpha=0.9, beta=0.99,
                            epsilon=1e-3, norm_coefficient=0.01)
    g = helper.make_graph([node], "g", [vi("R", F, []), vi("T", I64, [])] +
                          [vi(n, F, [3]) for n in "XGVH"],
                          [vi(n, F, [3]) for n in ("X2", "V2", "H2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("ai.onnx.preview.training", 1)])
    rng = np.random.default_rng(1)
    X, G, V = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    H = np.abs(rng.standard_normal(3)).astype(np.float32)
    x2, v2, h2 = run_gx(m, {"R": np.array(0.1, np.float32), "T": np.array(3, np.int64),
                            "X": X, "G": G, "V": V, "H": H})
    g_reg = 0.01 * X + G
    v = 0.9 * V + 0.1 * g_reg
    h = 0.99 * H + 0.01 * g_reg * g_reg
    r = 0.1 * np.sqrt(1 - 0.99 ** 3) / (1 - 0.9 ** 3)
    np.testing.assert_allclose(v2, v, rtol=1e-5)
    np.testing.assert_allclose(h2, h, rtol=1e-5)
    np.testing.assert_allclose(x2, X - r * v / (np.sqrt(h) + 1e-3), rtol=1e-5)
