"""Regression tests for the IR-side findings of issue 13 (hardening): operand dtypes checked
by every op (1), rewrites that keep result types (8), window geometry (9), typed errors in
place of raw exceptions (10) and the ONNX importer's checks of node outputs (11).

Each test failed on the code before its fix."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

import galaxir as gx
from galaxir import errors
from galaxir.ir import DType, GraphBuilder, opdef, tensor

vi = oh.make_tensor_value_info


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _ort_refuses(model: onnx.ModelProto) -> bool:
    """Does onnxruntime refuse the model, when loading it or running it on ones?"""
    ort = pytest.importorskip("onnxruntime")
    feeds = {}
    for i in model.graph.input:
        tt = i.type.tensor_type
        shape = [max(d.dim_value, 1) for d in tt.shape.dim]
        feeds[i.name] = np.ones(shape, oh.tensor_dtype_to_np_dtype(tt.elem_type))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            sess.run(None, feeds)
    except Exception:
        return True
    return False


# -- finding 1: operand dtypes --------------------------------------------------------------------
def _branch(name: str, dtype: int) -> onnx.GraphProto:
    c = oh.make_tensor(f"{name}_v", dtype, [1], [1])
    return oh.make_graph([oh.make_node("Constant", [], [f"{name}_out"], value=c)], name, [],
                         [vi(f"{name}_out", dtype, [1])])


F, D, I64, I32 = TP.FLOAT, TP.DOUBLE, TP.INT64, TP.INT32

#: (case, nodes, inputs, output, opset, words the error must contain)
BAD_DTYPES = [
    ("concat", [oh.make_node("Concat", ["a", "b"], ["y"], axis=0, name="n")],
     [vi("a", I64, [2]), vi("b", F, [2])], vi("y", I64, [4]), 17, ["int64", "float32"]),
    ("gemm", [oh.make_node("Gemm", ["a", "b"], ["y"], name="n")],
     [vi("a", F, [2, 2]), vi("b", D, [2, 2])], vi("y", F, [2, 2]), 17, ["float32", "float64"]),
    ("gemm_c", [oh.make_node("Gemm", ["a", "b", "c"], ["y"], name="n")],
     [vi("a", F, [2, 2]), vi("b", F, [2, 2]), vi("c", D, [2])], vi("y", F, [2, 2]), 17,
     ["float32", "float64"]),
    ("conv", [oh.make_node("Conv", ["x", "w"], ["y"], name="n")],
     [vi("x", F, [1, 1, 3, 3]), vi("w", D, [1, 1, 1, 1])], vi("y", F, [1, 1, 3, 3]), 17,
     ["float32", "float64"]),
    ("batch_norm_scale_bias", [oh.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="n")],
     [vi("x", F, [1, 2, 2]), vi("s", F, [2]), vi("b", D, [2]), vi("m", F, [2]), vi("v", F, [2])],
     vi("y", F, [1, 2, 2]), 15, ["float32", "float64"]),
    ("batch_norm_opset14", [oh.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="n")],
     [vi("x", F, [1, 2, 2]), vi("s", D, [2]), vi("b", D, [2]), vi("m", F, [2]), vi("v", F, [2])],
     vi("y", F, [1, 2, 2]), 14, ["float32", "float64"]),
    ("layer_norm", [oh.make_node("LayerNormalization", ["x", "s"], ["y"], name="n")],
     [vi("x", F, [2, 3]), vi("s", D, [3])], vi("y", F, [2, 3]), 17, ["float32", "float64"]),
    ("instance_norm", [oh.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], name="n")],
     [vi("x", F, [1, 2, 3]), vi("s", D, [2]), vi("b", F, [2])], vi("y", F, [1, 2, 3]), 17,
     ["float32", "float64"]),
    ("scatter_nd", [oh.make_node("ScatterND", ["d", "i", "u"], ["y"], name="n")],
     [vi("d", F, [4]), vi("i", I64, [1, 1]), vi("u", D, [1])], vi("y", F, [4]), 17,
     ["float32", "float64"]),
    ("scatter_nd_indices", [oh.make_node("ScatterND", ["d", "i", "u"], ["y"], name="n")],
     [vi("d", F, [4]), vi("i", F, [1, 1]), vi("u", F, [1])], vi("y", F, [4]), 17,
     ["indices", "int64", "f32"]),
    ("range", [oh.make_node("Range", ["a", "b", "c"], ["y"], name="n")],
     [vi("a", F, []), vi("b", I64, []), vi("c", F, [])], vi("y", F, ["n"]), 17,
     ["int64", "float32"]),
    ("pad_value", [oh.make_node("Pad", ["x", "p", "v"], ["y"], name="n")],
     [vi("x", F, [2]), vi("p", I64, [2]), vi("v", D, [])], vi("y", F, ["n"]), 17,
     ["float32", "float64"]),
    ("pad_pads", [oh.make_node("Pad", ["x", "p"], ["y"], name="n")],
     [vi("x", F, [2]), vi("p", F, [2])], vi("y", F, ["n"]), 17, ["pads", "int64", "f32"]),
    ("gather_float_indices", [oh.make_node("Gather", ["x", "i"], ["y"], name="n")],
     [vi("x", F, [3]), vi("i", F, [2])], vi("y", F, [2]), 17, ["indices", "int32 or int64", "f32"]),
    ("if_float_cond", [oh.make_node("If", ["c"], ["y"], name="n", then_branch=_branch("t", F),
                                    else_branch=_branch("e", F))],
     [vi("c", F, [])], vi("y", F, [1]), 17, ["cond", "bool", "f32"]),
    ("where_cond", [oh.make_node("Where", ["c", "a", "b"], ["y"], name="n")],
     [vi("c", F, [2]), vi("a", F, [2]), vi("b", F, [2])], vi("y", F, [2]), 17, ["condition", "bool"]),
    ("reshape_shape", [oh.make_node("Reshape", ["x", "s"], ["y"], name="n")],
     [vi("x", F, [4]), vi("s", F, [1])], vi("y", F, ["n"]), 17, ["shape", "int64"]),
    ("matmul", [oh.make_node("MatMul", ["a", "b"], ["y"], name="n")],
     [vi("a", F, [2, 2]), vi("b", I64, [2, 2])], vi("y", F, [2, 2]), 17, ["float32", "int64"]),
    ("sum", [oh.make_node("Sum", ["a", "b", "c"], ["y"], name="n")],
     [vi("a", F, [2]), vi("b", F, [2]), vi("c", D, [2])], vi("y", F, [2]), 17, ["float32", "float64"]),
]


@pytest.mark.parametrize("case", BAD_DTYPES, ids=[c[0] for c in BAD_DTYPES])
def test_onnx_mismatched_operand_dtypes_are_refused(case):
    name, nodes, inputs, output, opset, words = case
    model = _model(nodes, inputs, [output], opset=opset)
    assert _ort_refuses(model), "onnxruntime accepts this model: it is not a bad case"
    for check in (True, False):
        with pytest.raises(errors.VerificationError) as e:
            gx.import_model(model, check=check)
        msg = str(e.value)
        assert "ONNX node 'n'" in msg, msg
        for w in words:
            assert w in msg, (w, msg)


def test_concat_of_mixed_dtypes_never_reaches_the_cpu_kernel():
    # the original crash: the cpu kernel sized every operand with the result's itemsize
    model = _model([oh.make_node("Concat", ["a", "b"], ["y"], axis=0, name="cat")],
                   [vi("a", I64, [2]), vi("b", F, [2])], [vi("y", I64, [4])])
    with pytest.raises(errors.VerificationError, match=r"ONNX node 'cat'.*inputs \(operand 1\) is float32 "
                                                       r"but inputs \(operand 0\) is int64"):
        gx.compile(model, target="cpu")


@pytest.mark.parametrize("xt,st,mt", [(TP.FLOAT16, F, F), (F, TP.FLOAT16, TP.FLOAT16)])
def test_batch_norm_with_its_own_parameter_dtypes_still_imports(xt, st, mt):
    """BatchNormalization-15 lets scale/B (T1) and mean/var (T2) differ from X (T):
    a valid model onnxruntime runs, so galaxir must too (it casts them to X's dtype)."""
    ort = pytest.importorskip("onnxruntime")
    model = _model([oh.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
                   [vi("x", xt, [1, 2, 3]), vi("s", st, [2]), vi("b", st, [2]), vi("m", mt, [2]),
                    vi("v", mt, [2])], [vi("y", xt, [1, 2, 3])], opset=15)
    npd = oh.tensor_dtype_to_np_dtype
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 2, 3)).astype(npd(xt)),
             "s": np.array([1.5, 2.0], npd(st)), "b": np.array([0.1, 0.2], npd(st)),
             "m": np.array([0.3, 0.1], npd(mt)), "v": np.array([1.0, 2.0], npd(mt))}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for target in ("numpy", "cpu"):
        out = gx.compile(model, target=target).run(feeds)["y"]
        assert out.dtype == ref.dtype
        np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), atol=2e-3)


