"""Kernels for recurrent layers, attention variants, rotary embedding and swiglu.

Recurrences loop over time steps only (every step is a batched matmul); everything else
is vectorized.  Half-precision inputs compute in float32 and round where ONNX's
reference rounds (after each matmul), so results match it closely.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ...errors import ExecutionError
from ...ir.ops.sequence_models import flex_score_dtype
from ...ir.types import DType
from ..registry import kernel

_HALF = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def _work_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dt in _HALF else dt


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """matmul in a's dtype (half types through float32, rounded back once)."""
    if a.dtype in _HALF:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)


# -- recurrent layers -----------------------------------------------------------------------------
_NEEDS_ALPHA = {"affine": 1.0, "leakyrelu": 0.01, "thresholdedrelu": 1.0, "scaledtanh": 1.0,
                "hardsigmoid": 0.2, "elu": 1.0}
_NEEDS_BETA = {"affine": 0.0, "scaledtanh": 1.0, "hardsigmoid": 0.5}


def _activation(name: str, alpha: float | None, beta: float | None):
    n = name.lower()
    a = _NEEDS_ALPHA.get(n) if alpha is None else alpha
    b = _NEEDS_BETA.get(n) if beta is None else beta
    if n == "sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    if n == "tanh":
        return np.tanh
    if n == "relu":
        return lambda x: np.maximum(x, 0)
    if n == "affine":
        return lambda x: a * x + b
    if n == "leakyrelu":
        return lambda x: np.where(x >= 0, x, a * x)
    if n == "thresholdedrelu":
        return lambda x: np.where(x > a, x, 0)
    if n == "scaledtanh":
        return lambda x: a * np.tanh(b * x)
    if n == "hardsigmoid":
        return lambda x: np.clip(a * x + b, 0, 1)
    if n == "elu":
        return lambda x: np.where(x >= 0, x, a * (np.exp(x) - 1))
    if n == "softsign":
        return lambda x: x / (1 + np.abs(x))
    if n == "softplus":
        return lambda x: np.logaddexp(x, 0)
    raise ExecutionError(f"recurrent layer: unknown activation {name!r}")


def _activations(ctx, defaults: list[str], nd: int) -> list[list]:
    """Per direction, the activation functions (alpha/beta consumed in order by the
    activations that take them, as onnxruntime does)."""
    names = list(ctx.attr("activations") or [])
    per = len(defaults)
    if not names:
        names = defaults * nd
    elif len(names) == per and nd == 2:
        names = names * 2
    if len(names) != per * nd:
        raise ExecutionError(f"{ctx.op.name}: expected {per * nd} activations, got {len(names)}")
    alphas = list(ctx.attr("activation_alpha") or [])
    betas = list(ctx.attr("activation_beta") or [])
    fns = []
    for n in names:
        a = alphas.pop(0) if n.lower() in _NEEDS_ALPHA and alphas else None
        b = betas.pop(0) if n.lower() in _NEEDS_BETA and betas else None
        fns.append(_activation(n, a, b))
    return [fns[i * per:(i + 1) * per] for i in range(nd)]


def _time_index(lens: np.ndarray, seq: int) -> np.ndarray:
    """[seq, batch] index reversing each batch entry's valid prefix (an involution)."""
    t = np.arange(seq)[:, None]
    return np.where(t < lens[None, :], lens[None, :] - 1 - t, t)


