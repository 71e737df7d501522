"""The cpu backend's O2 extended rules: every fused op it claims runs natively and agrees
with the numpy reference; what it does not claim (sdpa, regions it cannot lower) still
runs, decomposed back into natively compiled core ops."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(3)
ACTS = ["relu", "tanh", "sigmoid", "silu", "hard_swish", "gelu", "relu6", "leaky_relu"]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def act(gb, y, name):
    if name == "silu":
        return gb.mul(y, gb.sigmoid(y))
    if name == "relu6":
        return gb.clip(y, gb.constant(np.float32(0)), gb.constant(np.float32(6)))
    if name == "leaky_relu":
        return gb.leaky_relu(y, alpha=0.1)
    if name == "hard_swish":
        return gb.hard_swish(y)
    if name == "gelu":
        return gb.gelu(y)
    return gb.op(name, y)


def check(m, feeds, fused_name, rtol=1e-4, atol=1e-4):
    cpu = gx.compile(m, target="cpu", level=2)
    got = cpu(*feeds)
    want = gx.compile(m, target="numpy", level=0)(*feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    native = cpu.native_ops
    assert not cpu.fallback_ops, cpu.report()
    if fused_name:
        assert fused_name in native, cpu.report()
    return cpu


@pytest.mark.parametrize("name", ACTS)
def test_fused_conv_residual_activation(name):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 5, 9, 11))
    z = gb.input("z", tensor("f32", 2, 7, 9, 11))
    y = gb.conv(x, gb.constant(rand(7, 5, 3, 3)), gb.constant(rand(7)), pads=(1, 1, 1, 1))
    gb.output(act(gb, gb.add(y, z), name), "y")
    check(gb.module(), [rand(2, 5, 9, 11), rand(2, 7, 9, 11)], "fused_conv")


@pytest.mark.parametrize("group", [1, 4])
def test_fused_conv_strided_grouped_relu6(group):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 8, 13, 10))
    y = gb.conv(x, gb.constant(rand(8, 8 // group, 3, 3)), gb.constant(rand(8)), strides=(2, 2),
                pads=(1, 0, 1, 0), group=group)
    gb.output(act(gb, y, "relu6"), "y")
    check(gb.module(), [rand(1, 8, 13, 10)], "fused_conv")


@pytest.mark.parametrize("name", ["gelu", "sigmoid", "relu"])
@pytest.mark.parametrize("rows", [2, 33])
def test_linear_activation(name, rows):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", rows, 24))
    y = gb.add(gb.matmul(x, gb.constant(rand(24, 17))), gb.constant(rand(17)))
    gb.output(act(gb, y, name), "y")
    check(gb.module(), [rand(rows, 24)], "linear")


def test_fused_gemm_tanh():
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 6, 10))
    y = gb.gemm(a, gb.constant(rand(12, 10)), gb.constant(rand(12)), transB=1, alpha=0.5)
    gb.output(gb.tanh(y), "y")
    check(gb.module(), [rand(6, 10)], "fused_gemm")


def test_fused_add_and_elementwise_region():
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 3, 4, 5))
    b = gb.input("b", tensor("f32", 3, 4, 5))
    r = gb.relu(gb.add(a, b))
    t = gb.tanh(gb.mul(gb.sigmoid(r), gb.constant(np.float32(1.5))))
    gb.output(gb.add(t, a), "y")
    cpu = check(gb.module(), [rand(3, 4, 5), rand(3, 4, 5)], None)
    assert {"fused_add", "fused_elementwise"} & set(cpu.native_ops), cpu.report()


def test_attention_runs_fused_natively():
    """The chain softmax(q @ k^T * c) @ v becomes the attention op (one kernel)."""
    gb = GraphBuilder()
    q = gb.input("q", tensor("f32", 2, 8, 16))
    k = gb.input("k", tensor("f32", 2, 8, 16))
    v = gb.input("v", tensor("f32", 2, 8, 16))
    s = gb.mul(gb.matmul(q, gb.transpose(k, perm=(0, 2, 1))), gb.constant(np.float32(0.25)))
    gb.output(gb.matmul(gb.softmax(s, axis=-1), v), "y")
    m = gb.module()
    assert gx.optimize(m, level=2).op_counts().get("attention") == 1
    cpu = check(m, [rand(2, 8, 16), rand(2, 8, 16), rand(2, 8, 16)], "attention")
    assert cpu.native_ops == ["attention"], cpu.report()


def test_sdpa_with_a_runtime_mask_runs_decomposed_natively():
    gb = GraphBuilder()
    q, k, v = (gb.input(n, tensor("f32", 2, 8, 16)) for n in "qkv")
    mask = gb.input("mask", tensor("f32", 8, 8))
    s = gb.add(gb.mul(gb.matmul(q, gb.transpose(k, perm=(0, 2, 1))), gb.constant(np.float32(0.25))), mask)
    gb.output(gb.matmul(gb.softmax(s, axis=-1), v), "y")
    m = gb.module()
    assert "sdpa" in gx.optimize(m, level=2).op_counts()
    cpu = check(m, [rand(2, 8, 16), rand(2, 8, 16), rand(2, 8, 16), rand(8, 8)], "softmax")
    assert "sdpa" not in cpu.native_ops and not cpu.fallback_ops, cpu.report()


def test_default_level():
    from galaxir.backends.cpu import CpuBackend
    assert CpuBackend.default_level == 3 and CpuBackend.preferred_layout == "NHWC"


def test_lowering_fuses_nothing_each_op_is_one_loop():
    """Lowering turns each elementwise op into a loop of its own: chains are grouped by the
    pipeline (cpu-fuse-elementwise), never by lowering."""
    from galaxir.backends.cpu.lower import lower_module
    from galaxir.passes.memory import specialize_types
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 4, 6))
    gb.output(gb.relu(gb.add(gb.mul(a, a), gb.constant(np.float32(0.5)))), "y")
    m = gb.module()
    steps = lower_module(specialize_types(m, {"a": (4, 6)}))
    assert [[op.name for op in s.ops] for s in steps] == [["mul"], ["add"], ["relu"]]
    o = gx.optimize(m, 1, target="cpu")  # the cpu's own fusion runs from O1 on
    assert o.op_counts().get("fused_elementwise") == 1 and "cpu-fuse-elementwise" in \
        o.metadata["optimized"]
    exe = gx.compile(m, target="cpu", level=1)
    assert [s.kernel.name for s in exe.last.steps] == ["elementwise"]
    x = rand(4, 6)
    np.testing.assert_allclose(exe(x)[0], np.maximum(x * x + 0.5, 0), rtol=1e-6)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_cpu_regroups_what_its_loop_runs_around_an_op_it_does_not(level):
    """pow joins the generic O2 fusion but not the cpu's loop: the region is decomposed and
    the cpu's own rule groups the native ops around pow (mul+add+tanh and relu+sub+sigmoid,
    abs a loop of its own, pow on the reference); at O1 the cpu's rule alone does the same.
    tanh feeds two chains that end apart (one through pow): it ends a chain itself."""
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 5, 7))
    h = gb.tanh(gb.add(gb.mul(a, gb.constant(np.float32(0.7))), a))
    p = gb.op("pow", gb.op("abs", h), gb.constant(np.float32(1.5)))
    gb.output(gb.sigmoid(gb.sub(p, gb.relu(h))), "y")
    m = gb.module()
    o = gx.optimize(m, level, target="cpu")
    assert o.op_counts().get("fused_elementwise") == 2 and o.op_counts().get("pow") == 1, \
        o.op_counts()
    exe = gx.compile(m, target="cpu", level=level)
    kinds = [s.kernel.name if hasattr(s, "kernel") else s.op.name for s in exe.last.steps]
    assert kinds.count("elementwise") == 3 and "pow" in exe.fallback_ops, kinds
    x = rand(5, 7)
    (want,) = gx.compile(m, target="numpy", level=0)(x)
    np.testing.assert_allclose(exe(x)[0], want, rtol=1e-5, atol=1e-6)