def _builder_case(build):
    gb = GraphBuilder()
    return build(gb)


BUILDER_CASES = {
    "concat": lambda gb: gb.concat(gb.input("a", tensor("i64", 2)), gb.input("b", tensor("f32", 2)), axis=0),
    "gemm": lambda gb: gb.gemm(gb.input("a", tensor("f32", 2, 2)), gb.input("b", tensor("f64", 2, 2))),
    "conv": lambda gb: gb.conv(gb.input("x", tensor("f32", 1, 1, 3, 3)), gb.input("w", tensor("f32", 1, 1, 1, 1)),
                               gb.input("b", tensor("f16", 1))),
    "batch_norm": lambda gb: gb.batch_norm(*[gb.input(n, tensor(d, 2)) for n, d in
                                             (("x", "f32"), ("s", "f32"), ("b", "f32"), ("m", "f64"), ("v", "f32"))]),
    "layer_norm": lambda gb: gb.layer_norm(gb.input("x", tensor("f32", 2, 3)), gb.input("s", tensor("f16", 3))),
    "instance_norm": lambda gb: gb.instance_norm(*[gb.input(n, tensor(d, 1, 2)) for n, d in
                                                   (("x", "f32"), ("s", "f32"), ("b", "bf16"))]),
    "scatter_nd": lambda gb: gb.scatter_nd(gb.input("d", tensor("f32", 4)), gb.input("i", tensor("i32", 1, 1)),
                                           gb.input("u", tensor("f32", 1))),
    "range": lambda gb: gb.range(gb.input("a", tensor("i32")), gb.input("b", tensor("i64")),
                                 gb.input("c", tensor("i32"))),
    "pad": lambda gb: gb.pad(gb.input("x", tensor("f32", 2)), gb.constant(np.array([1, 1], np.int64)),
                             gb.input("v", tensor("i64"))),
    "gather": lambda gb: gb.gather(gb.input("x", tensor("f32", 3)), gb.input("i", tensor("f32", 2))),
    "slice": lambda gb: gb.slice(gb.input("x", tensor("f32", 3)), gb.constant(np.array([0], np.int32)),
                                 gb.constant(np.array([2], np.int64))),
    "if": lambda gb: gb.create("if", gb.input("c", tensor("i64")),
                               regions=[gb.region(body=lambda b: b.constant(np.float32(1))),
                                        gb.region(body=lambda b: b.constant(np.float32(2)))]),
}