def _recurrent(ctx, kind: str, X, W, R, B, seq_lens, h0, c0=None, P=None):
    layout = ctx.attr("layout")
    direction = ctx.attr("direction")
    nd = 2 if direction == "bidirectional" else 1
    if layout:
        X = np.swapaxes(X, 0, 1)
        h0 = None if h0 is None else np.swapaxes(h0, 0, 1)
        c0 = None if c0 is None else np.swapaxes(c0, 0, 1)
    out_dt = X.dtype
    wd = _work_dtype(out_dt)
    seq, batch, _ = X.shape
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    hidden = ctx.attr("hidden_size") or W.shape[1] // gates
    if W.shape[0] != nd:
        raise ExecutionError(f"{ctx.op.name}: W has {W.shape[0]} directions, expected {nd}")
    lens = np.full(batch, seq, np.int64) if seq_lens is None else np.asarray(seq_lens).astype(np.int64)
    valid = (np.arange(seq)[:, None] < lens[None, :])[..., None]  # [seq, batch, 1]
    clip = ctx.attr("clip")
    cl = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    defaults = {"rnn": ["Tanh"], "gru": ["Sigmoid", "Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"]}[kind]
    acts = _activations(ctx, defaults, nd)
    Xw = X.astype(wd)
    ys, hs, cs = [], [], []
    for d in range(nd):
        rev = direction == "reverse" or d == 1
        xd = Xw
        if rev:
            idx = _time_index(lens, seq)
            xd = Xw[idx, np.arange(batch)[None, :]]
        w, r = W[d].astype(wd), R[d].astype(wd)
        if B is not None:
            wb, rb = B[d, :gates * hidden].astype(wd), B[d, gates * hidden:].astype(wd)
        else:
            wb = rb = np.zeros(gates * hidden, wd)
        h = np.zeros((batch, hidden), wd) if h0 is None else h0[d].astype(wd)
        c = np.zeros((batch, hidden), wd) if (c0 is None or kind != "lstm") else c0[d].astype(wd)
        fns = acts[d]
        if kind == "gru":
            xw = xd @ w.T + wb  # every gate's input part and W bias
            xw[..., :2 * hidden] += rb[:2 * hidden]
            rbh = rb[2 * hidden:]
        else:
            xw = xd @ w.T + (wb + rb)
        if kind == "lstm" and P is not None:
            pi, po, pf = (P[d, k * hidden:(k + 1) * hidden].astype(wd) for k in range(3))
        else:
            pi = po = pf = None
        y = np.zeros((seq, batch, hidden), wd)
        for t in range(seq):
            m = valid[t]
            if kind == "rnn":
                h_new = fns[0](cl(xw[t] + h @ r.T))
            elif kind == "gru":
                hz = h @ r[:2 * hidden].T
                z = fns[0](cl(xw[t, :, :hidden] + hz[:, :hidden]))
                rr = fns[0](cl(xw[t, :, hidden:2 * hidden] + hz[:, hidden:]))
                rh = r[2 * hidden:]
                if ctx.attr("linear_before_reset"):
                    hh = fns[1](cl(xw[t, :, 2 * hidden:] + rr * (h @ rh.T + rbh)))
                else:
                    hh = fns[1](cl(xw[t, :, 2 * hidden:] + (rr * h) @ rh.T + rbh))
                h_new = (1 - z) * hh + z * h
            else:
                g = xw[t] + h @ r.T
                gi, go, gf, gc = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
                if pi is not None:
                    gi, gf = gi + pi * c, gf + pf * c
                i = fns[0](cl(gi))
                f = 1 - i if ctx.attr("input_forget") else fns[0](cl(gf))
                c_new = f * c + i * fns[1](cl(gc))
                if po is not None:
                    go = go + po * c_new
                o = fns[0](cl(go))
                h_new = o * fns[2](c_new)
                c = np.where(m, c_new, c)
            h = np.where(m, h_new, h)
            y[t] = np.where(m, h_new, 0)
        if rev:
            y = y[_time_index(lens, seq), np.arange(batch)[None, :]]
        ys.append(y)
        hs.append(h)
        cs.append(c)
    Y = np.stack(ys, axis=1).astype(out_dt)  # [seq, nd, batch, hidden]
    Yh = np.stack(hs).astype(out_dt)
    Yc = np.stack(cs).astype(out_dt)
    if layout:
        Y = np.transpose(Y, (2, 0, 1, 3))
        Yh, Yc = np.swapaxes(Yh, 0, 1), np.swapaxes(Yc, 0, 1)
    return Y, Yh, Yc


