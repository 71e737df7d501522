"""matmul/linear and attention on the cpu backend against the numpy reference: N-d
activations times a 2-d weight (one GEMM over the folded leading dims), broadcasting
batched products, transposed operands, the attention chain as the torch exporters write
it (one fused attention kernel), on both the 16-lane and the 8-lane (AVX2) tiles, and the
recognized attention on real torch / transformers exports."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(11)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def run_both(m, feeds, rtol=1e-4, atol=1e-4, level=None, allow=()):
    """cpu (default level unless given) against the unoptimized numpy reference; returns
    the cpu executable.  Only the ops in ``allow`` may run on the reference."""
    kw = {} if level is None else {"level": level}
    cpu = gx.compile(m, target="cpu", **kw)
    got = cpu(*feeds)
    want = gx.compile(m, target="numpy", level=0)(*feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    assert set(cpu.fallback_ops) <= set(allow), cpu.report()
    return cpu


def kernels(exe):
    return [s.kernel for s in exe.last.steps if s.kind == "native"]


def _linear(a_shape, k, n, bias=True, relu=False):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *a_shape))
    y = gb.matmul(x, gb.constant(rand(k, n, scale=k ** -0.5)))
    if bias:
        y = gb.add(y, gb.constant(rand(n)))
    if relu:
        y = gb.relu(y)
    gb.output(y, "y")
    return gb.module()


# -- N-d activation times a 2-d weight ---------------------------------------------------------------
@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("a_shape,k,n", [
    ((1, 56, 56, 96), 96, 384),     # ConvNeXt's MLP (the case)
    ((1, 14, 14, 384), 384, 96),
    ((2, 1, 400, 64), 64, 70),      # a size-1 dim between batch dims; N not a multiple of 16
])
def test_nd_linear_is_one_gemm_on_packed_weights(monkeypatch, wide, a_shape, k, n):
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    m = _linear(a_shape, k, n, relu=True)
    cpu = run_both(m, [rand(*a_shape)])
    (kern,) = kernels(cpu)
    assert type(kern).__name__ == "GemmPacked", cpu.report()
    assert kern.M == int(np.prod(a_shape[:-1])) and kern.wide == (wide == "1")
    assert kern.relu or kern.activation == "relu"


@pytest.mark.parametrize("act", ["gelu", "tanh", "sigmoid", "clip", "leaky_relu"])
def test_packed_linear_epilogues(act):
    """Each epilogue class of GemmPacked (the piecewise-linear one with its bounds in the
    parameter block, the others as their own library variants), on a partial last panel."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 61, 128))
    y = gb.add(gb.matmul(x, gb.constant(rand(128, 200, scale=0.1))), gb.constant(rand(200)))
    if act == "clip":
        y = gb.clip(y, gb.constant(np.float32(-0.5)), gb.constant(np.float32(0.7)))
    elif act == "leaky_relu":
        y = gb.leaky_relu(y, alpha=0.1)
    else:
        y = gb.op(act, y)
    gb.output(y, "y")
    cpu = run_both(gb.module(), [rand(2, 61, 128)])
    (kern,) = kernels(cpu)
    assert type(kern).__name__ == "GemmPacked" and kern.activation == act, cpu.report()


def test_small_nd_linear_folds_its_rows_for_sgemm():
    cpu = run_both(_linear((2, 1, 3, 5, 8), 8, 12), [rand(2, 1, 3, 5, 8)])
    (kern,) = kernels(cpu)
    assert type(kern).__name__ == "MatMul" and kern.M == 30 and not kern.batch, cpu.report()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lead=st.lists(st.integers(1, 9), min_size=0, max_size=3), m=st.integers(1, 70),
       k=st.integers(1, 100), n=st.integers(1, 80), bias=st.booleans(),
       wide=st.sampled_from(["0", "1"]))
def test_nd_linear_shapes(lead, m, k, n, bias, wide):
    os.environ["GALAXIR_CPU_WIDE"] = wide
    try:
        a_shape = tuple(lead) + (m, k)
        run_both(_linear(a_shape, k, n, bias=bias), [rand(*a_shape)])
    finally:
        del os.environ["GALAXIR_CPU_WIDE"]


# -- batched products: broadcasting batch dims, transposed operands ----------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=2),
       bb=st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=2),
       m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 50),
       trans_b=st.booleans(), wide=st.sampled_from(["0", "1"]))