@pytest.mark.parametrize("name", sorted(BUILDER_CASES))
def test_builder_refuses_mismatched_operand_dtypes(name):
    with pytest.raises(errors.ShapeInferenceError, match=r"op '[a-z_]+' .*operand \d"):
        _builder_case(BUILDER_CASES[name])


def test_verifier_refuses_mismatched_operand_dtypes_given_result_types():
    """An op created with explicit result types skips inference: the verifier checks it."""
    gb = GraphBuilder()
    a, b = gb.input("a", tensor("i64", 2)), gb.input("b", tensor("f32", 2))
    op = gb.create("concat", a, b, axis=0, result_types=[tensor("i64", 4)])
    gb.output(op.result, "y")
    m = gb.module()
    with pytest.raises(errors.VerificationError, match=r"op 'concat' #0: inputs \(operand 1\) is "
                                                       r"float32 but inputs \(operand 0\) is int64"):
        m.verify()


#: ops whose operand dtypes are independent of each other by their definition
INDEPENDENT_OPERANDS = {
    "pow": "the exponent may have any numeric type (ONNX T, T1)",
    "one_hot": "indices, depth and values each have their own type (ONNX T1, T2, T3)",
    "quantize_linear": "x, scale and zero point types differ by opset; the zero point sets the result",
    "sequence_map": "operands are sequences and tensors of any type",
}


def test_every_op_with_several_operands_declares_its_operand_types():
    missing = []
    for name, od in sorted(opdef.all_ops().items()):
        if name.startswith("test"):
            continue  # an op a test module declared (test.anything), not a built-in one
        if len(od.operands) >= 2 or any(o.endswith("*") for o in od.operands):
            if not od.types and name not in INDEPENDENT_OPERANDS and name not in ("return", "scan",
                                                                                  "fused_elementwise"):
                missing.append(name)
    assert not missing, f"ops without operand type declarations: {missing}"


def test_user_op_type_declarations():
    od = opdef.define("test_hardening.lookup", operands=["table", "indices", "default?"],
                      types={"table": "T", "default": "T", "indices": opdef.INDEX},
                      infer=lambda op: [op.operand_types[0]], replace=True)
    assert od.types["indices"] == opdef.INDEX
    gb = GraphBuilder()
    t = gb.input("t", tensor("f32", 3))
    gb.op("test_hardening.lookup", t, gb.input("i", tensor("i32", 2)))  # fine
    with pytest.raises(errors.ShapeInferenceError, match=r"default \(operand 2\) is float64 but "
                                                         r"table \(operand 0\) is float32"):
        gb.op("test_hardening.lookup", t, gb.input("j", tensor("i64", 2)), gb.input("d", tensor("f64")))
    with pytest.raises(errors.ShapeInferenceError, match=r"indices \(operand 1\) must be int32 or int64"):
        gb.op("test_hardening.lookup", t, gb.input("k", tensor("u8", 2)))
    with pytest.raises(ValueError, match="not one of"):
        opdef.define("test_hardening.bad", operands=["x"], types={"y": "T"}, replace=True)
    with pytest.raises(ValueError, match="type variable name"):
        opdef.define("test_hardening.bad", operands=["x"], types={"x": 3}, replace=True)


# -- finding 8: rewrites keep result types --------------------------------------------------------
def _pool_model(xshape, kernel, yshape, op="MaxPool", **attrs) -> onnx.ModelProto:
    return _model([oh.make_node(op, ["x"], ["y"], kernel_shape=kernel, **attrs)],
                  [vi("x", F, xshape)], [vi("y", F, yshape)])


@pytest.mark.parametrize("xshape,kernel,yshape", [
    ([1, 1, 0, 4], [1, 1], [1, 1, 0, 4]),   # raised PassError at O3
    ([1, 1, 0, 0], [1, 1], [1, 1, 0, 0]),
    ([1, 1, 4, 0], [1, 1], [1, 1, 4, 0]),
    ([1, 0, 3, 3], [2, 2], [1, 0, 2, 2]),
    ([0, 3, 3, 1], [2, 1], [0, 3, 2, 1]),
    ([1, 1, 1, 0], [1, 1], [1, 1, 1, 0]),
])
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_o3_layout_keeps_zero_size_shapes(xshape, kernel, yshape, target):
    model = _pool_model(xshape, kernel, yshape)
    x = np.zeros(xshape, np.float32)
    ref = gx.compile(model, target="numpy", level=0)(x)[0]
    assert ref.shape == tuple(yshape)
    m = gx.optimize(model, level=3, target="cpu", layout="NHWC")
    assert m.graph.outputs[0].type == tensor("f32", *yshape)
    out = gx.compile(m, target=target, level=0)(x)[0]
    assert out.shape == tuple(yshape)


