"""The cpu backend's sequence-model kernels (galaxir/backends/cpu/kernels_seq.py):
layer_norm, lstm, gru, attention and gather with constant indices run natively and agree
with the numpy reference on random inputs (odd sizes that exercise the vector tails and
the packed-panel remainders, every direction, constant and runtime weights); what they
cannot do still runs, on the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, tensor

pytest.importorskip("llvmlite")
RNG = np.random.default_rng(11)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def run_both(m, feeds, native_op, rtol=1e-4, atol=1e-5, level=2):
    """Compile for cpu and numpy, compare every output, return the cpu executable."""
    cpu = gx.compile(m, target="cpu", level=level)
    got = cpu(*feeds)
    want = gx.compile(m, target="numpy", level=0)(*feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    if native_op is not None:
        assert native_op in cpu.native_ops, cpu.report()
        assert native_op not in cpu.fallback_ops, cpu.report()
    return cpu


# -- layer_norm --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,pshape", [
    ((3, 7, 37), -1, (37,)),           # vector body + scalar tail
    ((2, 5, 4, 6), -2, (4, 6)),        # normalized over two dims
    ((4, 16), -1, (1, 16)),            # leading 1 in the scale
    ((5, 3), 1, (3,)),                 # narrower than a vector
    ((300, 130), -1, (130,)),          # rows split over the pool
])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(shape, axis, pshape, with_bias):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *shape))
    bias = gb.constant(rand(*pshape)) if with_bias else None
    gb.output(gb.layer_norm(x, gb.constant(rand(*pshape)), bias, axis=axis, epsilon=1e-3), "y")
    run_both(gb.module(), [rand(*shape, scale=3.0) + 1.0], "layer_norm")


def test_layer_norm_scalar_scale_runtime_params():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 6, 19))
    s = gb.input("s", tensor("f32", 1))
    b = gb.input("b", tensor("f32", 19))
    gb.output(gb.layer_norm(x, s, b, axis=-1, epsilon=1e-5), "y")
    run_both(gb.module(), [rand(6, 19), rand(1), rand(19)], "layer_norm")


def test_layer_norm_partial_broadcast_falls_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3, 4, 5))
    gb.output(gb.layer_norm(x, gb.constant(rand(1, 5)), None, axis=1), "y")
    cpu = run_both(gb.module(), [rand(3, 4, 5)], None, level=0)
    assert "layer_norm" in cpu.fallback_ops


# -- recurrent layers ---------------------------------------------------------------------------
def _rnn_model(kind, T, B, I, H, direction="forward", runtime_weights=False, layout=0,
               h0=False, c0=False, peep=False, **attrs):
    """A one-op model; returns (module, feeds)."""
    g = 4 if kind == "lstm" else 3
    nd = 2 if direction == "bidirectional" else 1
    gb = GraphBuilder()
    xs = (B, T, I) if layout else (T, B, I)
    feeds = [rand(*xs)]
    x = gb.input("x", tensor("f32", *xs))
    w_, r_, b_ = rand(nd, g * H, I, scale=0.5), rand(nd, g * H, H, scale=0.5), rand(nd, 2 * g * H)
    if runtime_weights:
        w = gb.input("w", tensor("f32", *w_.shape))
        r = gb.input("r", tensor("f32", *r_.shape))
        feeds += [w_, r_]
    else:
        w, r = gb.constant(w_), gb.constant(r_)
    st = (B, nd, H) if layout else (nd, B, H)
    hv = gb.constant(rand(*st)) if h0 else None
    cv = gb.constant(rand(*st)) if c0 else None
    operands = [x, w, r, gb.constant(b_), None, hv]
    if kind == "lstm":
        operands += [cv, gb.constant(rand(nd, 3 * H)) if peep else None]
    outs = gb.op(kind, *operands, hidden_size=H, direction=direction, layout=layout, **attrs)
    for k, o in enumerate(outs):
        gb.output(o, f"y{k}")
    return gb.module(), feeds


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("H", [5, 13, 70])     # all tail / vectors + tail / panel + remainder
def test_recurrent_directions(kind, direction, H):
    m, feeds = _rnn_model(kind, T=6, B=3, I=7, H=H, direction=direction, h0=True, c0=True)
    run_both(m, feeds, kind)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_runtime_weights_and_layout(kind, direction):
    """R as a graph input (packed inside the kernel) and batch-first layout."""
    m, feeds = _rnn_model(kind, T=5, B=2, I=3, H=67, direction=direction, runtime_weights=True,
                          layout=1, h0=True, c0=True)
    run_both(m, feeds, kind)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr):
    m, feeds = _rnn_model("gru", T=7, B=2, I=9, H=24, linear_before_reset=lbr)
    run_both(m, feeds, "gru")


@pytest.mark.parametrize("attrs", [{}, {"clip": 0.7}, {"input_forget": 1}])
def test_lstm_peepholes_clip_input_forget(attrs):
    m, feeds = _rnn_model("lstm", T=8, B=2, I=4, H=19, peep=True, c0=True, **attrs)
    run_both(m, feeds, "lstm")


@pytest.mark.parametrize("kind,acts,alpha,beta", [
    ("lstm", ["HardSigmoid", "Softsign", "ScaledTanh"], [0.3, 0.7], [0.4, 1.2]),
    ("lstm", ["Sigmoid", "Relu", "Affine"], [0.5], [0.1]),
    ("gru", ["Elu", "Softplus"], [0.8], None),
    ("gru", ["LeakyRelu", "ThresholdedRelu"], [0.2, 0.1], None),
])
def test_recurrent_other_activations(kind, acts, alpha, beta):
    attrs = {"activations": acts, "activation_alpha": alpha}
    if beta:
        attrs["activation_beta"] = beta
    m, feeds = _rnn_model(kind, T=4, B=2, I=5, H=11, **attrs)
    run_both(m, feeds, kind)


def test_recurrent_large_batch_and_one_step():
    """9 rows: two 4-row register tiles and a single row, over full 64-column panels."""
    m, feeds = _rnn_model("lstm", T=1, B=9, I=16, H=128)
    run_both(m, feeds, "lstm")


def _recurrent_kernel(cpu):
    from galaxir.backends.cpu import kernels_seq as KS
    return next(s.kernel for s in cpu.last.steps if isinstance(getattr(s, "kernel", None), KS.Recurrent))


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("runtime_weights", [False, True])
@pytest.mark.parametrize("kind,direction", [("lstm", "bidirectional"), ("gru", "forward")])
def test_recurrent_projection_column_blocks(monkeypatch, wide, runtime_weights, kind, direction):
    """A wide input: W^T spans several L2-sized column blocks of the projection (the last
    one partial), on 8- and 16-lane tiles, packed at lowering time or in the kernel."""
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    I, H = 600, 70
    m, feeds = _rnn_model(kind, T=3, B=5, I=I, H=H, direction=direction,
                          runtime_weights=runtime_weights)
    cpu = run_both(m, feeds, kind, atol=5e-5)
    kern = _recurrent_kernel(cpu)
    cols, nblk = kern.proj_blocks()
    assert kern.wide == (wide == "1") and nblk >= 2 and nblk * cols > kern.gates * H > (nblk - 1) * cols


@pytest.mark.parametrize("wide", ["0", "1"])
@pytest.mark.parametrize("kind,direction,tasks", [
    ("lstm", "bidirectional", 2),      # one task per direction
    ("gru", "bidirectional", 2),
    ("lstm", "forward", None),         # the projection's column blocks
    ("gru", "reverse", None),
])
def test_recurrent_work_runs_on_the_pool(monkeypatch, wide, kind, direction, tasks):
    """With a pool the directions of a bidirectional layer are the two tasks of one job,
    and a single direction's projection is split into column blocks; the answer equals
    the one-thread answer bit for bit and the numpy reference's."""
    from galaxir.backends.cpu import parallel as P
    from galaxir.backends.cpu import program
    monkeypatch.setenv("GALAXIR_CPU_WIDE", wide)
    monkeypatch.setattr(program, "POOL_MIN_BYTES", 0)
    m, feeds = _rnn_model(kind, T=16, B=2, I=300, H=70, direction=direction, h0=True, c0=True)
    one = gx.compile(m, target="cpu", num_threads=1)(*feeds)
    cpu = run_both(m, feeds, kind, atol=5e-5)
    kern = _recurrent_kernel(cpu)
    if tasks is None:
        tasks = kern.proj_blocks()[1]
        assert tasks >= 4
    pool = P.Pool(2)
    try:
        cpu.pool = pool
        got = cpu(*feeds)
        assert pool.state[P.GEN] == 1                  # one job on this pool ...
        assert pool.state[P.N] == pool.state[P.DONE] == tasks   # ... of that many tasks
    finally:
        pool.close()
    for g, o in zip(got, one):
        np.testing.assert_array_equal(g, o)