def test_batched_matmul_broadcast_and_transposed(b, bb, m, k, n, trans_b, wide):
    bb = bb[:len(b)]
    bb = [d if d == 1 or i >= len(b) else b[len(b) - len(bb) + i] for i, d in enumerate(bb)]
    a_shape, b_shape = tuple(b) + (m, k), tuple(bb) + ((n, k) if trans_b else (k, n))
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", *a_shape))
    bm = gb.input("b", tensor("f32", *b_shape))
    if trans_b:
        r = len(b_shape)
        bm = gb.transpose(bm, perm=tuple(range(r - 2)) + (r - 1, r - 2))
    gb.output(gb.matmul(a, bm), "y")
    os.environ["GALAXIR_CPU_WIDE"] = wide
    try:
        run_both(gb.module(), [rand(*a_shape), rand(*b_shape)])
    finally:
        del os.environ["GALAXIR_CPU_WIDE"]


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("a_shape,b_shape,trans_b", [
    ((1, 12, 128, 64), (1, 12, 128, 64), True),   # attention's Q K^T, K transposed by a node
    ((2, 1, 64, 90), (4, 90, 50), False),         # broadcast batch dims, partial panel
    ((500, 70), (70, 100), False),                # one product, B an activation
])
def test_large_runtime_b_products_run_on_batched_gemm(monkeypatch, wide, a_shape, b_shape, trans_b):
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", *a_shape))
    bm = gb.input("b", tensor("f32", *b_shape))
    if trans_b:
        bm = gb.transpose(bm, perm=(0, 1, 3, 2))
    gb.output(gb.matmul(a, bm), "y")
    cpu = run_both(gb.module(), [rand(*a_shape), rand(*b_shape)])
    names = [type(k).__name__ for k in kernels(cpu)]
    assert "BatchedGemm" in names, cpu.report()
    if trans_b:     # K^T read in place: no transpose step
        assert names == ["BatchedGemm"] and kernels(cpu)[0].trans_b, cpu.report()
        assert cpu.placement() is not None and cpu.memory_plan() is not None


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 3), m=st.integers(1, 40), k=st.integers(1, 80), n=st.integers(16, 80),
       trans_b=st.booleans(), wide=st.sampled_from(["0", "1"]))
def test_batched_gemm_tiles_and_transposed_packing(monkeypatch, h, m, k, n, trans_b, wide):
    """BatchedGemm at every size (the size floor lowered): the 12-row tile (16 lanes) or
    6-row tile with partial tiles and panels, K^T packed 8 x 8 by in-register transposes
    with scalar edges (n, k not multiples of 8)."""
    from galaxir.backends.cpu import lower
    monkeypatch.setattr(lower, "PACKED_MIN_MACS", 1)
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 2, h, m, k))
    bm = gb.input("b", tensor("f32", 2, h, *((n, k) if trans_b else (k, n))))
    if trans_b:
        bm = gb.transpose(bm, perm=(0, 1, 3, 2))
    gb.output(gb.matmul(a, bm), "y")
    cpu = run_both(gb.module(), [rand(2, h, m, k), rand(2, h, *((n, k) if trans_b else (k, n)))])
    (kern,) = kernels(cpu)
    assert type(kern).__name__ == "BatchedGemm" and kern.trans_b == trans_b
    assert kern.tile_rows == (12 if wide == "1" else 6)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(h=st.integers(2, 6), bcast=st.sampled_from(["none", "a", "b"]), m=st.integers(1, 40),
       k=st.integers(1, 70), n=st.integers(16, 80), trans_b=st.booleans(),
       wide=st.sampled_from(["0", "1"]))
def test_batched_gemm_per_product_tasks(monkeypatch, h, bcast, m, k, n, trans_b, wide):
    """Heads as tasks (BatchedGemm.per_product): each task packs its own B and runs the
    constant-size tile; one operand broadcast over the batch dim (stride 0), odd sizes."""
    from galaxir.backends.cpu import lower
    monkeypatch.setattr(lower, "PACKED_MIN_MACS", 1)
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    a_shape = (2, 1 if bcast == "a" else h, m, k)
    b_shape = (2, 1 if bcast == "b" else h) + ((n, k) if trans_b else (k, n))
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", *a_shape))
    bm = gb.input("b", tensor("f32", *b_shape))
    if trans_b:
        bm = gb.transpose(bm, perm=(0, 1, 3, 2))
    gb.output(gb.matmul(a, bm), "y")
    cpu = run_both(gb.module(), [rand(*a_shape), rand(*b_shape)])
    (kern,) = kernels(cpu)
    assert type(kern).__name__ == "BatchedGemm" and kern.per_product, cpu.report()


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("kd,n,trans", [(64, 197, True), (13, 40, True), (20, 35, False),
                                        (64, 64, True)])