def test_layout_transpose_to_reshape_uses_allowzero():
    """The transpose that only moves size-1 dims becomes a reshape; with a 0 in the shape it
    must say allowzero=1, or the 0 copies an input dim."""
    from galaxir.passes.layout import convert_to_nhwc
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 0, 0, 1))
    gb.output(gb.transpose(x, perm=(0, 3, 1, 2)), "y")
    m = gb.module()
    convert_to_nhwc(m)
    (op,) = [o for o in m.walk() if o.name == "reshape"]
    assert op.attr("allowzero") == 1
    assert m.graph.outputs[0].type == tensor("f32", 1, 1, 0, 0)
    m.verify()
    out = gx.compile(m, target="cpu", level=0)(np.zeros((1, 0, 0, 1), np.float32))[0]
    assert out.shape == (1, 1, 0, 0)


def test_rewriter_refuses_a_replacement_of_another_type():
    from galaxir.passes.rewrite import Rewriter, RewritePattern, apply_patterns_greedily

    class BadRule(RewritePattern):
        name = "bad-rule"
        root = "relu"

        def match_and_rewrite(self, op, rewriter):
            x = op.operands[0]
            y = rewriter.create("reshape", x, rewriter.constant(np.array([4, 1], np.int64))).result
            rewriter.replace_op(op, [y])
            return True

    gb = GraphBuilder()
    gb.output(gb.relu(gb.input("x", tensor("f32", 2, 2))), "y")
    m = gb.module()
    with pytest.raises(errors.PassError, match=r"bad-rule.*relu.*typed f32\[2,2\], with a value typed f32\[4,1\]"):
        apply_patterns_greedily(m, [BadRule()])
    with pytest.raises(errors.PassError, match="bad-rule"):
        rw = Rewriter()
        (relu,) = [o for o in m.walk() if o.name == "relu"]
        rw._begin(relu, "bad-rule")
        BadRule().match_and_rewrite(relu, rw)


# -- finding 9: window geometry ---------------------------------------------------------------------
_W = np.ones((1, 1, 2, 2), np.float32)


def _window_model(op, xshape, with_w=False, **attrs) -> onnx.ModelProto:
    inputs = ["x", "w"] if with_w else ["x"]
    inits = [onnx.numpy_helper.from_array(_W, "w")] if with_w else []
    return _model([oh.make_node(op, inputs, ["y"], name="win", **attrs)], [vi("x", F, xshape)],
                  [vi("y", F, [None] * len(xshape))], inits)


BAD_WINDOWS = [
    ("maxpool_window_too_big", "MaxPool", [1, 1, 2, 2], False, dict(kernel_shape=[5, 5]), "padded input"),
    ("lppool_window_too_big", "LpPool", [1, 1, 2, 2], False, dict(kernel_shape=[5, 5]), "padded input"),
    ("avgpool_window_too_big", "AveragePool", [1, 1, 3, 3], False, dict(kernel_shape=[2, 5]), "padded input"),
    ("conv_window_too_big", "Conv", [1, 1, 1, 1], True, dict(dilations=[2, 2]), "padded input"),
    ("maxpool_dilated_too_big", "MaxPool", [1, 1, 4, 4], False,
     dict(kernel_shape=[2, 2], dilations=[5, 1]), "padded input"),
    ("maxpool_negative_stride", "MaxPool", [1, 1, 4, 4], False, dict(kernel_shape=[2, 2], strides=[-1, 1]), "strides"),
    ("maxpool_zero_stride", "MaxPool", [1, 1, 4, 4], False, dict(kernel_shape=[2, 2], strides=[0, 1]), "strides"),
    ("conv_negative_stride", "Conv", [1, 1, 4, 4], True, dict(strides=[1, -2]), "strides"),
    ("convT_negative_stride", "ConvTranspose", [1, 1, 4, 4], True, dict(strides=[-1, 1]), "strides"),
    ("maxpool_dilation_0", "MaxPool", [1, 1, 4, 4], False, dict(kernel_shape=[2, 2], dilations=[0, 1]), "dilations"),
    ("conv_dilation_0", "Conv", [1, 1, 4, 4], True, dict(dilations=[1, 0]), "dilations"),
    ("conv_group_0", "Conv", [1, 1, 4, 4], True, dict(group=0), "group"),
    ("convT_group_0", "ConvTranspose", [1, 1, 4, 4], True, dict(group=0), "group"),
    ("maxpool_kernel_0", "MaxPool", [1, 1, 4, 4], False, dict(kernel_shape=[0, 2]), "kernel_shape"),
    ("conv_negative_pad", "Conv", [1, 1, 4, 4], True, dict(pads=[-1, 0, 0, 0]), "pads"),
    ("avgpool_pad_equals_kernel", "AveragePool", [1, 1, 4, 4], False,
     dict(kernel_shape=[2, 2], pads=[2, 2, 2, 2]), "padding"),
    ("avgpool_pad_exceeds_kernel", "AveragePool", [1, 1, 4, 4], False,
     dict(kernel_shape=[2, 2], pads=[0, 0, 3, 0]), "padding"),
    ("avgpool_pad_equals_kernel_cip", "AveragePool", [1, 1, 4, 4], False,
     dict(kernel_shape=[2, 2], pads=[2, 2, 2, 2], count_include_pad=1), "padding"),
    ("maxpool_pad_equals_kernel", "MaxPool", [1, 1, 4, 4], False,
     dict(kernel_shape=[2, 2], pads=[2, 0, 0, 0]), "padding"),
    ("maxpool_bogus_auto_pad", "MaxPool", [1, 1, 4, 4], False, dict(kernel_shape=[2, 2], auto_pad="BOGUS"), "auto_pad"),
    ("avgpool_bogus_auto_pad", "AveragePool", [1, 1, 4, 4], False, dict(kernel_shape=[2, 2], auto_pad="same"), "auto_pad"),
    ("conv_bogus_auto_pad", "Conv", [1, 1, 4, 4], True, dict(auto_pad="BOGUS"), "auto_pad"),
    ("convT_bogus_auto_pad", "ConvTranspose", [1, 1, 4, 4], True, dict(auto_pad="BOGUS"), "auto_pad"),
]