def test_lstm_partial_sequence_lens_falls_back():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 2, 3))
    outs = gb.op("lstm", x, gb.constant(rand(1, 20, 3)), gb.constant(rand(1, 20, 5)), None,
                 gb.constant(np.array([4, 2], np.int32)), hidden_size=5)
    gb.output(outs[0], "y")
    cpu = run_both(gb.module(), [rand(4, 2, 3)], None)
    assert "lstm" in cpu.fallback_ops


def test_lstm_full_sequence_lens_is_native():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 2, 3))
    outs = gb.op("lstm", x, gb.constant(rand(1, 20, 3)), gb.constant(rand(1, 20, 5)), None,
                 gb.constant(np.array([4, 4], np.int32)), hidden_size=5)
    gb.output(outs[1], "h")
    run_both(gb.module(), [rand(4, 2, 3)], "lstm")


# -- attention ----------------------------------------------------------------------------------
def _attention(q_shape, k_shape, v_shape, mask=None, **attrs):
    gb = GraphBuilder()
    q = gb.input("q", tensor("f32", *q_shape))
    k = gb.input("k", tensor("f32", *k_shape))
    v = gb.input("v", tensor("f32", *v_shape))
    feeds = [rand(*q_shape), rand(*k_shape), rand(*v_shape)]
    mv = None
    if mask is not None:
        mv = gb.constant(mask)
    y = gb.op("attention", q, k, v, mv, **attrs)[0]
    gb.output(y, "y")
    return gb.module(), feeds


