"""The cpu backend's per-call fixed cost: a call of a fully native model does the same
Python work whatever the number of ops (the latency itself is measured in
benchmarks/bench_overhead.py, not here)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import galaxir as gx
from galaxir.errors import GalaxirError, InputValidationError
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
    assert max(counts[6]) < 16, counts  # validation, one segment call, one output copy


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


# -- the call's fast paths refuse what the full checks refuse ---------------------------------
def _bounded_module():
    """x: f32[N, 3], y: f32[N, 4], z: i64[2] static, N declared 1..8."""
    from galaxir.ir import set_dim_bounds
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3))
    y = gb.input("y", tensor("f32", "N", 4))
    z = gb.input("z", tensor("i64", 2))
    gb.output(gb.neg(gb.min(x, x)), "nx")
    gb.output(gb.op("relu", y), "ry")
    gb.output(gb.neg(z), "nz")
    m = gb.module()
    set_dim_bounds(m, {"N": (1, 8)})
    return m


def _feeds(n=3, **over):
    f = {"x": np.arange(3 * n, dtype=np.float32).reshape(n, 3),
         "y": np.ones((n, 4), np.float32), "z": np.array([1, 2], np.int64)}
    f.update(over)
    return f


_F3 = np.zeros((3, 3), np.float32)
BAD_FEEDS = {  # each differs from an accepted call with N = 3 in one way
    "dtype": _feeds(x=_F3.astype(np.float64)),
    "byte order": _feeds(x=_F3.astype(">f4")),
    "rank": _feeds(x=_F3[None]),
    "static dim": _feeds(y=np.ones((3, 5), np.float32)),
    "symbol bound twice": _feeds(y=np.ones((2, 4), np.float32)),
    "above the declared range": _feeds(9),
    "below the declared range": _feeds(0),
    "int dtype": _feeds(z=np.array([1, 2], np.int32)),
    "static 1-d length": _feeds(z=np.array([1, 2, 3], np.int64)),
    "not a number": _feeds(x="abc"),
    "none": _feeds(x=None),
    "object array": _feeds(x=np.array([[object()] * 3] * 3)),
    "ragged list": _feeds(x=[[1.0, 2.0, 3.0], [1.0]]),
}


@pytest.mark.parametrize("target", ["cpu", "numpy"])
def test_a_warm_executable_refuses_what_a_fresh_one_refuses(target):
    """A call that matches the latest accepted (dtype, shape) signature skips the checks;
    every input that differs from it in any way gets the same error as on an executable
    that has never run (the full checks), named and worded alike."""
    m = _bounded_module()
    warm = gx.compile(m, target=target)
    for n in (5, 3):
        got = warm.run(_feeds(n))
        np.testing.assert_array_equal(got["nx"], -_feeds(n)["x"])
    for what, feeds in BAD_FEEDS.items():
        with pytest.raises(GalaxirError) as fresh_err:
            gx.compile(m, target=target).run(feeds)
        for call in (lambda: warm.run(feeds), lambda: warm(*feeds.values())):
            with pytest.raises(GalaxirError) as warm_err:
                call()
            assert type(warm_err.value) is type(fresh_err.value), what
            assert str(warm_err.value) == str(fresh_err.value), what
        got = warm.run(_feeds(3))  # and the accepted signature still runs
        np.testing.assert_array_equal(got["ry"], np.ones((3, 4), np.float32))
    # names: missing, unknown, both at once
    for feeds in ({"x": _F3, "y": np.ones((3, 4), np.float32)},
                  {**_feeds(), "w": _F3}, {"x": _F3, "y": _F3, "w": _F3}):
        with pytest.raises(InputValidationError, match="input"):
            warm.run(feeds)


def test_inputs_the_checks_convert_or_copy_still_give_the_right_answer():
    """Lists, non-contiguous, Fortran-order, misaligned and subclass inputs after the fast
    path has accepted plain arrays of the same dtype and shape."""
    m = _bounded_module()
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy")
    exe.run(_feeds(3))
    big = np.arange(64 * 3, dtype=np.float32).reshape(64, 3) / 7  # passed by address
    raw = np.zeros(3 * 3 + 1, np.float32).view(np.uint8)[2:38].view(np.float32)
    raw[...] = np.arange(9)
    for x in (_feeds(3)["x"].tolist(), np.asfortranarray(_feeds(3)["x"]),
              np.arange(18, dtype=np.float32).reshape(3, 6)[:, ::2], raw.reshape(3, 3),
              _feeds(3)["x"].view(np.memmap)):
        feeds = _feeds(3, x=x)
        for k, v in exe.run(feeds).items():
            np.testing.assert_array_equal(v, ref.run(feeds)[k])
    m2 = GraphBuilder()
    xin = m2.input("x", tensor("f32", 64, 3))
    m2.output(m2.neg(m2.min(xin, xin)), "y")
    big_exe = gx.compile(m2.module(), target="cpu", level=0)
    big_exe(big)
    for x in (big, np.asfortranarray(big), big[::-1][::-1], big.astype(np.float64)):
        if x.dtype != np.float32:
            with pytest.raises(InputValidationError, match="dtype"):
                big_exe(x)
            continue
        np.testing.assert_array_equal(big_exe(x)[0], -x)


def test_data_address_reads_what_numpy_reports():
    """The cpu backend reads an array's data pointer from numpy's C struct (program.py);
    it must equal ``ndarray.ctypes.data`` for every kind of array."""
    from galaxir.backends.cpu import program
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    ro = base.copy()
    ro.flags.writeable = False
    arrays = [base, base[2:], base[:, 3], base.T, np.asfortranarray(base), ro,
              np.empty(0, np.int8), np.zeros((), np.float64), base.view(np.memmap),
              np.frombuffer(bytearray(16), np.float32)]
    for a in arrays:
        assert program.data_address(a) == a.ctypes.data
    if sys.implementation.name == "cpython":
        assert program.data_address is program._struct_address


def test_threads_calling_with_different_shapes_get_their_own_answers():
    """Threads that alternate input shapes on one dynamic executable: the lock-free choice
    of the latest specialization never hands a call code for another shape."""
    import threading
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3))
    gb.output(gb.neg(gb.min(x, x)), "y")
    exe = gx.compile(gb.module(), target="cpu", level=0)
    errors = []

    def work(k):
        try:
            for i in range(150):
                n = 1 + (k + i) % 4
                x = np.full((n, 3), k * 100 + i, np.float32)
                (y,) = exe(x)
                if y.shape != (n, 3) or not np.array_equal(y, -x):
                    errors.append((k, i, y.shape))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len(exe._specs) == 4