@pytest.mark.parametrize("case", BAD_WINDOWS, ids=[c[0] for c in BAD_WINDOWS])
def test_bad_window_geometry_is_a_verification_error(case):
    _, op, xshape, with_w, attrs, word = case
    model = _window_model(op, xshape, with_w, **attrs)
    assert _ort_refuses(model)
    with pytest.raises(errors.VerificationError) as e:
        gx.import_model(model, check=False)
    assert "ONNX node 'win'" in str(e.value) and word in str(e.value), str(e.value)


GOOD_WINDOWS = [
    ("maxpool_window_fits_with_pads", "MaxPool", [1, 1, 2, 2], False, dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2])),
    ("maxpool_pad_below_kernel", "MaxPool", [1, 1, 2, 2], False, dict(kernel_shape=[3, 3], pads=[1, 1, 0, 0])),
    ("avgpool_pad_below_kernel", "AveragePool", [1, 1, 3, 3], False, dict(kernel_shape=[3, 3], pads=[2, 2, 2, 2])),
    ("maxpool_window_one_too_big", "MaxPool", [1, 1, 2, 3], False, dict(kernel_shape=[3, 3])),
    ("maxpool_dilated_one_too_big", "MaxPool", [1, 1, 4, 4], False, dict(kernel_shape=[2, 2], dilations=[4, 1])),
    ("conv_pads_beyond_kernel", "Conv", [1, 1, 4, 4], True, dict(pads=[3, 3, 3, 3])),
    ("conv_stride_beyond_input", "Conv", [1, 1, 3, 3], True, dict(strides=[5, 5])),
]


@pytest.mark.parametrize("case", GOOD_WINDOWS, ids=[c[0] for c in GOOD_WINDOWS])
def test_valid_window_edges_still_run_like_onnxruntime(case):
    ort = pytest.importorskip("onnxruntime")
    _, op, xshape, with_w, attrs = case
    model = _window_model(op, xshape, with_w, **attrs)
    x = np.random.default_rng(1).standard_normal(xshape).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for target in ("numpy", "cpu"):
        out = gx.compile(model, target=target)(x)[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_dilated_same_pool_with_pads_beyond_the_kernel_is_valid():
    """SAME padding of a dilated window may exceed the kernel size (not its span): valid."""
    model = _window_model("MaxPool", [1, 1, 5, 5], kernel_shape=[2, 2], dilations=[3, 3],
                          auto_pad="SAME_UPPER")
    x = np.random.default_rng(2).standard_normal((1, 1, 5, 5)).astype(np.float32)
    ref = gx.compile(model, target="numpy")(x)[0]
    assert ref.shape == (1, 1, 5, 5)   # ceil(5 / 1), as the spec says
    np.testing.assert_array_equal(gx.compile(model, target="cpu")(x)[0], ref)


def test_builder_refuses_bad_windows_at_creation():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 1, 2, 2))
    with pytest.raises(errors.ShapeInferenceError, match="padded input"):
        gb.max_pool(x, kernel_shape=(5, 5), num_results=1)
    with pytest.raises(errors.ShapeInferenceError, match="strides"):
        gb.average_pool(x, kernel_shape=(1, 1), strides=(1, -1))
    with pytest.raises(errors.ShapeInferenceError, match="padding"):
        gb.average_pool(x, kernel_shape=(1, 1), pads=(1, 0, 0, 0))
    w = gb.constant(np.ones((2, 1, 1, 1), np.float32))
    with pytest.raises(errors.VerificationError, match="group"):
        gb.output(gb.conv(x, w, group=0), "y")
        gb.module().verify()


def test_window_out_dim_refuses_a_window_that_does_not_fit():
    from galaxir.ir.ops.nn import window_out_dim
    assert window_out_dim(2, 3, 1, 1, 1, 0) == 1
    assert window_out_dim(2, 3, 1, 1, 0, 0) == 0      # the spec's formula: an empty result
    assert window_out_dim(0, 1, 1, 1, 0, 0) == 0      # an empty input gives an empty output
    with pytest.raises(ValueError, match="padded input"):
        window_out_dim(2, 5, 1, 1, 0, 0)


def test_symbolic_input_too_small_at_run_time_is_an_execution_error():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 1, "H", "W"))
    gb.output(gb.max_pool(x, kernel_shape=(3, 3), num_results=1), "y")
    exe = gx.compile(gb.module(), target="numpy")
    assert exe(np.zeros((1, 1, 3, 3), np.float32))[0].shape == (1, 1, 1, 1)
    assert exe(np.zeros((1, 1, 2, 2), np.float32))[0].shape == (1, 1, 0, 0)
    with pytest.raises(errors.ExecutionError, match="padded input"):
        exe(np.zeros((1, 1, 1, 1), np.float32))