def test_pack_panels_layout_zeroes_the_padding(kd, n, trans, wide):
    """emit_pack_panels gives kernels_gemm.pack_b's layout, with zeros (not the scratch's
    old contents) in the columns past n of the last panel: stale denormals or NaNs there
    would slow every FMA of those tile columns."""
    import ctypes
    import llvmlite.ir as ir
    from galaxir.backends.cpu import jit
    from galaxir.backends.cpu import kernels_gemm as KG
    from galaxir.backends.cpu.codegen import F32, FnBuilder
    mod = ir.Module("pack")
    mod.triple = jit.target_triple()
    mod.data_layout = jit.target_data_layout()
    fb = FnBuilder(mod, "f", [F32.as_pointer(), F32.as_pointer()], linkage="external")
    sk, sc = (1, kd) if trans else (n, 1)       # B [kd, n] read from [n, kd] when trans
    KG.emit_pack_panels(fb, fb.args[0], 0, fb.args[1], 0, kd, n, sk, sc, wide)
    fb.finish()
    lo = jit.LoadedObject(jit.compile_ir(str(mod))[0])
    f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(lo.address("f"))
    bmat = rand(kd, n)
    src = np.ascontiguousarray(bmat.T if trans else bmat)
    dst = np.full(KG.panel_floats(kd, n, wide), np.nan, np.float32)
    dst[-1:] = np.float32(1e-40)      # a denormal, as stale scratch might hold
    f(dst.ctypes.data, src.ctypes.data)
    np.testing.assert_array_equal(dst, KG.pack_b(bmat, wide).ravel())


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sq=st.integers(1, 40), skv=st.integers(1, 70), d=st.integers(1, 40), dv=st.integers(1, 40),
       masked=st.booleans(), wide=st.sampled_from(["0", "1"]))
def test_attention_kernel_any_shape(monkeypatch, sq, skv, d, dv, masked, wide):
    """The fused attention kernel's packing (K^T by 8 x 8 transposes) and panel products
    (12- or 6-row tiles) at odd sizes, with and without a mask."""
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    m, feeds = _chain(1, 2, sq, skv, d, dv, mask=_causal(sq, skv) if masked else None)
    cpu = run_both(m, feeds, level=2)
    assert cpu.native_ops == ["attention"], cpu.report()


def test_transpose_read_elsewhere_still_runs():
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 4, 128, 64))
    k = gb.input("k", tensor("f32", 4, 128, 64))
    kt = gb.transpose(k, perm=(0, 2, 1))
    gb.output(gb.matmul(a, kt), "y")
    gb.output(gb.relu(kt), "z")
    cpu = run_both(gb.module(), [rand(4, 128, 64), rand(4, 128, 64)])
    assert "transpose" in cpu.native_ops, cpu.report()


# -- the attention chain -----------------------------------------------------------------------------
def _chain(b, h, sq, skv, d, dv, mask=None, guard=False, qk_scale=False, kt_perm=False):
    """softmax(q @ k^T * scale + mask) @ v as separate ops (k [b, h, skv, d], or [b, skv, h, d]
    transposed (0, 2, 3, 1) as BERT's export does with ``kt_perm``)."""
    gb = GraphBuilder()
    q = gb.input("q", tensor("f32", b, h, sq, d))
    if kt_perm:
        k = gb.input("k", tensor("f32", b, skv, h, d))
        kt = gb.transpose(k, perm=(0, 2, 3, 1))
    else:
        k = gb.input("k", tensor("f32", b, h, skv, d))
        kt = gb.transpose(k, perm=(0, 1, 3, 2))
    v = gb.input("v", tensor("f32", b, h, skv, dv))
    if qk_scale:
        c = gb.constant(np.float32(d ** -0.25))
        s = gb.matmul(gb.mul(q, c), gb.mul(kt, c))
    else:
        s = gb.mul(gb.matmul(q, kt), gb.constant(np.float32(d ** -0.5)))
    if mask is not None:
        s = gb.add(s, gb.constant(mask) if isinstance(mask, np.ndarray) else mask(gb))
    p = gb.softmax(s, axis=-1)
    if guard:
        p = gb.where(gb.isnan(p), gb.constant(np.float32(0)), p)
    gb.output(gb.matmul(p, v), "y")
    kshape = (b, skv, h, d) if kt_perm else (b, h, skv, d)
    return gb.module(), [rand(b, h, sq, d), rand(*kshape), rand(b, h, skv, dv)]


