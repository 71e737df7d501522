"""O3 memory planning (galaxir/passes/memory.py): liveness, in-place steps, buffer sharing,
the arena placement and its validator; the cpu backend executing the plan."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.errors import CompileError
from galaxir.ir import GraphBuilder, tensor
from galaxir.passes.memory import (ALIGN, Step, live_peak, place_by_colouring,
                                   place_greedy_by_size, plan_module, plan_schedule,
                                   validate_plan)

RNG = np.random.default_rng(0)


def chain_plan(**kw):
    # a -> b -> c -> d, each step reads the previous value; d is the output
    steps = [Step(["a"], ["x"]), Step(["b"], ["a"], inplace=[("b", "a")]),
             Step(["c"], ["b"], inplace=[("c", "b")]), Step(["d"], ["c"])]
    sizes = {"a": 1000, "b": 1000, "c": 1000, "d": 1000}
    return plan_schedule(steps, sizes, live_out=["d"], **kw)


def test_inplace_shares_one_buffer_and_arena_is_valid():
    plan = chain_plan()
    assert [(i, o, n) for i, o, n in plan.inplace] == [(1, "b", "a"), (2, "c", "b")]
    assert plan.assignment["a"] is plan.assignment["b"] is plan.assignment["c"]
    assert plan.assignment["d"] is not plan.assignment["c"]
    assert plan.arena_bytes == 2 * 1024  # two 64-aligned buffers of 1000 bytes
    assert plan.naive_bytes == 4 * 1024
    assert all(b.offset % ALIGN == 0 for b in plan.buffers)
    validate_plan(plan)


def test_without_inplace_neighbours_cannot_share():
    plan = chain_plan(inplace=False)
    assert plan.inplace == []
    # a dies at step 1 where b is born: both live at step 1, so 2 buffers at any step
    assert plan.peak_live_bytes == 2 * 1024
    assert plan.arena_bytes == 2 * 1024
    a, b = plan.assignment["a"], plan.assignment["b"]
    assert a.offset != b.offset


def test_inplace_refused_when_input_lives_on_or_is_an_output():
    steps = [Step(["a"], []), Step(["b"], ["a"], inplace=[("b", "a")]), Step(["c"], ["a", "b"])]
    plan = plan_schedule(steps, {"a": 64, "b": 64, "c": 64}, live_out=["c"])
    assert plan.inplace == []  # a is read again at step 2
    steps = [Step(["a"], []), Step(["b"], ["a"], inplace=[("b", "a")])]
    plan = plan_schedule(steps, {"a": 64, "b": 64}, live_out=["a", "b"])
    assert plan.inplace == []  # a is a graph output
    steps = [Step(["a"], []), Step(["b"], ["a"], inplace=[("b", "a")])]
    plan = plan_schedule(steps, {"a": 64, "b": 128}, live_out=["b"])
    assert plan.inplace == []  # b does not fit in a


def test_views_keep_their_source_alive():
    steps = [Step(["a"], []), Step([], ["a"]), Step(["b"], []), Step(["c"], ["v", "b"])]
    plan = plan_schedule(steps, {"a": 256, "b": 256, "c": 256}, aliases={"v": "a"},
                         live_out=["c"])
    a, b = plan.assignment["a"], plan.assignment["b"]
    assert a.end == 3 and a.lives_with(b) and a.offset != b.offset
    assert plan.assignment["v"] is a


def test_scratch_lives_one_step():
    steps = [Step(["a"], [], scratch=4096), Step(["b"], ["a"], scratch=4096), Step(["c"], ["b"])]
    plan = plan_schedule(steps, {"a": 64, "b": 64, "c": 64}, live_out=["c"])
    scratch = [b for b in plan.buffers if b.kind == "scratch"]
    assert len(scratch) == 2 and all(b.start == b.end for b in scratch)
    assert plan.arena_bytes < plan.naive_bytes


def test_validator_names_overlapping_buffers():
    plan = chain_plan(inplace=False)
    a, b = plan.assignment["a"], plan.assignment["b"]
    b.offset = a.offset
    with pytest.raises(CompileError, match=r"'a'.*'b'|'b'.*'a'"):
        validate_plan(plan)


def test_validator_rejects_misaligned_and_overrunning_buffers():
    plan = chain_plan()
    plan.buffers[0].offset = 8
    with pytest.raises(CompileError, match="multiple of 64"):
        validate_plan(plan)
    plan = chain_plan()
    plan.arena_bytes = 100
    with pytest.raises(CompileError, match="overruns"):
        validate_plan(plan)


@pytest.mark.parametrize("seed", range(8))
def test_random_schedules_place_soundly(seed):
    rng = np.random.default_rng(seed)
    n = 60
    steps, sizes, live = [], {}, []
    for i in range(n):
        uses = [f"v{j}" for j in rng.choice(i, size=min(i, 2), replace=False)] if i else []
        pairs = [(f"v{i}", uses[0])] if uses and rng.random() < 0.5 else []
        steps.append(Step([f"v{i}"], uses, pairs, scratch=int(rng.integers(0, 3)) * 100))
        sizes[f"v{i}"] = int(rng.integers(1, 5000))
    live.append(f"v{n - 1}")
    for method in ("greedy-size", "colouring", "best"):
        plan = plan_schedule(steps, sizes, live_out=live, method=method)
        validate_plan(plan, sizes)
        assert plan.peak_live_bytes <= plan.arena_bytes <= plan.naive_bytes
    offs_g = place_greedy_by_size(plan.buffers)
    offs_c = place_by_colouring(plan.buffers)
    assert set(offs_g) == set(offs_c) == set(range(len(plan.buffers)))
    peak, _ = live_peak(plan.buffers, n)
    assert peak == plan.peak_live_bytes


def _module():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 8, 16))
    a = gb.transpose(gb.exp(x), perm=[1, 0])
    b = gb.relu(a)                      # a dies here: in place
    c = gb.transpose(gb.add(b, gb.constant(np.float32(1))), perm=[1, 0])
    gb.output(gb.sigmoid(gb.mul(c, c)), "y")
    return gb.module()


def test_plan_module_and_the_o3_pass():
    m = _module()
    plan = plan_module(m)
    assert plan.inplace, plan.report()
    assert plan.arena_bytes < plan.naive_bytes
    assert "arena" in plan.report()
    m3 = gx.optimize(m, level=3)
    assert "arena=" in m3.metadata["memory_plan"]
    # concrete shapes for a symbolic module
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 16))
    gb.output(gb.relu(gb.exp(x)), "y")
    sym = gb.module()
    assert plan_module(sym).naive_bytes == 0
    assert plan_module(sym, {"x": (4, 16)}).naive_bytes == 2 * 256


def test_cpu_backend_executes_the_plan_in_place():
    pytest.importorskip("llvmlite")
    m = _module()
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    exe = gx.compile(m, target="cpu", level=0)
    (got,) = exe(x)
    (want,) = gx.compile(m, target="numpy", level=0)(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    rep = exe.memory_report()
    assert rep["inplace_steps"] >= 1
    assert rep["largest_live_set_bytes"] <= rep["arena_bytes"] <= rep["naive_bytes"]
    assert rep["buffers"] and {"offset", "size", "start", "end"} <= set(rep["buffers"][0])
    assert "arena" in str(rep)
    validate_plan(exe.last.plan)  # the backend already did; the plan stays provable
    # the plan the backend validates at compile time: a broken one is refused
    b0, b1 = exe.last.plan.buffers[:2]
    if b0.lives_with(b1):
        b1.offset = b0.offset
        with pytest.raises(CompileError):
            validate_plan(exe.last.plan)


def test_resnet50_arena_under_40_percent_of_naive():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("llvmlite")
    from galaxir.backends.cpu.prepare import prepare
    from galaxir.passes.memory import specialize_types as specialize
    from galaxir.backends.cpu.program import Specialization
    from galaxir.testing.zoo import dummy_inputs, model_path
    mp = onnx.load(str(model_path("resnet50")))
    shapes = {k: v.shape for k, v in dummy_inputs(mp).items()}
    spec = Specialization.plan_only(specialize(prepare(gx.import_model(mp)), shapes))
    rep = spec.plan.as_report()
    assert rep["arena_bytes"] <= 0.40 * rep["naive_bytes"], str(rep)
    assert rep["arena_bytes"] >= rep["largest_live_set_bytes"]
