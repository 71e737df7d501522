"""The cuda backend without a GPU: every kernel it generates for the ONNX node suite and
the light model zoo compiles with NVRTC for sm_80 and sm_90, the lowering decisions
(cuBLAS vs generated GEMM, im2col vs direct conv, fused attention, numpy fallback) hold,
and compiling for a machine without a CUDA driver fails with a clear galaxir error.

The default node-suite check compiles one kernel per *skeleton* (the source with its
numeric constants blanked: kernels that differ only in shapes) with NVVM optimization off,
which keeps it to seconds; ``-m slow`` compiles every distinct kernel with the runtime's
full options."""
from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC (the 'cuda' extra) is not installed")

import galaxir as gx  # noqa: E402
from galaxir.backends.cuda import kernels as K  # noqa: E402
from galaxir.backends.cuda import nvrtc  # noqa: E402
from galaxir.backends.cuda.lower import Fallback, Launch, lower_for_shapes  # noqa: E402
from galaxir.errors import CompileError  # noqa: E402
from galaxir.ir.types import DType  # noqa: E402
from galaxir.testing import cuda_sweep  # noqa: E402

FAST = ("-Xnvvm", "-opt=0")


def _compile_all(kernels, fast: bool):
    opts = nvrtc.OPTIONS
    try:
        if fast:
            nvrtc.OPTIONS = opts + FAST
        for arch in nvrtc.ARCHS:
            ptx = nvrtc.compile_ptx(kernels, arch)
            for k in kernels:
                assert f".entry {k.name}".encode() in ptx, k.name
    finally:
        nvrtc.OPTIONS = opts


def _skeletons(kernels):
    out = {}
    for k in kernels:
        out.setdefault(re.sub(r"\d+", "0", k.body), k)
    return list(out.values())


@pytest.fixture(scope="module")
def node_suite():
    return cuda_sweep.node_suite_kernels()


def test_node_suite_kernels_compile(node_suite):
    kernels, placed = node_suite
    errors = {n: p[1] for n, p in placed.items() if p[0] == "error"}
    assert not errors, f"lowering failed: {list(errors.items())[:5]}"
    kinds = {k.kind for k in kernels.values()}
    assert {"elementwise", "reduce", "softmax", "layer_norm", "transpose", "concat", "gather",
            "max_pool", "average_pool", "conv", "arg_reduce", "slice"} <= kinds
    assert len(kernels) > 600
    _compile_all(_skeletons(kernels.values()), fast=True)


@pytest.mark.slow
def test_node_suite_every_kernel_compiles_fully_optimized(node_suite):
    _compile_all(list(node_suite[0].values()), fast=False)


@pytest.mark.parametrize("path", cuda_sweep.zoo_paths(), ids=lambda p: p.stem)
def test_zoo_kernels_compile(path):
    import onnx
    model = onnx.load(str(path))
    ks, low = cuda_sweep.kernels_of_model(model, level=2)
    assert ks
    off = [(op.name, why) for op, w, why in low.placement if w != "cuda"]
    assert not off, off  # every op of the nine models runs on the device
    _compile_all(ks, fast=False)
    # the device arena for it, laid out (and validated) by the shared memory planner
    from galaxir.backends.cuda.runtime import plan_arena
    ap = plan_arena(low.module, low)
    assert 0 < ap.plan.arena_bytes < ap.plan.naive_bytes