@pytest.mark.parametrize("shapes", [
    ((1, 4, 64, 32), (1, 4, 64, 32), (1, 4, 64, 32)),     # the torch encoder's shape
    ((2, 3, 70, 20), (2, 3, 67, 20), (2, 3, 67, 9)),      # odd sizes, Dv != D, 2 row blocks
    ((2, 6, 5, 8), (2, 2, 13, 8), (2, 2, 13, 8)),         # grouped-query heads
    ((2, 4, 64, 32), (2, 4, 64, 32), (2, 4, 64, 32)),     # split over the pool
    ((1, 2, 40, 32), (1, 2, 600, 32), (1, 2, 600, 32)),   # long keys: the sgemm path
])
def test_attention_shapes(shapes):
    m, feeds = _attention(*shapes)
    run_both(m, feeds, "attention")


def test_attention_causal_scale_softcap():
    m, feeds = _attention((2, 2, 9, 16), (2, 2, 12, 16), (2, 2, 12, 16), is_causal=1, scale=0.3,
                          softcap=2.5)
    run_both(m, feeds, "attention")


def test_attention_float_mask_broadcast():
    mask = rand(7, 11)
    mask[2, :] = -np.inf          # a row with nothing to attend to gives zeros
    m, feeds = _attention((2, 3, 7, 8), (2, 3, 11, 8), (2, 3, 11, 8), mask=mask)
    cpu = run_both(m, feeds, "attention")
    assert np.all(cpu(*feeds)[0][:, :, 2] == 0)


def test_attention_bool_mask_per_head():
    mask = RNG.random((1, 3, 7, 19)) > 0.3
    m, feeds = _attention((2, 3, 7, 8), (2, 3, 19, 8), (2, 3, 19, 8), mask=mask, is_causal=1)
    run_both(m, feeds, "attention")


def test_attention_3d_packed_heads():
    m, feeds = _attention((2, 9, 4 * 8), (2, 11, 2 * 8), (2, 11, 2 * 6), q_num_heads=4,
                          kv_num_heads=2)
    run_both(m, feeds, "attention")


def test_attention_used_present_key_falls_back():
    gb = GraphBuilder()
    q, k, v = (gb.input(n, tensor("f32", 1, 2, 5, 4)) for n in "qkv")
    y, pk, _, _ = gb.op("attention", q, k, v)
    gb.output(y, "y")
    gb.output(pk, "pk")
    cpu = run_both(gb.module(), [rand(1, 2, 5, 4) for _ in range(3)], None)
    assert "attention" in cpu.fallback_ops


# -- gather with constant indices ---------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,idx", [
    ((3, 64, 1, 128), 0, np.array(1, np.int64)),      # torch's select of q/k/v
    ((4, 5, 6), 1, np.array([4, -1, 0, 2], np.int64)),
    ((4, 5, 6), -1, np.array([[5, 0], [1, 1]], np.int32)),
])
def test_gather_constant_indices(shape, axis, idx):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", *shape))
    gb.output(gb.gather(x, gb.constant(idx), axis=axis), "y")
    run_both(gb.module(), [rand(*shape)], "gather")


def test_gather_runtime_indices_run_natively():
    """Checked in the kernel (tests/test_cpu_data.py covers out-of-range indices)."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4, 3))
    i = gb.input("i", tensor("i64", 2))
    gb.output(gb.gather(x, i, axis=0), "y")
    cpu = gx.compile(gb.module(), target="cpu")
    np.testing.assert_array_equal(cpu(np.arange(12, dtype=np.float32).reshape(4, 3),
                                      np.array([3, 0]))[0], [[9, 10, 11], [0, 1, 2]])
    assert "gather" in cpu.native_ops and not cpu.fallback_ops, cpu.report()


# -- whole torch models -------------------------------------------------------------------------
def test_torch_lstm_and_encoder_run_in_one_native_segment():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 24, num_layers=2, batch_first=True, bidirectional=True)
    enc = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64,
                                           batch_first=True)
    for module, x in ((lstm, torch.randn(2, 9, 16)), (enc, torch.randn(2, 10, 32))):
        m = gx.import_model(module.eval(), example_inputs=(x,))
        cpu = run_both(m, [x.numpy()], None, atol=1e-4)
        assert not cpu.fallback_ops, cpu.report()
        assert len(cpu.last.segments) == 1, cpu.report()
        with torch.no_grad():
            want = module(x)
        want = want[0] if isinstance(want, tuple) else want
        np.testing.assert_allclose(cpu(x.numpy())[0], want.numpy(), rtol=1e-4, atol=1e-4)