# -- finding 10: galaxir errors, not raw exceptions -----------------------------------------------
def _sparse_model(values, indices, dims) -> onnx.ModelProto:
    vals = oh.make_tensor("sp", F, [len(values)], values)
    idx = onnx.numpy_helper.from_array(np.asarray(indices, np.int64), "idx")
    graph = oh.make_graph([oh.make_node("Identity", ["sp"], ["y"])], "g", [],
                          [vi("y", F, [None] * len(dims))],
                          sparse_initializer=[oh.make_sparse_tensor(vals, idx, dims)])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize("values,indices,dims,words", [
    ([1.0, 2.0], [0, 100], [4], "outside dims"),
    ([1.0, 2.0], [-1, 2], [4], "outside dims"),
    ([1.0], [[0, 5]], [2, 3], "outside dims"),
    ([1.0, 2.0], [[0, 1]], [2, 3], "coordinates"),
    ([1.0, 2.0], [0], [4], "indices for 2 values"),
    ([1.0], [0], [2 ** 40, 2 ** 20], "dense form"),
])
def test_bad_sparse_initializers_are_import_errors(values, indices, dims, words):
    with pytest.raises(errors.ModelImportError, match=f"sparse tensor 'sp'.*{words}"):
        gx.import_model(_sparse_model(values, indices, dims), check=False)


def test_good_sparse_initializer_still_imports():
    m = gx.import_model(_sparse_model([1.0, 2.0], [[0, 1], [1, 2]], [2, 3]), check=False)
    (y,) = gx.compile(m, target="numpy")()
    np.testing.assert_array_equal(y, [[0, 1, 0], [0, 0, 2]])


@pytest.mark.parametrize("where", ["input", "output", "value_info", "sequence"])
def test_unknown_element_type_is_an_import_error(where):
    x_t = 99 if where == "input" else F
    y_t = 99 if where == "output" else F
    vinfo = [vi("x", 99, [2])] if where == "value_info" else []
    graph = oh.make_graph([oh.make_node("Identity", ["x"], ["y"])], "g", [vi("x", x_t, [2])],
                          [vi("y", y_t, [2])], value_info=vinfo)
    if where == "sequence":
        graph.output[0].type.CopyFrom(oh.make_sequence_type_proto(oh.make_tensor_type_proto(99, [2])))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    with pytest.raises(errors.ModelImportError, match="element type 99"):
        gx.import_model(model, check=False)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_bad_runtime_feeds_are_input_validation_errors(target):
    model = _model([oh.make_node("Identity", ["x"], ["y"])], [vi("x", F, [2])], [vi("y", F, [2])])
    exe = gx.compile(model, target=target)
    bad = [
        lambda: exe.run({"x": [[1.0], [1.0, 2.0]]}),     # ragged
        lambda: exe([[1.0], [1.0, 2.0]]),
        lambda: exe.run({"x": ["a", "b"]}),              # strings for numbers
        lambda: exe.run({"x": "ab"}),
        lambda: exe.run([np.ones(2, np.float32)]),       # a list, not a dict
        lambda: exe.run(np.ones(2, np.float32)),
    ]
    for call in bad:
        with pytest.raises(errors.InputValidationError):
            call()
    assert np.array_equal(exe.run({"x": [1.0, 2.0]})["y"], [1.0, 2.0])


def test_string_inputs_must_hold_strings():
    model = _model([oh.make_node("Identity", ["x"], ["y"])], [vi("x", TP.STRING, [2])],
                   [vi("y", TP.STRING, [2])])
    exe = gx.compile(model, target="numpy")
    assert list(exe.run({"x": ["a", "b"]})["y"]) == ["a", "b"]
    for feed in ([["a"], ["b", "c"]], [1, 2], np.array([b"a", 3], dtype=object)):
        with pytest.raises(errors.InputValidationError, match="input 'x'"):
            exe.run({"x": feed})


def test_reshape_of_a_zero_size_tensor_to_an_impossible_shape_is_refused():
    model = _model([oh.make_node("Reshape", ["x", "s"], ["y"], name="r")], [vi("x", F, [0, 2])],
                   [vi("y", F, [None] * 3)],
                   [onnx.numpy_helper.from_array(np.array([0, 2 ** 62, 2 ** 62], np.int64), "s")])
    with pytest.raises(errors.VerificationError, match=r"ONNX node 'r'.*no array can have that shape"):
        gx.import_model(model)
    # computed at run time: an ExecutionError on both backends
    gb = GraphBuilder()
    x, s = gb.input("x", tensor("f32", "N", 2)), gb.input("s", tensor("i64", 3))
    gb.output(gb.reshape(x, s), "y")
    for target in ("numpy", "cpu"):
        with pytest.raises(errors.ExecutionError):
            gx.compile(gb.module(), target=target)(np.zeros((0, 2), np.float32),
                                                   np.array([0, 2 ** 62, 2 ** 62], np.int64))


# -- finding 10: deep nesting, one limit everywhere -------------------------------------------------
def _nested_if(levels: int):
    """``levels`` Ifs, each in the then-branch of the one before."""
    gb = GraphBuilder()
    c, x = gb.input("c", tensor("bool")), gb.input("x", tensor("f32", 2))

    def branch(level):
        def fill(b):
            if level == levels:
                return b.neg(x)
            return b.create("if", c, regions=[gb.region(body=branch(level + 1)),
                                              gb.region(body=lambda e: e.relu(x))]).results[0]
        return fill
    gb.output(branch(0)(gb), "y")
    return gb.module()


def _nested_if_text(levels: int) -> str:
    head = "module @main {\nfunc @main(%c: bool[], %x: f32[2]) -> (y: f32[2]) {\n"
    body = "%v0 = neg(%x) : (f32[2])\nreturn %v0\n"
    for i in range(1, levels + 1):
        body = (f"%v{i} = if(%c) : (f32[2]) ({{^()\n{body}}}, {{^()\n%e{i} = relu(%x) : (f32[2])\n"
                f"return %e{i}\n}})\nreturn %v{i}\n")
    return head + body + "}\n}\n"