# -- lowering decisions ---------------------------------------------------------------------------
def _lower(build, shapes, level=2):
    from onnx import TensorProto, helper
    nodes, ins, outs, inits = build(helper, TensorProto)
    g = helper.make_graph(nodes, "g", ins, outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m = gx.import_model(model)
    if level:
        m = gx.optimize(m, level=level, target="cuda", fold_max_growth=float("inf"))
    return lower_for_shapes(m, shapes)


def _conv_model(c, m, k, hw, relu=True, dtype=np.float32):
    def build(helper, TP):
        w = helper.make_tensor("w", TP.FLOAT, [m, c, k, k], np.ones(m * c * k * k, np.float32))
        b = helper.make_tensor("b", TP.FLOAT, [m], np.zeros(m, np.float32))
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[k // 2] * 4)]
        if relu:
            nodes.append(helper.make_node("Relu", ["y"], ["z"]))
        return (nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                [helper.make_tensor_value_info("z" if relu else "y", TP.FLOAT, [1, m, hw, hw])], [w, b])
    return build


def test_large_conv_goes_through_im2col_and_cublas_with_fused_epilogue():
    low = _lower(_conv_model(64, 64, 3, 56), {"x": (1, 64, 56, 56)})
    kinds = [type(a).__name__ + ":" + (a.kernel.kind if isinstance(a, Launch) else "") for a in low.actions]
    assert kinds == ["Launch:im2col", "Blas:", "Launch:epilogue"], kinds
    ep = low.actions[-1].kernel.source
    assert "< 0.f ? 0.f" in ep  # the ReLU is in the epilogue
    _compile_all(low.kernels(), fast=False)


def test_pointwise_conv_skips_im2col_and_small_conv_is_direct():
    low = _lower(_conv_model(64, 128, 1, 28), {"x": (1, 64, 28, 28)})
    assert [type(a).__name__ for a in low.actions][:1] == ["Blas"]
    low = _lower(_conv_model(3, 4, 3, 8), {"x": (1, 3, 8, 8)})
    assert [a.kernel.kind for a in low.actions if isinstance(a, Launch)] == ["conv"]
    assert len(low.actions) == 1  # bias and relu fused into the direct kernel
    _compile_all(low.kernels(), fast=False)


def _matmul_model(dt_onnx):
    def build(helper, TP):
        return ([helper.make_node("MatMul", ["a", "b"], ["y"])],
                [helper.make_tensor_value_info("a", dt_onnx, [2, 8, 16]),
                 helper.make_tensor_value_info("b", dt_onnx, [16, 4])],
                [helper.make_tensor_value_info("y", dt_onnx, [2, 8, 4])], [])
    return build


def test_matmul_uses_cublas_for_f32_f16_and_the_tiled_kernel_for_bf16():
    from onnx import TensorProto as TP
    for dt in (TP.FLOAT, TP.FLOAT16):
        low = _lower(_matmul_model(dt), {"a": (2, 8, 16), "b": (16, 4)}, level=0)
        assert [type(a).__name__ for a in low.actions] == ["Blas"]
    low = _lower(_matmul_model(TP.BFLOAT16), {"a": (2, 8, 16), "b": (16, 4)}, level=0)
    (act,) = low.actions
    assert isinstance(act, Launch) and act.kernel.kind == "gemm"
    assert "gx_b2f" in act.kernel.source and "gx_f2b" in act.kernel.source
    _compile_all(low.kernels(), fast=False)


def test_attention_is_one_fused_kernel_with_its_mask():
    def build(helper, TP):
        scale = helper.make_tensor("s", TP.FLOAT, [], [0.125])
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["qk"]),
                 helper.make_node("Mul", ["qk", "s"], ["qks"]),
                 helper.make_node("Add", ["qks", "mask"], ["qkm"]),
                 helper.make_node("Softmax", ["qkm"], ["p"], axis=-1),
                 helper.make_node("MatMul", ["p", "v"], ["o"])]
        f = lambda n, s: helper.make_tensor_value_info(n, TP.FLOAT, s)  # noqa: E731
        return (nodes, [f("q", [2, 4, 16, 64]), f("k", [2, 4, 16, 64]), f("v", [2, 4, 16, 64]),
                        f("mask", [2, 1, 1, 16])], [f("o", [2, 4, 16, 64])], [scale])
    low = _lower(build, {"q": (2, 4, 16, 64), "k": (2, 4, 16, 64), "v": (2, 4, 16, 64),
                         "mask": (2, 1, 1, 16)})
    kinds = [a.kernel.kind for a in low.actions if isinstance(a, Launch)]
    assert "sdpa" in kinds and "softmax" not in kinds, kinds
    _compile_all(low.kernels(), fast=False)


def test_ops_without_a_kernel_fall_back_and_are_reported():
    from galaxir.backends.cuda.runtime import placement_report

    def build(helper, TP):
        return ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("CumSum", ["r", "ax"], ["y"])],
                [helper.make_tensor_value_info("x", TP.FLOAT, [4, 5])],
                [helper.make_tensor_value_info("y", TP.FLOAT, [4, 5])],
                [helper.make_tensor("ax", TP.INT64, [], [1])])
    low = _lower(build, {"x": (4, 5)}, level=0)
    assert isinstance(low.actions[-1], Fallback) and low.actions[-1].op.name == "cumsum"
    rep = placement_report(low)
    assert "cumsum: 1" in rep and "relu [elementwise]: 1" in rep