@kernel("rnn")
def rnn(ctx, X, W, R, B=None, seq_lens=None, h0=None):
    return _recurrent(ctx, "rnn", X, W, R, B, seq_lens, h0)[:2]


@kernel("gru")
def gru(ctx, X, W, R, B=None, seq_lens=None, h0=None):
    return _recurrent(ctx, "gru", X, W, R, B, seq_lens, h0)[:2]


@kernel("lstm")
def lstm(ctx, X, W, R, B=None, seq_lens=None, h0=None, c0=None, P=None):
    return _recurrent(ctx, "lstm", X, W, R, B, seq_lens, h0, c0, P)


# -- attention --------------------------------------------------------------------------------------
def _heads_4d(x: np.ndarray, heads: int) -> np.ndarray:
    b, s, hidden = x.shape
    if hidden % heads:
        raise ExecutionError(f"attention: hidden size {hidden} is not divisible by {heads} heads")
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def safe_softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row that is all -inf gives zeros, not NaN."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), np.zeros((), x.dtype), m)
    e = np.exp(x - m)
    s = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(s == 0, np.ones((), x.dtype), s)


def _allowed_bias(allowed: np.ndarray, dt) -> np.ndarray:
    return np.where(allowed, dt.type(0), dt.type(-np.inf))


def _frontier(sq: int, t: int, offset, fn) -> tuple[np.ndarray, bool]:
    """fn(diff) -> allowed, where diff = (i + offset) - j; per batch when offset is 1-D."""
    i = np.arange(sq)[:, None]
    j = np.arange(t)[None, :]
    if np.ndim(offset) > 0:
        diff = (i + np.reshape(offset, (-1, 1, 1))) - j
        return fn(diff)[:, None], True  # (B, 1, Sq, T)
    return fn((i + int(offset)) - j), False


def attention_bias(mask, sq: int, t: int, dt, is_causal: bool, past_len: int, nonpad,
                   left: int, right: int) -> np.ndarray:
    """The additive bias (0 / -inf / float mask) of ONNX Attention, broadcastable to
    (B, Hq, Sq, T)."""
    if mask is not None and mask.shape[-1] < t:
        pad = [(0, 0)] * (mask.ndim - 1) + [(0, t - mask.shape[-1])]
        mask = np.pad(mask, pad, constant_values=False if mask.dtype == np.bool_ else -np.inf)
    if mask is not None:
        bias = _allowed_bias(mask, dt) if mask.dtype == np.bool_ else mask.astype(dt)
        bias = np.zeros((sq, t), dt) + bias if (is_causal or left >= 0 or right >= 0) \
            or bias.ndim < 2 else bias
    else:
        bias = np.zeros((sq, t), dt)
    offset = (np.asarray(nonpad).reshape(-1) - sq) if (nonpad is not None and past_len == 0) else past_len
    if is_causal:
        allowed, _ = _frontier(sq, t, offset, lambda diff: diff >= 0)
        bias = bias + _allowed_bias(allowed, dt)
    if left >= 0 or right >= 0:
        def window(diff):
            ok = np.ones(diff.shape, np.bool_)
            if left >= 0:
                ok &= diff <= left
            if right >= 0:
                ok &= -diff <= right
            return ok
        allowed, _ = _frontier(sq, t, offset, window)
        bias = bias + _allowed_bias(allowed, dt)
    if nonpad is not None:
        keep = np.arange(t)[None, :] < np.asarray(nonpad).reshape(-1, 1)
        bias = bias + _allowed_bias(keep, dt)[:, None, None, :]
    return bias


