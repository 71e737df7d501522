"""Reductions, softmax family, normalizations, losses and linear algebra: shape inference
with symbolic dims, numpy kernels against plain numpy, composite decompositions against
their kernels, and the ONNX importer's upgrade of old opset forms."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import galaxir as gx
from galaxir.errors import ShapeInferenceError
from galaxir.ir import Builder
from galaxir.ir.builder import GraphBuilder
from galaxir.ir.opdef import lookup
from galaxir.ir.types import tensor
from galaxir.backends.numpy.registry import get_kernel

RNG = np.random.default_rng(0)


def _infer(name, *types, consts=(), **attrs):
    """The result type(s) of ``name`` over inputs of ``types`` (+ constant operands)."""
    gb = GraphBuilder()
    xs = [gb.input(f"x{i}", t) for i, t in enumerate(types)]
    xs += [None if c is None else gb.constant(np.asarray(c)) for c in consts]
    out = gb.op(name, *xs, **attrs)
    return str(out.type) if not isinstance(out, tuple) else tuple(str(o.type) for o in out)


def _run(name, *arrays, consts=(), **attrs):
    gb = GraphBuilder()
    xs = [gb.input(f"x{i}", tensor(str(gx_dtype(a)), *a.shape)) for i, a in enumerate(arrays)]
    xs += [None if c is None else gb.constant(np.asarray(c)) for c in consts]
    gb.output(gb.op(name, *xs, **attrs), "y")
    (y,) = gx.compile(gb.module(), target="numpy", level=0)(*arrays)
    return y


def gx_dtype(a):
    from galaxir.ir.types import DType
    return DType.from_numpy(a.dtype).short


# -- shape inference -------------------------------------------------------------------------
def test_reduce_infer_keepdims_negative_axes_symbolic():
    t = tensor("f32", "N", "H", 7, 5)
    assert _infer("reduce_sum", t, consts=[np.array([-1, 1], np.int64)]) == "f32[N,1,7,1]"
    assert _infer("reduce_mean", t, consts=[np.array([-1, 1], np.int64)], keepdims=0) == "f32[N,7]"
    assert _infer("reduce_max", t) == "f32[1,1,1,1]"
    assert _infer("reduce_max", t, keepdims=0) == "f32[]"
    assert _infer("reduce_l2", t, consts=[np.zeros(0, np.int64)], noop_with_empty_axes=1) == "f32[N,H,7,5]"
    assert _infer("reduce_prod", tensor("f32", "N", 3), consts=[np.zeros(0, np.int64)], keepdims=0) == "f32[]"


def test_reduce_infer_data_dependent_axes_and_unknown_rank():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 4, 5))
    ax = gb.input("ax", tensor("i64", 2))
    assert str(gb.reduce_sum(x, ax).type) == "f32[?,?,?]"
    assert str(gb.reduce_sum(x, ax, keepdims=0).type) == "f32[?]"
    u = gb.input("u", tensor("f32", "N").with_shape(None))
    assert str(gb.reduce_sum(u, gb.constant(np.array([0], np.int64)), keepdims=0).type) == "f32[*]"


def test_reduce_infer_errors():
    with pytest.raises(ShapeInferenceError, match="out of range"):
        _infer("reduce_sum", tensor("f32", 2, 3), consts=[np.array([2], np.int64)])
    with pytest.raises(ShapeInferenceError, match="same axis twice"):
        _infer("reduce_sum", tensor("f32", 2, 3), consts=[np.array([1, -1], np.int64)])


def test_argmax_infer():
    assert _infer("argmax", tensor("f32", "N", 3, "S"), axis=-1) == "i64[N,3,1]"
    assert _infer("argmin", tensor("f32", "N", 3, "S"), axis=1, keepdims=0) == "i64[N,S]"


@pytest.mark.parametrize("a,b,want", [
    (("N", "H", "S", "D"), ("N", "H", "D", "S2"), "f32[N,H,S,S2]"),
    ((2, 1, 3, 4), (5, 4, 6), "f32[2,5,3,6]"),
    (("B", "S", 64), (64, 128), "f32[B,S,128]"),
    ((4,), (4,), "f32[]"),
    ((4,), ("N", 4, 6), "f32[N,6]"),
    (("N", 3, 4), (4,), "f32[N,3]"),
    (("M", "K"), (4, 5), "f32[M,5]"),
])
def test_matmul_infer(a, b, want):
    assert _infer("matmul", tensor("f32", *a), tensor("f32", *b)) == want


def test_matmul_infer_errors():
    with pytest.raises(ShapeInferenceError, match="inner dims"):
        _infer("matmul", tensor("f32", 2, 3), tensor("f32", 4, 5))
    with pytest.raises(ShapeInferenceError, match="do not broadcast"):
        _infer("matmul", tensor("f32", 2, 3, 4), tensor("f32", 5, 4, 6))


def test_gemm_infer_trans_flags_and_bias():
    a, b = tensor("f32", "K", "M"), tensor("f32", "N", "K")
    assert _infer("gemm", a, b, transA=1, transB=1) == "f32[M,N]"
    assert _infer("gemm", tensor("f32", "M", 8), tensor("f32", 8, "N"), tensor("f32", 16)) == "f32[M,16]"
    with pytest.raises(ShapeInferenceError, match="inner dims"):
        _infer("gemm", tensor("f32", 3, 4), tensor("f32", 3, 5))
    with pytest.raises(ShapeInferenceError, match="broadcast"):
        _infer("gemm", tensor("f32", 3, 4), tensor("f32", 4, 5), tensor("f32", 3))


def test_einsum_and_det_infer():
    assert _infer("einsum", tensor("f32", "B", 2, 3), tensor("f32", "B", 3, 4),
                  equation="bij, bjk -> bik") == "f32[B,2,4]"
    assert _infer("einsum", tensor("f32", "N", 5, 5), equation="...ii->...i") == "f32[N,5]"
    assert _infer("einsum", tensor("f32", 3, 4), equation="ij") == "f32[3,4]"
    assert _infer("einsum", tensor("f32", 3, 4), equation="ji") == "f32[4,3]"  # implicit: sorted
    assert _infer("det", tensor("f32", "B", 3, 3)) == "f32[B]"
    with pytest.raises(ShapeInferenceError):
        _infer("det", tensor("f32", 3, 4))


def test_norm_and_loss_infer():
    x = tensor("f32", "N", 8, "S")
    assert _infer("layer_norm", x, tensor("f32", "S"), axis=-1) == "f32[N,8,S]"
    assert _infer("softmax", x, axis=-2) == "f32[N,8,S]"
    with pytest.raises(ShapeInferenceError, match="out of range"):
        _infer("softmax", x, axis=3)
    assert _infer("negative_log_likelihood_loss", tensor("f32", "N", 5, "D"), tensor("i64", "N", "D"),
                  reduction="none") == "f32[N,D]"
    assert _infer("negative_log_likelihood_loss", tensor("f32", "N", 5), tensor("i64", "N")) == "f32[]"


# -- kernels against numpy ---------------------------------------------------------------------
REDUCE_REF = {
    "reduce_sum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "reduce_mean": lambda x, a, k: np.mean(x, axis=a, keepdims=k),
    "reduce_max": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "reduce_min": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "reduce_prod": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "reduce_l1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "reduce_l2": lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k)),
    "reduce_log_sum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)),
    "reduce_log_sum_exp": lambda x, a, k: np.log(np.sum(np.exp(x.astype(np.float64)), axis=a, keepdims=k)),
    "reduce_sum_square": lambda x, a, k: np.sum(x * x, axis=a, keepdims=k),
}


@pytest.mark.parametrize("name", sorted(REDUCE_REF))
def test_reduction_kernels(name):
    x = RNG.uniform(0.5, 1.5, (3, 4, 5)).astype(np.float32)
    for axes, keep in (([1], 1), ([-1, 0], 0), (None, 1)):
        got = _run(name, x, consts=[None if axes is None else np.array(axes, np.int64)],
                   keepdims=keep)
        want = REDUCE_REF[name](x.astype(np.float64), None if axes is None else tuple(axes), bool(keep))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_reduction_empty_set_identities():
    x = np.zeros((2, 0, 3), np.float32)
    ax = [np.array([1], np.int64)]
    assert np.all(_run("reduce_sum", x, consts=ax) == 0)
    assert np.all(_run("reduce_prod", x, consts=ax) == 1)
    assert np.all(_run("reduce_max", x, consts=ax) == -np.inf)
    assert np.all(_run("reduce_min", x, consts=ax) == np.inf)
    assert np.all(_run("reduce_log_sum_exp", x, consts=ax) == -np.inf)
    assert _run("reduce_max", np.zeros((2, 0), bool), consts=ax).tolist() == [[False], [False]]
    assert _run("reduce_min", np.zeros((2, 0), bool), consts=ax).tolist() == [[True], [True]]


def test_reduce_noop_and_int_dtype():
    x = RNG.integers(-5, 5, (3, 4)).astype(np.int32)
    np.testing.assert_array_equal(_run("reduce_sum", x, consts=[np.zeros(0, np.int64)],
                                       noop_with_empty_axes=1), x)
    y = _run("reduce_sum", x, consts=[np.array([0], np.int64)])
    assert y.dtype == np.int32 and y.tolist() == [x.sum(0).tolist()]


def test_argmax_select_last_index():
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)
    assert _run("argmax", x, axis=1, keepdims=0).tolist() == [1, 0]
    assert _run("argmax", x, axis=1, keepdims=0, select_last_index=1).tolist() == [2, 3]
    assert _run("argmin", x, axis=-1, select_last_index=1).tolist() == [[3], [2]]


def test_softmax_family_kernels():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32) * 50
    for axis in (0, 1, -1):
        e = np.exp(x - x.max(axis, keepdims=True))
        sm = e / e.sum(axis, keepdims=True)
        np.testing.assert_allclose(_run("softmax", x, axis=axis), sm, rtol=1e-5, atol=1e-7)
        s64 = x.astype(np.float64) - x.max(axis, keepdims=True)
        lsm = s64 - np.log(np.exp(s64).sum(axis, keepdims=True))
        np.testing.assert_allclose(_run("log_softmax", x, axis=axis), lsm, rtol=1e-5, atol=1e-5)
    h = _run("hardmax", np.array([[1, 5, 5], [0, 0, 0]], np.float32), axis=1)
    assert h.tolist() == [[0, 1, 0], [1, 0, 0]]


def test_matmul_gemm_stay_float32():
    a = RNG.standard_normal((2, 3, 8, 16)).astype(np.float32)
    b = RNG.standard_normal((3, 16, 4)).astype(np.float32)
    y = _run("matmul", a, b)
    assert y.dtype == np.float32 and y.shape == (2, 3, 8, 4)
    np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-5)
    a2, b2, c = (RNG.standard_normal(s).astype(np.float32) for s in ((5, 3), (4, 5), (4,)))
    g = _run("gemm", a2, b2, c, transA=1, transB=1, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(g, 0.5 * a2.T @ b2.T + 2.0 * c, rtol=1e-5, atol=1e-5)
    e = _run("einsum", a[0], b, equation="bij,bjk->bik")
    np.testing.assert_allclose(e, a[0] @ b, rtol=1e-5, atol=1e-5)


def test_nll_loss_ignore_index_and_weights():
    x = RNG.standard_normal((3, 4, 2)).astype(np.float32)
    t = np.array([[0, 3], [1, -1], [2, 2]], np.int64)
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    got = _run("negative_log_likelihood_loss", x, t, w, reduction="none", ignore_index=-1)
    want = np.zeros((3, 2), np.float32)
    for n in range(3):
        for d in range(2):
            if t[n, d] != -1:
                want[n, d] = -x[n, t[n, d], d] * w[t[n, d]]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    mean = _run("negative_log_likelihood_loss", x, t, w, ignore_index=-1)
    wsum = sum(w[t[n, d]] for n in range(3) for d in range(2) if t[n, d] != -1)
    np.testing.assert_allclose(mean, want.sum() / wsum, rtol=1e-6)


def test_lrn_matches_windowed_sum():
    x = RNG.standard_normal((2, 6, 3, 3)).astype(np.float32)
    for size in (3, 4):
        sq = np.zeros_like(x)
        for c in range(6):
            lo, hi = max(0, c - (size - 1) // 2), min(6, c + (size - 1 - (size - 1) // 2) + 1)
            sq[:, c] = (x[:, lo:hi] ** 2).sum(1)
        want = x / (2.0 + (1e-3 / size) * sq) ** 0.75
        np.testing.assert_allclose(_run("lrn", x, size=size, alpha=1e-3, bias=2.0), want, rtol=1e-5)


# -- composites: decomposition == kernel ----------------------------------------------------------
def _decomposed(module):
    """Replace every composite op by its decomposition (one level, then recursively)."""
    changed = True
    while changed:
        changed = False
        for op in list(module.walk()):
            od = lookup(op.name)
            if od is not None and od.decompose is not None:
                b = Builder(op.parent, before=op)
                op.replace_with(list(od.decompose(b, op)))
                changed = True
    return module


def _missing_kernels(module):
    return sorted({op.name for op in module.walk() if not op.is_terminator and get_kernel(op.name) is None})


COMPOSITES = [
    ("softmax", [(2, 3, 5)], {"axis": 1}),
    ("log_softmax", [(2, 3, 5)], {"axis": -1}),
    ("layer_norm", [(2, 3, 5), (3, 5), (3, 5)], {"axis": 1, "epsilon": 1e-3}),
    ("layer_norm", [(2, 3, 5), (5,)], {}),
    ("rms_norm", [(2, 3, 5), (5,)], {"epsilon": 1e-4}),
    ("group_norm", [(2, 6, 3, 2), (6,), (6,)], {"num_groups": 3}),
    ("instance_norm", [(2, 3, 4, 4), (3,), (3,)], {}),
    ("batch_norm", [(2, 3, 4, 4), (3,), (3,), (3,), (3,)], {"epsilon": 1e-3}),
    ("lp_norm", [(3, 4)], {"axis": 1, "p": 2}),
    ("lp_norm", [(3, 4)], {"axis": 0, "p": 1}),
    ("mean_variance_norm", [(2, 3, 4, 4)], {}),
]


@pytest.mark.parametrize("name,shapes,attrs", COMPOSITES, ids=[f"{c[0]}{i}" for i, c in enumerate(COMPOSITES)])
def test_decomposition_matches_kernel(name, shapes, attrs):
    assert lookup(name).is_composite

    def build():
        gb = GraphBuilder()
        xs = [gb.input(f"x{i}", tensor("f32", *s)) for i, s in enumerate(shapes)]
        gb.output(gb.op(name, *xs, **attrs), "y")
        return gb.module()
    arrays = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    if name == "batch_norm":
        arrays[4] = np.abs(arrays[4]) + 0.1  # a variance
    dec = _decomposed(build())
    assert name not in dec.op_counts()
    dec.verify()
    missing = _missing_kernels(dec)
    assert not missing, f"the decomposition uses ops with no numpy kernel: {missing}"
    (want,) = gx.compile(build(), target="numpy", level=0)(*arrays)
    (got,) = gx.compile(dec, target="numpy", level=0)(*arrays)
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- ONNX import: old opsets upgraded to the newest semantics ------------------------------------
def _onnx_run(node, inputs, opset, out_ranks=(None,), inits=(), out_type=TensorProto.FLOAT,
              check=True):
    """Run one ONNX node; outputs are declared with unknown dims of the given ranks."""
    ins = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for k, a in enumerate(inputs)]
    outs = [helper.make_tensor_value_info(o, out_type, [None] * (r if r is not None else inputs[0].ndim))
            for o, r in zip(node.output, out_ranks)]
    g = helper.make_graph([node], "g", ins, outs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    exe = gx.compile(gx.import_model(m, check=check), target="numpy", level=0)
    return exe(*inputs)


def test_import_reduce_axes_attribute_old_opsets():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    (y,) = _onnx_run(helper.make_node("ReduceSum", ["i0"], ["y"], axes=[-1], keepdims=0), [x], 11, out_ranks=(2,))
    np.testing.assert_allclose(y, x.sum(-1), rtol=1e-5)
    (y,) = _onnx_run(helper.make_node("ReduceMean", ["i0"], ["y"], axes=[0, 2]), [x], 13)
    np.testing.assert_allclose(y, x.mean((0, 2), keepdims=True), rtol=1e-5)
    (y,) = _onnx_run(helper.make_node("ReduceMax", ["i0"], ["y"]), [x], 11)  # all axes
    np.testing.assert_allclose(y, x.max(keepdims=True))


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
def test_import_softmax_opset11_flattens_at_axis(op_type):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    flat = x.reshape(2, 12)
    e = np.exp(flat - flat.max(1, keepdims=True))
    sm = e / e.sum(1, keepdims=True)
    want = {"Softmax": sm, "LogSoftmax": np.log(sm),
            "Hardmax": np.eye(12, dtype=np.float32)[flat.argmax(1)]}[op_type].reshape(x.shape)
    (y,) = _onnx_run(helper.make_node(op_type, ["i0"], ["y"]), [x], 11)  # default axis 1
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    # axis = last: same as the new semantics, no reshape needed
    m = gx.import_model(helper.make_model(helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"], axis=2)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 3)]),
        opset_imports=[helper.make_opsetid("", 11)]))
    assert "reshape" not in m.op_counts()


def test_import_group_norm_18_per_group_scale():
    x = RNG.standard_normal((2, 6, 3)).astype(np.float32)
    s = np.array([1.0, 2.0, 3.0], np.float32)
    b = np.array([0.0, 1.0, -1.0], np.float32)
    inits = [onnx.numpy_helper.from_array(s, "s"), onnx.numpy_helper.from_array(b, "b")]
    (y,) = _onnx_run(helper.make_node("GroupNormalization", ["i0", "s", "b"], ["y"], num_groups=3),
                     [x], 18, inits=inits, check=False)  # the checker calls -18 deprecated
    g = x.reshape(2, 3, -1)
    norm = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    want = norm * np.repeat(s, 2)[:, None] + np.repeat(b, 2)[:, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_import_batchnorm_training_mode_outputs():
    x = RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)
    s, b = np.ones(3, np.float32) * 2, np.zeros(3, np.float32)
    mean, var = np.zeros(3, np.float32), np.ones(3, np.float32)
    node = helper.make_node("BatchNormalization", ["i0", "i1", "i2", "i3", "i4"], ["y", "rm", "rv"],
                            training_mode=1, momentum=0.8)
    y, rm, rv = _onnx_run(node, [x, s, b, mean, var], 15, out_ranks=(4, 1, 1))
    bm, bv = x.mean((0, 2, 3)), x.var((0, 2, 3))
    np.testing.assert_allclose(y, 2 * (x - bm[:, None, None]) / np.sqrt(bv[:, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, 0.2 * bm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, 0.8 + 0.2 * bv, rtol=1e-5)


def test_import_gemm_opset6_broadcast_flag_and_argmax_opset11():
    a, b, c = (RNG.standard_normal(s).astype(np.float32) for s in ((2, 3), (3, 4), (4,)))
    (y,) = _onnx_run(helper.make_node("Gemm", ["i0", "i1", "i2"], ["y"], broadcast=1, beta=0.5),
                     [a, b, c], 6)
    np.testing.assert_allclose(y, a @ b + 0.5 * c, rtol=1e-5, atol=1e-6)
    (y,) = _onnx_run(helper.make_node("ArgMax", ["i0"], ["y"], axis=-1, keepdims=0), [a], 11,
                     out_ranks=(1,), out_type=TensorProto.INT64)
    assert y.tolist() == a.argmax(-1).tolist()


def test_import_softmax_opset11_symbolic_dims_and_runtime_axes():
    """Non-static input: the 2-D coercion goes through flatten/shape/reshape; a reduction
    whose axes arrive at run time (opset 13) reads them in the kernel."""
    def model(node, opset, out_rank=3, extra_in=()):
        g = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])] + list(extra_in),
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"] + [None] * (out_rank - 1))])
        return gx.import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))
    m = model(helper.make_node("Softmax", ["x"], ["y"], axis=1), 11)
    assert str(m.graph.outputs[0].type) == "f32[N,3,4]"
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    (y,) = gx.compile(m, target="numpy", level=0)(x)
    flat = x.reshape(2, 12)
    e = np.exp(flat - flat.max(1, keepdims=True))
    np.testing.assert_allclose(y, (e / e.sum(1, keepdims=True)).reshape(x.shape), rtol=1e-5, atol=1e-7)
    m = model(helper.make_node("ReduceSum", ["x", "ax"], ["y"], keepdims=0), 13, 2,
              [helper.make_tensor_value_info("ax", TensorProto.INT64, [1])])
    assert str(m.graph.outputs[0].type) == "f32[N,?]"
    (s,) = gx.compile(m, target="numpy", level=0)(x, np.array([-2], np.int64))
    np.testing.assert_allclose(s, x.sum(1), rtol=1e-5)