def test_nesting_at_the_limit_works_everywhere(tmp_path):
    from galaxir.ir.core import MAX_NESTING
    m = _nested_if(MAX_NESTING)
    m.verify()
    assert gx.parse(m.to_text()) == m
    assert gx.parse(_nested_if_text(MAX_NESTING)).num_ops == 2 * MAX_NESTING + 1
    assert m.clone() == m
    args = (np.array(True), np.array([1.0, -2.0], np.float32))
    for target, level in (("numpy", 1), ("cpu", 3)):
        out = gx.compile(gx.optimize(m, level=level, target=target), target=target, level=0)(*args)[0]
        np.testing.assert_array_equal(out, [-1.0, 2.0])
    gx.save(m, tmp_path / "deep.gxm")
    assert gx.load(tmp_path / "deep.gxm") == m


def test_nesting_past_the_limit_is_refused_everywhere(tmp_path):
    from galaxir.ir.core import MAX_NESTING
    m = _nested_if(MAX_NESTING + 1)
    with pytest.raises(errors.VerificationError, match=f"at most {MAX_NESTING} levels"):
        m.verify()
    with pytest.raises(errors.ParseError, match=f"more than {MAX_NESTING} levels"):
        gx.parse(m.to_text())
    with pytest.raises(errors.VerificationError, match=f"at most {MAX_NESTING} levels"):
        m.clone()
    for target in ("numpy", "cpu"):
        with pytest.raises(errors.VerificationError, match=f"at most {MAX_NESTING} levels"):
            gx.compile(m, target=target)
    with pytest.raises(errors.VerificationError, match=f"at most {MAX_NESTING} levels"):
        gx.optimize(m, level=1)
    with pytest.raises(errors.FormatError, match=f"at most {MAX_NESTING} levels"):
        gx.save(m, tmp_path / "deep.gxm")
    assert not (tmp_path / "deep.gxm").exists()


@pytest.mark.parametrize("levels", [300, 1000])
def test_very_deep_structures_fail_clearly_not_with_recursion_errors(levels):
    with pytest.raises(errors.ParseError, match="levels deep"):
        gx.parse(_nested_if_text(levels))
    deep_type = "seq<" * levels + "f32[2]" + ">" * levels
    with pytest.raises(errors.ParseError, match="types nest"):
        gx.parse(f"module @main {{\nfunc @main(%x: {deep_type}) -> (y: {deep_type}) {{\nreturn %x\n}}\n}}\n")
    deep_list = "[" * levels + "1" + "]" * levels
    with pytest.raises(errors.ParseError, match="attribute lists nest"):
        gx.parse("module @main {\nfunc @main(%x: f32[2]) -> (y: f32[2]) {\n"
                 f"%y = identity(%x) {{a = {deep_list}}} : (f32[2])\nreturn %y\n}}\n}}\n")
    if levels < 500:  # (building it takes the test's own recursion)
        with pytest.raises(errors.VerificationError):
            gx.compile(_nested_if(levels), target="cpu")


def _nested_if_onnx(levels: int) -> onnx.ModelProto:
    """``levels`` nested If nodes, built in place (a protobuf copy refuses ~33 levels)."""
    model = onnx.ModelProto(ir_version=8)
    model.opset_import.add(domain="", version=17)
    g = model.graph
    g.name = "main"
    g.input.extend([vi("c", TP.BOOL, []), vi("x", F, [2])])
    g.output.extend([vi("o0", F, [2])])
    for d in range(levels):
        node = g.node.add(op_type="If", input=["c"], output=[f"o{d}"], name=f"if{d}")
        then_a = node.attribute.add(name="then_branch", type=onnx.AttributeProto.GRAPH)
        else_a = node.attribute.add(name="else_branch", type=onnx.AttributeProto.GRAPH)
        else_a.g.name = f"e{d}"
        else_a.g.node.add(op_type="Neg", input=["x"], output=[f"e{d}"])
        else_a.g.output.extend([vi(f"e{d}", F, [2])])
        g = then_a.g
        g.name = f"t{d}"
        g.output.extend([vi(f"o{d + 1}", F, [2])])
    g.node.add(op_type="Identity", input=["x"], output=[f"o{levels}"])
    return model


def test_onnx_nesting_limit():
    from galaxir.ir.core import MAX_NESTING
    m = gx.import_model(_nested_if_onnx(MAX_NESTING), check=False)
    args = (np.array(True), np.array([1.0, -2.0], np.float32))
    np.testing.assert_array_equal(gx.compile(m, target="numpy")(*args)[0], [1.0, -2.0])
    for levels in (MAX_NESTING + 1, 1000):
        with pytest.raises(errors.ModelImportError, match=f"more than {MAX_NESTING} levels"):
            gx.import_model(_nested_if_onnx(levels), check=False)
    model = _model([oh.make_node("Identity", ["x"], ["y"])], [], [vi("y", F, [2])])
    t = model.graph.input.add(name="x").type
    for _ in range(200):  # built in place: a protobuf copy refuses this depth
        t = t.sequence_type.elem_type
    t.tensor_type.elem_type = F
    with pytest.raises(errors.ModelImportError, match="graph input 'x'.*types nest more than"):
        gx.import_model(model, check=False)


# -- finding 11: the ONNX importer checks node outputs and declared types ---------------------------
_X = vi("x", F, [2])


