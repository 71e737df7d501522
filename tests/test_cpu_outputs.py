"""Graph outputs written straight into arrays handed to the caller (program.py,
``Specialization._plan_direct_outputs``): no copy out of the arena, and still every result
a caller holds is its own -- a later run, a concurrent run or an out= buffer never changes
it."""
import threading

import numpy as np
import pytest

import galaxir as gx
from galaxir.backends.cpu.program import DIRECT_MIN_BYTES
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(7)
N = 128  # [N, N] f32 = 64 KiB: at the direct threshold


def _model(fallback=False, alias=False, small=False):
    """x -> h = relu(x @ w) (an output, also read by the next op) -> z = softmax(h) (an
    output); optionally cos (no native kernel) between them, a reshaped copy of h as a
    third output, and a small output (below the threshold: copied)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", N, N))
    w = gb.constant((RNG.standard_normal((N, N)) / N).astype(np.float32))
    h = gb.relu(gb.matmul(x, w))
    gb.output(h, "h")
    t = gb.cos(h) if fallback else h
    gb.output(gb.softmax(gb.mul(t, t), axis=1), "z")
    if alias:
        gb.output(gb.reshape(h, gb.constant(np.array([N * N], np.int64))), "h_flat")
    if small:
        gb.output(gb.reduce_sum(h, gb.constant(np.array([1], np.int64)), keepdims=0), "s")
    return gb.module()


def _reference(m, x):
    return gx.compile(m, target="numpy")(x)


@pytest.mark.parametrize("fallback", [False, True])
def test_later_runs_do_not_change_earlier_results(fallback):
    m = _model(fallback=fallback, small=True)
    exe = gx.compile(m, target="cpu")
    spec = exe.last
    assert len(spec.out_slot) == 2  # h and z direct, s (512 bytes) copied
    xs = [RNG.standard_normal((N, N)).astype(np.float32) for _ in range(3)]
    held = [exe(x) for x in xs]
    assert spec._native_outputs != fallback  # the one-call path, and the step-by-step one
    for x, got in zip(xs, held):
        for g, want in zip(got, _reference(m, x)):
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)
    # every result is its own memory, none in an arena a later call reuses
    arrays = [a for got in held for a in got]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)
        for c in spec._free:
            assert not np.shares_memory(a, c.arena)
            assert all(d is None for d in c.direct)  # states keep no returned result


def test_outputs_sharing_a_buffer_are_copied():
    m = _model(alias=True)
    exe = gx.compile(m, target="cpu")
    assert len(exe.last.out_slot) == 1  # z; h and h_flat share a root: copies
    x = RNG.standard_normal((N, N)).astype(np.float32)
    h, z, h_flat = exe(x)
    assert not np.shares_memory(h, h_flat)
    np.testing.assert_array_equal(h.reshape(-1), h_flat)
    h[...] = 0  # the caller may write its results
    assert h_flat.any()
    for g, want in zip(exe(x), _reference(m, x)):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


def test_out_buffers_are_written_in_place_or_copied():
    m = _model(fallback=False)
    exe = gx.compile(m, target="cpu")
    x = RNG.standard_normal((N, N)).astype(np.float32)
    want = _reference(m, x)
    out = {"h": np.empty((N, N), np.float32), "z": np.empty((N, N), np.float32)}
    res = exe.run({"x": x}, out=out)
    assert res["h"] is out["h"] and res["z"] is out["z"]
    np.testing.assert_allclose(out["h"], want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["z"], want[1], rtol=1e-4, atol=1e-5)
    # a buffer the kernel cannot write directly: non-contiguous, or the input itself
    big = np.zeros((N, 2 * N), np.float32)
    xin = x.copy()
    res = exe.run({"x": xin}, out={"h": big[:, ::2], "z": xin})
    np.testing.assert_allclose(big[:, ::2], want[0], rtol=1e-4, atol=1e-5)
    assert not big[:, 1::2].any()
    np.testing.assert_allclose(xin, want[1], rtol=1e-4, atol=1e-5)
    # out= for one output, a fresh array for the other
    o = np.empty((N, N), np.float32)
    res = exe.run({"x": x}, out={"z": o})
    assert res["z"] is o and not np.shares_memory(res["h"], o)
    np.testing.assert_allclose(res["h"], want[0], rtol=1e-4, atol=1e-5)


def test_concurrent_calls_get_their_own_results():
    m = _model(fallback=False)
    exe = gx.compile(m, target="cpu", num_threads=2)
    xs = [RNG.standard_normal((N, N)).astype(np.float32) for _ in range(6)]
    wants = [_reference(m, x) for x in xs]
    errors: list = []

    def work(k):
        try:
            for _ in range(15):
                got = exe(xs[k])
                for g, w in zip(got, wants[k]):
                    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[0]


def test_profile_and_small_models_still_copy():
    m = _model(fallback=True)
    exe = gx.compile(m, target="cpu")
    x = RNG.standard_normal((N, N)).astype(np.float32)
    prof = exe.profile({"x": x}, runs=2)
    assert prof.steps
    np.testing.assert_allclose(exe(x)[1], _reference(m, x)[1], rtol=1e-4, atol=1e-5)
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 4, 8))
    gb.output(gb.relu(a), "y")
    small = gx.compile(gb.module(), target="cpu")
    assert small.last.out_slot == {} and 4 * 8 * 4 < DIRECT_MIN_BYTES
    v = RNG.standard_normal((4, 8)).astype(np.float32)
    y1 = small(v)[0]
    small(-v)
    np.testing.assert_array_equal(y1, np.maximum(v, 0))
