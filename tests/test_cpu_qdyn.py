"""Dynamic quantization's matmul chain fused into one ``dynamic_qmatmul`` at O2
(galaxir/passes/qdq_dynamic.py, backends/cpu/kernels_qdyn.py): the pass's matches and
refusals, and the fused kernel bit-equal to the numpy reference of the unfused chain on
every forced VNNI / AVX2 path."""
import numpy as np
import pytest

import galaxir as gx
from galaxir.ir.builder import GraphBuilder
from galaxir.ir.types import DType, tensor
from tests.conftest import native_kernels


def _linear(shape, n, bias=True, seed=0, out=None):
    """x @ w (+ b) (then ``out`` of the result), the float model gx.quantize rewrites."""
    rng = np.random.default_rng(seed)
    k = shape[-1]
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *shape))
    h = gb.matmul(x, gb.constant((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)))
    if bias:
        h = gb.add(h, gb.constant(rng.standard_normal(n).astype(np.float32)))
    gb.output(out(gb, h) if out else h, "y")
    return gb.module()


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("shape,n,bias,wt", [((1, 37, 45), 21, True, "s8"), ((4, 64), 96, False, "s8"),
                                             ((2, 5, 130), 7, True, "u8")])
def test_fused_dynamic_matmul_bit_equal_to_the_chain(path, shape, n, bias, wt):
    qm = gx.quantize(_linear(shape, n, bias), None, weight_type=wt)
    exe = gx.compile(qm, target="cpu")
    ref = gx.compile(qm, target="numpy")
    rng = np.random.default_rng(1)
    for scale, shift in ((1.0, 0.0), (3.0, 2.0), (0.5, -7.0)):   # zero points 0..255
        f = {"x": (rng.standard_normal(shape) * scale + shift).astype(np.float32)}
        _same(exe.run(f)["y"], ref.run(f)["y"])
    assert native_kernels(exe) == ["DynQMatMul"], exe.report()


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # the NaN
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_dynamic_matmul_threads_and_edge_inputs(threads):
    """Row chunks over the pool; an all-zero input (scale 1), a NaN (range [0, 0]), one sign."""
    qm = gx.quantize(_linear((50, 33), 40), None)
    exe = gx.compile(qm, target="cpu", num_threads=threads)
    ref = gx.compile(qm, target="numpy")
    rng = np.random.default_rng(2)
    for x in (rng.standard_normal((50, 33)), np.zeros((50, 33)), np.abs(rng.standard_normal((50, 33))),
              np.where(np.arange(50 * 33).reshape(50, 33) == 700, np.nan, 1.0)):
        f = {"x": x.astype(np.float32)}
        _same(exe.run(f)["y"], ref.run(f)["y"])
    assert native_kernels(exe) == ["DynQMatMul"]


def _chain(swap: bool, share_cast: bool):
    """The chain written by hand: the mul operands in either order, optionally a second
    user (a graph output) of the float accumulator."""
    rng = np.random.default_rng(4)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 6, 20))
    xq, xs, xz = gb.op("dynamic_quantize_linear", x, num_results=3)
    w = gb.constant(rng.integers(-128, 128, (20, 9)).astype(np.int8))
    acc = gb.op("matmul_integer", xq, w, xz)
    fa = gb.op("cast", acc, to=DType.float32)
    ws = gb.constant((rng.random(9) * 0.01 + 0.001).astype(np.float32))
    sc = gb.mul(ws, xs) if swap else gb.mul(xs, ws)
    gb.output(gb.mul(sc, fa) if swap else gb.mul(fa, sc), "y")
    if share_cast:
        gb.output(fa, "acc")
    return gb.module()


@pytest.mark.parametrize("swap,share", [(False, False), (True, False), (False, True)])
def test_the_pass_matches_the_chain_only(swap, share):
    m = _chain(swap, share)
    exe = gx.compile(m, target="cpu")
    ref = gx.compile(m, target="numpy")
    f = {"x": np.random.default_rng(5).standard_normal((6, 20)).astype(np.float32)}
    got, want = exe.run(f), ref.run(f)
    for k in want:
        _same(got[k], want[k])
    assert ("DynQMatMul" in native_kernels(exe)) == (not share), exe.report()
    o1 = gx.compile(m, target="cpu", level=1)
    _same(o1.run(f)["y"], want["y"])
    assert "DynQMatMul" not in native_kernels(o1)


def test_reference_kernel_of_the_fused_op():
    """The optimized module (holding dynamic_qmatmul) on the numpy reference gives the
    unfused chain's values bit for bit."""
    qm = gx.quantize(_linear((3, 10, 24), 17), None, weight_type="u8")
    opt = gx.optimize(qm, level=2, target="cpu")
    assert opt.op_counts().get("dynamic_qmatmul") == 1 and "matmul_integer" not in opt.op_counts()
    f = {"x": np.random.default_rng(6).standard_normal((3, 10, 24)).astype(np.float32)}
    _same(gx.compile(opt, target="numpy").run(f)["y"], gx.compile(qm, target="numpy").run(f)["y"])
