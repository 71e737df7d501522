"""Static control flow (If on a constant condition, Loop with a constant trip count) is
inlined/unrolled at O1, so the cpu backend runs such a model as one native segment; the
results match the numpy reference running the real loop, and onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.testing.tiny import control_flow_model, vi

F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64


X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def check(model, feeds):
    """cpu (default level) against the numpy reference at level 0 and onnxruntime."""
    exe = gx.compile(model, target="cpu")
    got = exe.run(feeds)
    want = gx.compile(model, target="numpy", level=0).run(feeds)
    for k in want:
        assert got[k].shape == want[k].shape
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    theirs = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, feeds)
    for k, t in zip(want, theirs):
        np.testing.assert_allclose(got[k], t, rtol=1e-5, atol=1e-6)
    return exe


@pytest.mark.parametrize("trip,cond,keep", [(4, True, True), (1, False, True), (3, True, False),
                                            (0, True, True), (-2, False, True), (9, True, True)])
def test_static_if_and_loop_run_fully_native(trip, cond, keep):
    m = control_flow_model(trip, cond, keep)
    opt = gx.optimize(gx.import_model(m), level=1)
    assert "loop" not in opt.op_counts() and "if" not in opt.op_counts()
    exe = check(m, {"x": X})
    assert exe.fallback_ops == [], exe.report()
    assert len(exe.last.segments) <= 1


def test_dynamic_loops_stay_loops_and_still_match():
    m = control_flow_model(5, stop_below=3.0)  # the body may stop the loop early
    assert "loop" in gx.optimize(gx.import_model(m), level=1).op_counts()
    exe = check(m, {"x": X})
    assert "loop" in exe.fallback_ops
    m = control_flow_model(trip_input=True, scan=False)  # trip count known only at run time
    assert "loop" in gx.optimize(gx.import_model(m), level=1).op_counts()
    check(m, {"x": X, "n": np.array(3, np.int64)})


def test_unrolling_is_bounded():
    m = gx.import_model(control_flow_model(200))
    assert "loop" in gx.optimize(m, level=1).op_counts()  # 200 x 4 body ops > 512
    assert "loop" not in gx.optimize(m, level=1, unroll_max_ops=1000).op_counts()
    small = gx.import_model(control_flow_model(4))
    assert "loop" in gx.optimize(small, level=1, unroll_max_ops=15).op_counts()
    opt = gx.optimize(small, pipeline="unroll-loops")
    assert "loop" not in opt.op_counts()
    np.testing.assert_allclose(gx.compile(opt, target="numpy", level=0)(X)[1],
                               gx.compile(small, target="numpy", level=0)(X)[1], rtol=1e-6)


def test_nested_loops_and_if_on_the_iteration_number_unroll_completely():
    # outer loop (3 trips) whose body runs an inner loop (2 trips) and an If on i == 0
    inner_body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]),
         helper.make_node("Identity", ["ci"], ["co"])],
        "inner", [vi("j", I64, []), vi("ci", B, []), vi("v_in", F, [2, 8])],
        [vi("co", B, []), vi("v_out", F, [2, 8])])
    first = helper.make_graph([helper.make_node("Mul", ["u", "two"], ["p"])], "first", [],
                              [vi("p", F, [2, 8])])
    other = helper.make_graph([helper.make_node("Sub", ["u", "one"], ["q"])], "other", [],
                              [vi("q", F, [2, 8])])
    outer_body = helper.make_graph(
        [helper.make_node("Loop", ["two_i", "", "acc_in"], ["u"], body=inner_body),
         helper.make_node("Equal", ["i", "zero_i"], ["is0"]),
         helper.make_node("If", ["is0"], ["acc_out"], then_branch=first, else_branch=other),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "outer", [vi("i", I64, []), vi("cond_in", B, []), vi("acc_in", F, [2, 8])],
        [vi("cond_out", B, []), vi("acc_out", F, [2, 8])])
    g = helper.make_graph(
        [helper.make_node("Loop", ["three_i", "", "x"], ["y"], body=outer_body)], "nested",
        [vi("x", F, [2, 8])], [vi("y", F, [2, 8])],
        [helper.make_tensor("one", F, [], [1.0]), helper.make_tensor("two", F, [], [2.0]),
         helper.make_tensor("two_i", I64, [], [2]), helper.make_tensor("three_i", I64, [], [3]),
         helper.make_tensor("zero_i", I64, [], [0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    counts = gx.optimize(gx.import_model(m), level=1).op_counts()
    assert "loop" not in counts and "if" not in counts, counts
    exe = check(m, {"x": X})
    assert exe.fallback_ops == [] and len(exe.last.segments) == 1
    np.testing.assert_allclose(exe(X)[0], ((X + 2) * 2 + 2 - 1) + 2 - 1, rtol=1e-6)
