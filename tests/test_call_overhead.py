"""The cpu backend's per-call fixed cost: a call of a fully native model does the same
Python work whatever the number of ops (the latency itself is measured in
benchmarks/bench_overhead.py, not here)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor
from galaxir.testing.tiny import chain_model

pytest.importorskip("llvmlite")


def python_calls(fn) -> int:
    """How many Python-level function calls ``fn()`` makes (C calls not counted)."""
    count = 0

    def prof(frame, event, arg):
        nonlocal count
        if event == "call":
            count += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("threads", [1, 2])
def test_a_native_call_does_no_python_work_per_op(threads):
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
    counts = {}
    for n in (6, 200):
        m = gx.import_model(chain_model(n))
        exe = gx.compile(m, target="cpu", level=0, num_threads=threads)
        assert exe.fallback_ops == [] and len(exe.last.segments) == 1
        assert sum(1 for s in exe.last.steps if s.kind == "native") == n
        assert len(exe.last.slot_value) == n // 2 + 1  # x and one constant per kernel
        (y,) = exe(x)
        np.testing.assert_allclose(y, gx.compile(m, target="numpy")(x)[0], rtol=1e-6)
        counts[n] = (python_calls(lambda: exe(x)), python_calls(lambda: exe.run({"x": x})))
    assert counts[6] == counts[200], counts
    assert max(counts[6]) < 30, counts  # validation, one segment call, one output copy


def test_new_shapes_then_old_shapes_pick_the_right_specialization():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3))
    gb.output(gb.neg(gb.min(x, x)), "y")
    exe = gx.compile(gb.module(), target="cpu", level=0)
    for n in (2, 5, 2, 5, 1, 2):
        x = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
        (y,) = exe(x)
        np.testing.assert_array_equal(y, -x)
    assert len(exe._specs) == 3


def test_large_and_odd_inputs_are_read_in_place_or_copied_correctly():
    # above the staging size (passed by address), non-contiguous and misaligned inputs
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 96, 128))
    b = gb.input("b", tensor("f32", 4, 8))
    gb.output(gb.neg(gb.min(a, a)), "ya")
    gb.output(gb.neg(gb.min(b, b)), "yb")
    exe = gx.compile(gb.module(), target="cpu", level=0)
    big = np.random.default_rng(0).standard_normal((96, 128)).astype(np.float32)
    raw = np.zeros(33, np.float32).view(np.uint8)[2:130].view(np.float32)  # misaligned
    small = raw.reshape(4, 8)
    small[...] = np.arange(32).reshape(4, 8)
    for a_in, b_in in ((big, small), (big[:, ::-1].copy()[:, ::-1], small.T.copy().T),
                       (np.asfortranarray(big), small)):
        ya, yb = exe(a_in, b_in)
        np.testing.assert_array_equal(ya, -a_in)
        np.testing.assert_array_equal(yb, -b_in)
    # outputs are copies: the next call does not change them
    ya, yb = exe(big, small)
    exe(big * 2, small * 2)
    np.testing.assert_array_equal(ya, -big)