@kernel("attention")
def attention(ctx, Q, K, V, mask=None, past_k=None, past_v=None, nonpad=None):
    rank = Q.ndim
    if not (K.ndim == V.ndim == rank) or rank not in (3, 4):
        raise ExecutionError(f"attention: Q, K, V must all be rank 3 or 4, got {Q.shape}, {K.shape}, {V.shape}")
    if rank == 3:
        Q = _heads_4d(Q, ctx.attr("q_num_heads"))
        K = _heads_4d(K, ctx.attr("kv_num_heads"))
        V = _heads_4d(V, ctx.attr("kv_num_heads"))
    dt = Q.dtype
    scale = ctx.attr("scale")
    if scale is None:
        scale = 1.0 / np.sqrt(Q.shape[3])
    s = dt.type(np.sqrt(scale))
    if past_k is not None:
        K = np.concatenate([past_k, K], axis=2)
        V = np.concatenate([past_v, V], axis=2)
    present_k, present_v = K, V
    sq, t = Q.shape[2], K.shape[2]
    past_len = past_k.shape[2] if past_k is not None else 0
    if nonpad is not None and past_k is not None:
        raise ExecutionError("attention: nonpad_kv_seqlen cannot be combined with past_key/past_value")
    bias = attention_bias(mask, sq, t, dt, bool(ctx.attr("is_causal")), past_len, nonpad,
                          ctx.attr("left_window_size"), ctx.attr("right_window_size"))
    hq, hkv = Q.shape[1], K.shape[1]
    if hq != hkv:
        if hkv == 0 or hq % hkv:
            raise ExecutionError(f"attention: {hq} query heads are not a multiple of {hkv} kv heads")
        K = np.repeat(K, hq // hkv, axis=1)
        V = np.repeat(V, hq // hkv, axis=1)
    qk = _mm(Q * s, np.swapaxes(K * s, -1, -2))
    softcap = ctx.attr("softcap")
    if softcap and softcap > 0:
        qk = (np.tanh(qk / dt.type(softcap)) * dt.type(softcap)).astype(dt)
    scores = qk + bias
    mode = ctx.attr("qk_matmul_output_mode")
    qk_out = scores if mode == 2 else qk
    prec = ctx.attr("softmax_precision")
    if prec is not None:
        scores = scores.astype(prec.numpy)
    probs = safe_softmax(scores)
    dead = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    probs = np.where(dead, np.zeros((), probs.dtype), probs)
    if mode == 3:
        qk_out = probs
    qk_out = np.broadcast_to(qk_out.astype(dt), Q.shape[:3] + (t,))
    Y = _mm(probs.astype(dt), V)
    if rank == 3:
        Y = Y.transpose(0, 2, 1, 3).reshape(Y.shape[0], Y.shape[2], -1)
    return Y, present_k, present_v, qk_out


@kernel("linear_attention")
def linear_attention(ctx, q, k, v, past=None, decay=None, beta=None):
    hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    rule = ctx.attr("update_rule")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    b, t, _ = q.shape
    dk, dv = q.shape[2] // hq, v.shape[2] // hkv
    q4 = _heads_4d(q, hq).astype(np.float32)
    k4 = _heads_4d(k, hkv).astype(np.float32)
    v4 = _heads_4d(v, hkv).astype(np.float32)
    if gated:
        if decay.shape[-1] == hkv:
            g4 = decay.reshape(b, t, hkv, 1).transpose(0, 2, 1, 3)
        elif decay.shape[-1] == hkv * dk:
            g4 = _heads_4d(decay, hkv)
        else:
            raise ExecutionError(f"linear_attention: decay's last dim {decay.shape[-1]} must be "
                                 f"{hkv} or {hkv * dk}")
        g4 = np.exp(g4.astype(np.float32))
    if delta:
        if beta.shape[-1] not in (hkv, 1):
            raise ExecutionError(f"linear_attention: beta's last dim {beta.shape[-1]} must be {hkv} or 1")
        b4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(0, 2, 1, 3).astype(np.float32)
    if past is not None:
        if past.shape != (b, hkv, dk, dv):
            raise ExecutionError(f"linear_attention: past_state shape {past.shape} is not {(b, hkv, dk, dv)}")
        state = past.astype(np.float32)
    else:
        state = np.zeros((b, hkv, dk, dv), np.float32)
    scale = ctx.attr("scale") or 1.0 / np.sqrt(dk)
    group = hq // hkv
    qg = q4.reshape(b, hkv, group, t, dk)  # query heads sharing one kv head
    out = np.empty((b, hkv, group, t, dv), np.float32)
    for i in range(t):
        kt, vt = k4[:, :, i], v4[:, :, i]
        if gated:
            state = state * g4[:, :, i][..., None]
        if delta:
            vt = b4[:, :, i] * (vt - np.einsum("bhdm,bhd->bhm", state, kt))
        state = state + kt[..., :, None] * vt[..., None, :]
        out[:, :, :, i] = scale * np.einsum("bhgd,bhdm->bhgm", qg[:, :, :, i], state)
    out = out.reshape(b, hq, t, dv).transpose(0, 2, 1, 3).reshape(b, t, hq * dv)
    return out.astype(ctx.result_dtype(0)), state.astype(ctx.result_dtype(1))


@kernel("preview.flex_attention")
def flex_attention(ctx, Q, K, V):
    hq, hkv = Q.shape[1], K.shape[1]
    if hq != hkv:
        if hkv == 0 or hq % hkv:
            raise ExecutionError(f"flex_attention: {hq} query heads are not a multiple of {hkv} kv heads")
        K = np.repeat(K, hq // hkv, axis=1)
        V = np.repeat(V, hq // hkv, axis=1)
    scale = ctx.attr("scale")
    if scale is None:
        scale = 1.0 / np.sqrt(Q.shape[3])
    s = np.asarray(np.sqrt(np.float32(scale)), dtype=Q.dtype)
    scores = _mm(Q * s, np.swapaxes(K * s, -1, -2))
    cdt = flex_score_dtype(DType.from_numpy(Q.dtype), ctx.attr("softmax_precision")).numpy
    scores = np.asarray(ctx.run_region(0, [scores.astype(cdt)])[0], dtype=cdt)
    m = np.max(scores, axis=-1, keepdims=True)
    e = np.exp(scores - m)
    probs = e / np.sum(e, axis=-1, keepdims=True)
    probs = np.asarray(ctx.run_region(1, [probs])[0], dtype=cdt)
    return np.matmul(probs, V.astype(cdt)).astype(V.dtype)


# -- rotary embedding, swiglu -----------------------------------------------------------------------
@kernel("rotary_embedding")
def rotary_embedding(ctx, x, cos, sin, position_ids=None):
    shape = x.shape
    if x.ndim == 4:
        xs = x.transpose(0, 2, 1, 3)  # (B, S, H, D)
    else:
        heads = ctx.attr("num_heads")
        if not heads:
            raise ExecutionError("rotary_embedding: a 3-D input needs num_heads")
        xs = x.reshape(shape[0], shape[1], heads, shape[2] // heads)
    d = xs.shape[3]
    rd = ctx.attr("rotary_embedding_dim") or d
    half = rd // 2
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    if cos.shape[-1] != half or sin.shape[-1] != half:
        raise ExecutionError(f"rotary_embedding: caches have last dim {cos.shape[-1]}, expected {half}")
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot = xs[..., :rd]
    if ctx.attr("interleaved"):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if ctx.attr("interleaved"):
        rot = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rot = np.concatenate([real, imag], axis=-1)
    out = np.concatenate([rot.astype(x.dtype), xs[..., rd:]], axis=-1)
    return out.reshape(shape) if x.ndim == 3 else out.transpose(0, 2, 1, 3)


@kernel("swiglu")
def swiglu(ctx, a, b):
    wd = _work_dtype(a.dtype)
    af = a.astype(wd)
    alpha = wd.type(ctx.attr("alpha"))
    return (af / (1 + np.exp(-alpha * af)) * b.astype(wd)).astype(a.dtype)