def _causal(sq, skv):
    m = np.zeros((1, 1, sq, skv), np.float32)
    m[..., np.triu(np.ones((sq, skv), bool), 1)] = -1e9
    return m


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("case", [
    dict(b=1, h=4, sq=64, skv=64, d=32, dv=32),
    dict(b=2, h=3, sq=70, skv=67, d=20, dv=9, qk_scale=True),       # odd sizes, Dv != D
    dict(b=1, h=2, sq=9, skv=9, d=16, dv=16, mask=_causal(9, 9)),   # causal (constant mask)
    dict(b=2, h=2, sq=5, skv=7, d=8, dv=8, kt_perm=True, mask=_causal(5, 7)),
    dict(b=1, h=2, sq=40, skv=600, d=32, dv=32),                    # long keys: sgemm path
])
def test_attention_chain_runs_as_one_kernel(monkeypatch, wide, case):
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    m, feeds = _chain(**case)
    for level in (2, 3):
        cpu = run_both(m, feeds, level=level)
        assert sorted(cpu.native_ops) == ["attention"] + (["transpose"] if case.get("kt_perm") else []), \
            cpu.report()


def test_attention_chain_with_runtime_mask_and_guard():
    """transformers' form: a run-time bool mask as where(keep, 0, -inf) added to the scores,
    where(isnan(p), 0, p) after the softmax; a row with no key to attend to is zeros."""
    def mask(gb):
        keep = gb.input("keep", tensor("bool", 2, 1, 6, 10))
        return gb.where(keep, gb.constant(np.float32(0)), gb.constant(np.float32(-np.inf)))
    m, feeds = _chain(2, 3, 6, 10, 8, 8, mask=mask, guard=True, qk_scale=True)
    keep = RNG.random((2, 1, 6, 10)) > 0.3
    keep[1, 0, 4] = False
    cpu = run_both(m, feeds + [keep], allow=("where",))     # where: the mask, not attention
    assert "attention" in cpu.native_ops, cpu.report()
    y = cpu(*feeds, keep)[0]
    assert np.all(y[1, :, 4] == 0) and np.isfinite(y).all()


# -- real exports ------------------------------------------------------------------------------------
def test_torch_multihead_attention_export_is_recognized(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = torch.nn.MultiheadAttention(64, 4, batch_first=True)

        def forward(self, x):
            return self.m(x, x, x, need_weights=False)[0]

    x = torch.randn(2, 24, 64)
    path = str(tmp_path / "mha.onnx")
    torch.onnx.export(SelfAttention().eval(), (x,), path, opset_version=17, dynamo=False)
    m = gx.import_model(path)
    assert gx.optimize(m, level=2).op_counts().get("attention") == 1
    cpu = run_both(m, [x.numpy()], atol=1e-5)
    assert "attention" in cpu.native_ops
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(cpu(x.numpy())[0], sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0],
                               rtol=1e-4, atol=1e-5)


_EXPORT = textwrap.dedent("""
    import sys
    sys.modules["torchvision"] = None   # transformers must not import a mismatched torchvision
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model
    kind, path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=100))
    else:
        model = GPT2Model(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                     n_positions=64))

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.randint(0, 100, (1, 32))
    mask = torch.ones(1, 32, dtype=torch.long)
    torch.onnx.export(Wrap(model).eval(), (ids, mask), path, opset_version=17, dynamo=False,
                      input_names=["ids", "mask"])
""")


@pytest.mark.slow      # 10-20 s each: an export in a fresh process (transformers' import)
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_transformers_attention_is_recognized(tmp_path, kind):
    pytest.importorskip("transformers")
    path = str(tmp_path / f"{kind}.onnx")
    r = subprocess.run([sys.executable, "-c", _EXPORT, kind, path], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = gx.import_model(path)
    assert gx.optimize(m, level=2).op_counts().get("attention") == 2     # one per layer
    ids = RNG.integers(0, 100, (1, 32)).astype(np.int64)
    mask = np.ones((1, 32), np.int64)
    mask[0, 27:] = 0                                                     # padding
    cpu = gx.compile(m, target="cpu")
    got = cpu(ids, mask)[0]
    want = gx.compile(m, target="numpy", level=0)(ids, mask)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert "attention" in cpu.native_ops and "attention" not in cpu.fallback_ops, cpu.report()
