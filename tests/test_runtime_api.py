"""The onnxruntime-style runtime API of every executable (galaxir/backends/base.py):
run(outputs=[...]) computes only what those outputs need, out={...} writes into caller
buffers, and inputs/outputs describe names, dtypes and (symbolic) shapes."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import galaxir as gx
from galaxir.errors import GalaxirError, InputValidationError
from galaxir.ir import GraphBuilder, tensor

TARGETS = ["numpy", pytest.param("cpu", marks=pytest.mark.skipif(
    importlib.util.find_spec("llvmlite") is None, reason="the cpu target needs llvmlite"))]


def _two_branch_model():
    """y = relu(x @ w); z = sum(exp(x)) along axis 1: two outputs sharing only x."""
    rng = np.random.default_rng(0)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "batch", 8))
    w = gb.constant(rng.standard_normal((8, 4)).astype(np.float32))
    y = gb.relu(gb.matmul(x, w))
    z = gb.reduce_sum(gb.exp(x), gb.constant(np.array([1], np.int64)), keepdims=0)
    gb.output(y, "y")
    gb.output(z, "z")
    return gb.module()


@pytest.fixture(params=TARGETS)
def exe(request):
    return gx.compile(_two_branch_model(), target=request.param)


def _x(n=3):
    return np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)


def test_inputs_and_outputs_describe_names_dtypes_and_symbolic_shapes(exe):
    (i,) = exe.inputs
    assert (i.name, i.dtype, i.shape) == ("x", np.dtype(np.float32), ("batch", 8))
    names = [o.name for o in exe.outputs]
    assert names == ["y", "z"]
    y = exe.outputs[0]
    assert y.dtype == np.float32 and y.shape == ("batch", 4)


def test_outputs_selects_and_compiles_only_what_they_need(exe):
    full = exe.run({"x": _x()})
    only_y = exe.run({"x": _x()}, outputs=["y"])
    assert list(only_y) == ["y"]
    np.testing.assert_array_equal(only_y["y"], full["y"])
    only_z = exe.run({"x": _x()}, outputs=["z"])
    np.testing.assert_array_equal(only_z["z"], full["z"])
    pruned = exe._pruned(("z",))
    ops = pruned.module.op_counts()
    assert "matmul" not in ops and not any("gemm" in k or "matmul" in k for k in ops), ops
    assert exe._pruned(("z",)) is pruned  # compiled once per output set
    both = exe.run({"x": _x()}, outputs=["z", "y"])
    assert list(both) == ["z", "y"]


def test_out_writes_into_caller_buffers(exe):
    want = exe.run({"x": _x(5)})
    buf = np.full((5, 4), np.nan, np.float32)
    got = exe.run({"x": _x(5)}, out={"y": buf})
    assert got["y"] is buf
    np.testing.assert_array_equal(buf, want["y"])
    np.testing.assert_array_equal(got["z"], want["z"])
    zbuf = np.empty_like(want["z"])
    got = exe.run({"x": _x(5)}, outputs=["z"], out={"z": zbuf})
    assert got["z"] is zbuf and list(got) == ["z"]
    np.testing.assert_array_equal(zbuf, want["z"])


@pytest.mark.parametrize("bad, match", [
    (dict(outputs=["nope"]), "unknown output name"),
    (dict(outputs="y"), "list of output names"),
    (dict(outputs=[]), "names no output"),
    (dict(out={"y": np.empty((3, 4), np.float64)}), "expected dtype float32"),
    (dict(out={"y": np.empty((3, 5), np.float32)}), "expected shape"),
    (dict(out={"y": [1, 2]}), "writable numpy array"),
    (dict(outputs=["z"], out={"y": np.empty((3, 4), np.float32)}), "unrequested"),
])
def test_bad_outputs_and_out_arguments_are_named(exe, bad, match):
    with pytest.raises(InputValidationError, match=match):
        exe.run({"x": _x()}, **bad)


def test_out_buffer_of_the_wrong_symbolic_size_is_refused(exe):
    buf = np.empty((4, 4), np.float32)  # batch 4, but the input binds batch to 3
    with pytest.raises(GalaxirError, match="out"):
        exe.run({"x": _x(3)}, out={"y": buf})


@pytest.mark.parametrize("target", TARGETS)
def test_feeds_outside_declared_dim_bounds_are_refused(target):
    from galaxir.ir import set_dim_bounds
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "batch", "seq"))
    y = gb.input("y", tensor("f32", "batch", 4))
    gb.output(gb.op("reduce_sum", x, gb.constant(np.array([1], np.int64)), keepdims=0), "sx")
    gb.output(gb.op("relu", y), "ry")
    m = gb.module()
    set_dim_bounds(m, {"batch": (1, 8), "seq": (2, None)})
    exe = gx.compile(m, target=target)
    ok = exe.run({"x": np.ones((3, 5), np.float32), "y": np.ones((3, 4), np.float32)})
    np.testing.assert_array_equal(ok["sx"], np.full(3, 5, np.float32))
    for shape_x, shape_y, words in [((9, 5), (9, 4), ["'x'", "dim 0", "'batch'", "9", "1..8"]),
                                    ((3, 1), (3, 4), ["'x'", "dim 1", "'seq'", "2.."]),
                                    ((0, 5), (0, 4), ["'x'", "dim 0", "0"])]:
        with pytest.raises(InputValidationError) as e:
            exe.run({"x": np.ones(shape_x, np.float32), "y": np.ones(shape_y, np.float32)})
        assert all(w in str(e.value) for w in words), str(e.value)