def _relu_neg(vinfo=()) -> onnx.ModelProto:
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["t"], name="a"),
                           oh.make_node("Neg", ["t"], ["y"], name="b")], "g", [_X],
                          [vi("y", F, [2])], value_info=list(vinfo))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


BAD_GRAPHS = [
    ("duplicate_node_outputs", [oh.make_node("Relu", ["x"], ["y"], name="a"),
                                oh.make_node("Neg", ["x"], ["y"], name="b")],
     [_X], [vi("y", F, [2])], [], r"'y' is defined twice.*node 'b'"),
    ("node_output_shadows_input", [oh.make_node("Relu", ["x"], ["x"], name="a")],
     [_X], [vi("x", F, [2])], [], r"'x' is defined twice.*graph input"),
    ("node_output_shadows_initializer", [oh.make_node("Relu", ["x"], ["w"], name="a")],
     [_X], [vi("w", F, [2])], [onnx.numpy_helper.from_array(np.ones(2, np.float32), "w")],
     r"'w' is defined twice.*initializer"),
    ("output_dtype_contradicts", [oh.make_node("Relu", ["x"], ["y"], name="a")],
     [_X], [vi("y", I64, [2])], [], r"graph output 'y' is declared i64\[2\] but the graph computes f32\[2\]"),
    ("output_shape_contradicts", [oh.make_node("Relu", ["x"], ["y"], name="a")],
     [_X], [vi("y", F, [3])], [], r"graph output 'y' is declared f32\[3\] but the graph computes f32\[2\]"),
    ("output_rank_contradicts", [oh.make_node("Relu", ["x"], ["y"], name="a")],
     [_X], [vi("y", F, [2, 1])], [], r"graph output 'y' is declared f32\[2,1\]"),
    ("extra_input", [oh.make_node("Relu", ["x", "x"], ["y"], name="a")],
     [_X], [vi("y", F, [2])], [], r"ONNX node 'a' \(Relu\) has 2 inputs; Relu-14 takes 1"),
    ("extra_empty_input", [oh.make_node("Relu", ["x", ""], ["y"], name="a")],
     [_X], [vi("y", F, [2])], [], r"ONNX node 'a' \(Relu\) has 2 inputs; Relu-14 takes 1"),
    ("extra_gemm_input", [oh.make_node("Gemm", ["m", "m", "m", "m"], ["y"], name="a")],
     [vi("m", F, [2, 2])], [vi("y", F, [2, 2])], [], r"has 4 inputs; Gemm-13 takes 2 to 3"),
    ("missing_input", [oh.make_node("Add", ["x"], ["y"], name="a")],
     [_X], [vi("y", F, [2])], [], r"has 1 inputs; Add-14 takes 2"),
    ("extra_output", [oh.make_node("Relu", ["x"], ["y", "z"], name="a")],
     [_X], [vi("y", F, [2])], [], r"has 2 outputs; Relu-14 has 1"),
]


@pytest.mark.parametrize("case", BAD_GRAPHS, ids=[c[0] for c in BAD_GRAPHS])
def test_importer_refuses_inconsistent_graphs(case):
    _, nodes, inputs, outputs, inits, pattern = case
    model = _model(nodes, inputs, outputs, inits)
    with pytest.raises(errors.ModelImportError, match=pattern):
        gx.import_model(model, check=False)


def test_value_info_dtype_must_match_the_computed_one():
    with pytest.raises(errors.ModelImportError, match=r"'t'.*declared i64\[2\] in value_info.*f32\[2\]"):
        gx.import_model(_relu_neg([vi("t", I64, [2])]), check=False)
    # a stale shape in value_info is a hint that did not fit: ignored, as onnxruntime does
    m = gx.import_model(_relu_neg([vi("t", F, [5])]), check=False)
    assert str(m.graph.outputs[0].type) == "f32[2]"


def test_declared_types_that_agree_still_refine():
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [vi("x", F, ["N"])],
                          [vi("y", F, [3])])
    m = gx.import_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    assert str(m.graph.outputs[0].type) == "f32[3]"


def test_subgraph_output_contradiction_is_refused():
    then_g = oh.make_graph([oh.make_node("Relu", ["x"], ["t"])], "then", [], [vi("t", I64, [2])])
    else_g = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", F, [2])])
    model = _model([oh.make_node("If", ["c"], ["y"], name="if", then_branch=then_g, else_branch=else_g)],
                   [vi("c", TP.BOOL, []), _X], [vi("y", F, [2])])
    with pytest.raises(errors.ModelImportError, match=r"graph output 't' is declared i64\[2\]"):
        gx.import_model(model, check=False)


def test_affine_grid_with_a_computed_size_has_the_right_rank():
    # found by the output-type check: the rule gave rank 3 for a 2-D grid of rank 4
    gb = GraphBuilder()
    theta, size = gb.input("theta", tensor("f32", 2, 2, 3)), gb.input("size", tensor("i64", 4))
    assert str(gb.affine_grid(theta, size).type) == "f32[?,?,?,2]"


def test_onnx_export_of_nesting_protobuf_refuses_is_a_galaxir_error():
    """galaxir nests 64 deep; protobuf refuses about 30 nested subgraphs: a FormatError,
    not protobuf's DecodeError."""
    from galaxir.errors import FormatError
    from galaxir.frontends.onnx.exporter import export_onnx
    assert export_onnx(_nested_if(8)).graph.node
    with pytest.raises(FormatError, match="nested deeper than protobuf accepts"):
        export_onnx(_nested_if(40))
