"""Modern activations after a Linear or a Conv, as torch.onnx.export writes them (GELU as
Div/Erf/Add/Mul/Mul, SiLU as Sigmoid/Mul, Mish as Softplus/Tanh/Mul, ...): recognized,
fused into the producer's epilogue (no activation op left), and equal to the numpy
reference and to torch."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("llvmlite")
nn = torch.nn

ACTS = {
    "gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(), "hard_swish": lambda: nn.Hardswish(), "mish": lambda: nn.Mish(),
    "hard_sigmoid": lambda: nn.Hardsigmoid(), "sigmoid": lambda: nn.Sigmoid(), "tanh": lambda: nn.Tanh(),
}
ACT_OPS = {"gelu", "erf", "tanh", "sigmoid", "softplus", "hard_swish", "hard_sigmoid", "mish", "mul",
           "div", "add", "fused_elementwise"}


def _export(module, x):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), f, opset_version=17, dynamo=False)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_exported_activation_fuses_into_the_producer(act, kind):
    torch.manual_seed(0)
    if kind == "linear":
        module, x = nn.Sequential(nn.Linear(24, 40), ACTS[act]()), torch.randn(5, 24) * 2
        fused = "fused_gemm"
    else:
        module, x = nn.Sequential(nn.Conv2d(6, 16, 3, padding=1), ACTS[act]()), torch.randn(1, 6, 9, 11) * 2
        fused = "fused_conv"
    m = gx.import_model(_export(module, x))
    opt = gx.optimize(m, level=2, target="cpu")
    ops = opt.op_counts()
    assert ops.get(fused) == 1 and not (set(ops) & ACT_OPS), ops
    (node,) = [op for op in opt.walk() if op.name == fused]
    assert node.attr("activation") == {"hard_swish": "hard_swish"}.get(act, act)
    cpu = gx.compile(m, target="cpu")
    assert not cpu.fallback_ops, cpu.report()
    assert set(cpu.native_ops) <= {fused, "transpose"}, cpu.native_ops
    got = cpu(x.numpy())[0]
    want = gx.compile(m, target="numpy", level=0)(x.numpy())[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["mish", "swish"])
def test_activation_ops_fuse_into_conv(op):
    """The ONNX Mish op (opset 18) and Swish with alpha 1 (= silu) fuse too."""
    rng = np.random.default_rng(0)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 4, 7, 7))
    y = gb.conv(x, gb.constant(rng.standard_normal((8, 4, 3, 3)).astype(np.float32)), pads=(1, 1, 1, 1))
    gb.output(gb.mish(y) if op == "mish" else gb.swish(y, alpha=1.0), "y")
    m = gb.module()
    opt = gx.optimize(m, level=2, target="cpu")
    (node,) = [o for o in opt.walk() if o.name == "fused_conv"]
    assert node.attr("activation") == ("mish" if op == "mish" else "silu")
    xv = rng.standard_normal((1, 4, 7, 7)).astype(np.float32) * 3
    cpu = gx.compile(m, target="cpu")
    assert not cpu.fallback_ops, cpu.report()
    np.testing.assert_allclose(cpu(xv)[0], gx.compile(m, target="numpy", level=0)(xv)[0], rtol=1e-5, atol=1e-5)
    # the fused op decomposes back (the numpy reference runs the fused module too)
    np.testing.assert_allclose(gx.compile(opt, target="numpy", level=0)(xv)[0], cpu(xv)[0], rtol=1e-5, atol=1e-5)


def test_swish_with_other_alpha_stays_elementwise():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 8))
    y = gb.matmul(x, gb.constant(np.ones((8, 5), np.float32)))
    gb.output(gb.swish(y, alpha=2.0), "y")
    opt = gx.optimize(gb.module(), level=2, target="cpu")
    assert "swish" in str(opt.op_counts()) or "fused_elementwise" in opt.op_counts()
    assert all(o.attr("activation") in (None, "none") for o in opt.walk() if o.name == "linear")
