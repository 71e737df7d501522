"""The light model-zoo CNNs on the cpu target: outputs match the shipped expected outputs
(resnet50, squeezenet, shufflenet in the default run, all 9 under -m slow), and the
compile stays cheap because conv kernels are shape-generic library functions shared by
every conv of the process (the model's own LLVM module only holds small wrappers)."""
from __future__ import annotations

import re
import time

import numpy as np
import onnx
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor
from galaxir.testing import zoo

pytest.importorskip("llvmlite")
FAST = ("resnet50", "shufflenet", "squeezenet")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(zoo.MODELS)])
def test_zoo_model_on_cpu(name):
    model = onnx.load(str(zoo.model_path(name)))
    t0 = time.perf_counter()
    exe = gx.compile(gx.import_model(model), target="cpu")
    compile_s = time.perf_counter() - t0
    out = exe.run(zoo.dummy_inputs(model))
    want = zoo.expected_outputs(name, model)
    rtol, atol = zoo.MODELS[name]
    for n, w in zip(exe.output_names, want):
        np.testing.assert_allclose(out[n], w, rtol=rtol, atol=atol)
    assert not exe.fallback_ops, exe.report()
    # the whole model is far below the 0.3-1 s per conv of specialized kernels (depthwise
    # kernels are specialized per shape, 25-75 KB of IR each: shufflenet's six are 270 KB)
    assert len(exe.last.llvm_ir) < 500_000
    assert compile_s < 120


def _conv_model(shapes):
    rng = np.random.default_rng(0)
    gb = GraphBuilder()
    outs = []
    for k, (c, h, m) in enumerate(shapes):
        x = gb.input(f"x{k}", tensor("f32", 1, c, h, h))
        w = gb.constant(rng.standard_normal((m, c, 3, 3)).astype(np.float32))
        outs.append(gb.relu(gb.conv(x, w, pads=(1, 1, 1, 1))))
    for k, y in enumerate(outs):
        gb.output(y, f"y{k}")
    return gb.module()


def test_convs_of_different_shapes_share_one_library_kernel():
    m = _conv_model([(3, 17, 8), (16, 9, 32), (5, 6, 7)])
    exe = gx.compile(m, target="cpu", level=0)
    syms = set(re.findall(r"@\"?(gx_lib_pgemm\w+)", exe.last.llvm_ir))
    assert len(syms) == 1, syms
    rng = np.random.default_rng(1)
    feeds = [rng.standard_normal((1, c, h, h)).astype(np.float32)
             for c, h, _ in [(3, 17, 8), (16, 9, 32), (5, 6, 7)]]
    want = gx.compile(m, target="numpy", level=0)(*feeds)
    for g, w in zip(exe(*feeds), want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_equal_channels_give_bit_equal_outputs():
    """Each output element is one fixed-order FMA chain whatever its tile position, so
    identical filters give bit-identical channels (what the zoo expected outputs need)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 7, 11, 13))
    w = np.repeat(np.random.default_rng(2).standard_normal((1, 7, 3, 3)).astype(np.float32), 13, 0)
    gb.output(gb.conv(x, gb.constant(w), pads=(1, 1, 1, 1)), "y")
    exe = gx.compile(gb.module(), target="cpu", level=0)
    (y,) = exe(np.random.default_rng(3).standard_normal((1, 7, 11, 13)).astype(np.float32))
    assert all(np.array_equal(y[0, 0], y[0, c]) for c in range(1, 13))