def test_fused_elementwise_chain_is_one_kernel_with_broadcasting():
    def build(helper, TP):
        f = lambda n, s: helper.make_tensor_value_info(n, TP.FLOAT, s)  # noqa: E731
        return ([helper.make_node("Add", ["x", "b"], ["t"]), helper.make_node("Sigmoid", ["t"], ["u"]),
                 helper.make_node("Mul", ["u", "x"], ["y"])],
                [f("x", [2, 3, 4]), f("b", [3, 1])], [f("y", [2, 3, 4])], [])
    low = _lower(build, {"x": (2, 3, 4), "b": (3, 1)})
    (act,) = low.actions
    assert act.kernel.kind == "elementwise" and "gx_sigmoid" in act.kernel.source
    assert "c1 * 1" in act.kernel.source  # b read through its broadcast strides
    _compile_all(low.kernels(), fast=False)


# -- errors ---------------------------------------------------------------------------------------
def test_a_kernel_that_does_not_compile_is_named_with_nvrtc_log():
    bad = K.Kernel("broken", 'extern "C" __global__ void KNAME(float* x) { x[0] = undefined_thing; }',
                   (1, 1, 1), (1, 1, 1), [("out", 0)])
    good = K.transpose([2, 3], [1, 0], DType.float32)
    with pytest.raises(CompileError, match=r"1 of 2 generated kernels do not compile[\s\S]*undefined_thing"):
        nvrtc.compile_ptx([good, bad], "sm_80")
    with pytest.raises(CompileError, match="architecture"):
        nvrtc.compile_ptx([good], "hopper")


def _has_device() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(_has_device(), reason="a CUDA device is present: the no-driver path cannot be seen")
def test_compiling_without_a_cuda_driver_is_a_clear_error():
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(CompileError, match="no usable CUDA driver or device"):
        gx.compile(model, target="cuda")


def test_missing_cupy_is_a_clear_error(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", fake)
    from galaxir.backends.cuda.runtime import open_device
    with pytest.raises(CompileError, match="needs cupy"):
        open_device()


def test_cuda_is_a_registered_backend_with_its_surface():
    from galaxir.backends import available_backends, get_backend
    assert "cuda" in available_backends()
    b = get_backend("cuda")
    assert {"sdpa", "fused_conv", "layer_norm", "softmax", "fused_elementwise"} <= b.native_ops()
    assert b.default_level == 2 and b.preferred_layout == "NCHW"
    assert {"device", "graphs"} <= b.compile_options()


def test_symbolic_dims_are_specialized_through_fused_chains():
    """A fused chain's result type comes from its region (symbolic); specialization gives
    it the operands' broadcast shape so the chain and everything after it get kernels."""
    def build(helper, TP):
        f = lambda n: helper.make_tensor_value_info(n, TP.FLOAT, ["N", 8])  # noqa: E731
        return ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["t"]),
                 helper.make_node("Softmax", ["t"], ["y"])], [f("x")], [f("y")], [])
    low = _lower(build, {"x": (5, 8)})
    assert [w for _, w, _ in low.placement] == ["cuda", "cuda"], low.placement
    assert [k.kind for k in low.kernels()] == ["elementwise", "softmax"]


def test_torch_attention_becomes_the_fused_kernel():
    """F.scaled_dot_product_attention imports as the ONNX-style attention op; the BERT-style
    encoder's attention runs as one kernel per layer and every op is on the device."""
    pytest.importorskip("torch")
    from galaxir.testing import cuda_models as cm
    model = cm.build("bert", layers=1, hidden=64, heads=4, ffn=128)
    ins = cm.inputs("bert", 2, seq=16, hidden=64)
    m = gx.optimize(gx.import_model(model, example_inputs=ins), level=2, target="cuda",
                    fold_max_growth=float("inf"))
    low = lower_for_shapes(m, {a.name: tuple(x.shape) for a, x in zip(m.graph.inputs, ins)})
    assert all(w == "cuda" for _, w, _ in low.placement), low.placement
    att = [a.kernel for a in low.actions if isinstance(a, Launch) and a.kernel.kind == "sdpa"]
    assert len(att) == 1 and "in3[" in att[0].source  # the padding mask is read in the kernel
    assert "softmax" not in {k.kind for k in low.kernels()}
    _compile_all(low.kernels(), fast=False)
