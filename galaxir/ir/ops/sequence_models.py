"""Sequence-model ops: recurrent layers (lstm, gru, rnn), attention (attention,
linear_attention, preview.flex_attention), rotary_embedding and swiglu.

``attention``, ``rotary_embedding`` and ``swiglu`` are composite ops: they carry a
decomposition into core ops (the builders at the end of this module) so a backend without
a fused kernel still runs them.
"""
from __future__ import annotations

import numpy as np

from ...errors import UnsupportedOpError
from ..opdef import INDEX, INT64, attr, define
from ..types import UNKNOWN, DType, TensorType
from .rules import dim_add, fail, tensor_operand


def _dim_div(op, d, n: int, what: str):
    if isinstance(d, int):
        if n <= 0 or d % n:
            raise fail(op, f"{what} {d} is not divisible by {n}")
        return d // n
    return UNKNOWN


def _dims(t: TensorType, rank: int):
    return t.shape if t.shape is not None else (UNKNOWN,) * rank


# -- recurrent layers -----------------------------------------------------------------------
RNN_ATTRS = {"activation_alpha": attr("floats"), "activation_beta": attr("floats"),
             "activations": attr("strs"), "clip": attr("float"),
             "direction": attr("str", "forward"), "hidden_size": attr("int"),
             "layout": attr("int", 0)}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _rnn_rule(gates: int, with_cell: bool):
    def rule(op):
        x, w = tensor_operand(op, 0), tensor_operand(op, 1)
        direction = op.attr("direction")
        if direction not in DIRECTIONS:
            raise fail(op, f"direction must be forward, reverse or bidirectional, got {direction!r}")
        nd = DIRECTIONS[direction]
        if x.shape is not None and len(x.shape) != 3:
            raise fail(op, f"X must be rank 3, got {x}")
        if w.shape is not None and len(w.shape) != 3:
            raise fail(op, f"W must be rank 3 [num_directions, {gates}*hidden, input], got {w}")
        if w.shape is not None and isinstance(w.shape[0], int) and w.shape[0] != nd:
            raise fail(op, f"W has {w.shape[0]} directions, direction={direction!r} needs {nd}")
        hidden = op.attr("hidden_size")
        if hidden is None:
            hidden = _dim_div(op, w.shape[1], gates, "W's gate dim") if w.shape is not None else UNKNOWN
        xs = _dims(x, 3)
        if op.attr("layout"):
            batch, seq = xs[0], xs[1]
            y = (batch, seq, nd, hidden)
            h = (batch, nd, hidden)
        else:
            seq, batch = xs[0], xs[1]
            y = (seq, nd, batch, hidden)
            h = (nd, batch, hidden)
        out = [TensorType(x.dtype, y), TensorType(x.dtype, h)]
        if with_cell:
            out.append(TensorType(x.dtype, h))
        return out
    return rule


RNN_TYPES = {"X": "T", "W": "T", "R": "T", "B": "T", "initial_h": "T", "sequence_lens": INDEX}

define("rnn", operands=["X", "W", "R", "B?", "sequence_lens?", "initial_h?"], attrs=dict(RNN_ATTRS),
       infer=_rnn_rule(1, False), num_results=2, types=RNN_TYPES,
       doc="Elman RNN (ONNX RNN): results Y, Y_h.")
define("gru", operands=["X", "W", "R", "B?", "sequence_lens?", "initial_h?"],
       attrs={**RNN_ATTRS, "linear_before_reset": attr("int", 0)},
       infer=_rnn_rule(3, False), num_results=2, types=RNN_TYPES,
       doc="ONNX GRU (gates z, r, h): results Y, Y_h.")
define("lstm", operands=["X", "W", "R", "B?", "sequence_lens?", "initial_h?", "initial_c?", "P?"],
       attrs={**RNN_ATTRS, "input_forget": attr("int", 0)},
       infer=_rnn_rule(4, True), num_results=3,
       types={**RNN_TYPES, "initial_c": "T", "P": "T"},
       doc="ONNX LSTM (gates i, o, f, c; peepholes i, o, f): results Y, Y_h, Y_c.")


# -- attention --------------------------------------------------------------------------------
def attention_dims(op):
    """(batch, q_heads, q_len, head, kv_heads, kv_len, v_head, past_len, rank) of an
    attention op, symbolic where unknown."""
    q, k, v = (tensor_operand(op, i) for i in range(3))
    ranks = {t.rank for t in (q, k, v) if t.rank is not None}
    if len(ranks) > 1:
        raise fail(op, f"Q, K and V must have the same rank, got {q}, {k}, {v}")
    rank = ranks.pop() if ranks else 4
    if rank not in (3, 4):
        raise fail(op, f"Q, K and V must be rank 3 or 4, got rank {rank}")
    qs, ks, vs = _dims(q, rank), _dims(k, rank), _dims(v, rank)
    if rank == 4:
        batch, hq, sq, d = qs
        _, hkv, skv, _ = ks
        dv = vs[3]
    else:
        hq, hkv = op.attr("q_num_heads"), op.attr("kv_num_heads")
        if hq is None or hkv is None:
            raise fail(op, "3-D Q/K/V need the q_num_heads and kv_num_heads attributes")
        batch, sq = qs[0], qs[1]
        skv = ks[1]
        d = _dim_div(op, qs[2], hq, "Q's hidden size")
        dv = _dim_div(op, vs[2], hkv, "V's hidden size")
    if isinstance(hq, int) and isinstance(hkv, int) and hkv and hq % hkv:
        raise fail(op, f"q_num_heads {hq} must be a multiple of kv_num_heads {hkv}")
    past = 0
    if op.operand(4) is not None:
        pk = tensor_operand(op, 4)
        past = pk.shape[2] if pk.shape is not None and len(pk.shape) == 4 else UNKNOWN
    return batch, hq, sq, d, hkv, skv, dv, past, rank


def _attention(op):
    q, k, v = (tensor_operand(op, i) for i in range(3))
    if (op.operand(4) is None) != (op.operand(5) is None):
        raise fail(op, "past_key and past_value must be given together")
    if op.operand(6) is not None and op.operand(4) is not None:
        raise fail(op, "nonpad_kv_seqlen (external KV cache) cannot be combined with past_key/past_value")
    batch, hq, sq, d, hkv, skv, dv, past, rank = attention_dims(op)
    total = dim_add(past, skv)
    if rank == 4:
        y = (batch, hq, sq, dv)
    else:
        y = (batch, sq, hq * dv if isinstance(hq, int) and isinstance(dv, int) else UNKNOWN)
    return [TensorType(q.dtype, y), TensorType(k.dtype, (batch, hkv, total, d)),
            TensorType(v.dtype, (batch, hkv, total, dv)), TensorType(q.dtype, (batch, hq, sq, total))]


define("attention", operands=["Q", "K", "V", "attn_mask?", "past_key?", "past_value?",
                              "nonpad_kv_seqlen?"],
       attrs={"is_causal": attr("int", 0), "kv_num_heads": attr("int"), "q_num_heads": attr("int"),
              "qk_matmul_output_mode": attr("int", 0), "scale": attr("float"),
              "softcap": attr("float", 0.0), "softmax_precision": attr("dtype"),
              "left_window_size": attr("int", -1), "right_window_size": attr("int", -1)},
       infer=_attention, num_results=4, decompose=lambda b, op: decompose_attention(b, op),
       types={"Q": "T1", "K": "T1", "past_key": "T1", "V": "T2", "past_value": "T2",
              "nonpad_kv_seqlen": INT64},
       doc="Scaled dot-product attention (ONNX Attention, MHA/GQA/MQA, masks, causal, "
           "softcap, KV cache, sliding window): results Y, present_key, present_value, "
           "qk_matmul_output.")


def _linear_attention(op):
    q, k, v = (tensor_operand(op, i) for i in range(3))
    hq, hkv = op.attr("q_num_heads"), op.attr("kv_num_heads")
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise fail(op, f"q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}")
    rule = op.attr("update_rule")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise fail(op, f"update_rule must be linear, gated, delta or gated_delta, got {rule!r}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated != (op.operand(4) is not None):
        raise fail(op, f"update_rule {rule!r} {'needs' if gated else 'forbids'} the decay operand")
    if delta != (op.operand(5) is not None):
        raise fail(op, f"update_rule {rule!r} {'needs' if delta else 'forbids'} the beta operand")
    for t, name in ((q, "query"), (k, "key"), (v, "value")):
        if t.rank is not None and t.rank != 3:
            raise fail(op, f"{name} must be rank 3 [B, T, H*D], got {t}")
    qs, vs = _dims(q, 3), _dims(v, 3)
    dk = _dim_div(op, qs[2], hq, "query's hidden size")
    dv = _dim_div(op, vs[2], hkv, "value's hidden size")
    out = (qs[0], qs[1], hq * dv if isinstance(dv, int) else UNKNOWN)
    sdt = tensor_operand(op, 3).dtype if op.operand(3) is not None else q.dtype
    return [TensorType(q.dtype, out), TensorType(sdt, (qs[0], hkv, dk, dv))]


define("linear_attention", operands=["query", "key", "value", "past_state?", "decay?", "beta?"],
       attrs={"chunk_size": attr("int", 64), "kv_num_heads": attr("int", required=True),
              "q_num_heads": attr("int", required=True), "scale": attr("float", 0.0),
              "update_rule": attr("str", "gated_delta")},
       infer=_linear_attention, num_results=2,
       types={"query": "T", "key": "T", "value": "T", "decay": "T", "beta": "T"},
       doc="Recurrent linear attention (linear / gated / delta / gated_delta rules): results "
           "output [B,T,Hq*dv] and present_state [B,Hkv,dk,dv].")


def flex_score_dtype(q: DType, precision: DType | None) -> DType:
    """The dtype scores and probabilities have inside flex attention."""
    if precision is not None:
        return precision
    return DType.float64 if q is DType.float64 else DType.float32


def _flex_attention(op):
    q, k, v = (tensor_operand(op, i) for i in range(3))
    for t, name in ((q, "Q"), (k, "K"), (v, "V")):
        if t.rank is not None and t.rank != 4:
            raise fail(op, f"{name} must be rank 4, got {t}")
    qs, vs = _dims(q, 4), _dims(v, 4)
    for i, region in enumerate(op.regions):
        if len(region.block.args) != 1 or len(region.block.results) != 1:
            raise fail(op, f"region {i} must take one tensor and return one")
    return [TensorType(v.dtype, (qs[0], qs[1], qs[2], vs[3]))]


define("preview.flex_attention", operands=["Q", "K", "V"],
       attrs={"scale": attr("float"), "softmax_precision": attr("dtype")}, regions=2,
       infer=_flex_attention, types={"Q": "T", "K": "T"},
       doc="Attention with user subgraphs: region 0 modifies the scores (score_mod), region 1 "
           "the probabilities (prob_mod); an absent modifier is an identity region.")


# -- rotary embedding, swiglu ---------------------------------------------------------------------
def _rotary(op):
    x = tensor_operand(op, 0)
    if x.rank is not None and x.rank not in (3, 4):
        raise fail(op, f"input must be rank 3 or 4, got {x}")
    if x.rank == 3 and not op.attr("num_heads"):
        raise fail(op, "a 3-D input needs the num_heads attribute")
    return [x]


define("rotary_embedding", operands=["X", "cos_cache", "sin_cache", "position_ids?"],
       attrs={"interleaved": attr("int", 0), "num_heads": attr("int"),
              "rotary_embedding_dim": attr("int", 0)},
       infer=_rotary, decompose=lambda b, op: decompose_rotary(b, op),
       types={"X": "T", "cos_cache": "T", "sin_cache": "T", "position_ids": INT64},
       doc="Rotary position embedding (RoPE), half-split or interleaved, full or partial.")


def _swiglu(op):
    a, bt = tensor_operand(op, 0), tensor_operand(op, 1)
    if a.shape is not None and bt.shape is not None:
        if len(a.shape) != len(bt.shape) or any(isinstance(x, int) and isinstance(y, int) and x != y
                                                for x, y in zip(a.shape, bt.shape)):
            raise fail(op, f"A and B must have the same shape, got {a} and {bt}")
    return [a if a.shape is not None else bt.with_dtype(a.dtype)]


def _swiglu_decompose(b, op):
    a, v = op.operands
    alpha = op.attr("alpha")
    dt = op.operand_types[0].dtype.numpy
    g = b.mul(a, b.constant(np.array(alpha, dt))) if alpha != 1.0 else a
    return [b.mul(b.mul(a, b.sigmoid(g)), v)]


define("swiglu", operands=["A", "B"], attrs={"alpha": attr("float", 1.0)}, infer=_swiglu,
       types={"A": "T", "B": "T"},
       decompose=_swiglu_decompose, doc="Y = A * sigmoid(alpha * A) * B.")


# -- decompositions into core ops ----------------------------------------------------------------
def _i64(b, values):
    return b.constant(np.asarray(values, dtype=np.int64))


def _to_heads(b, x, heads: int):
    """[B, S, H*D] -> [B, H, S, D] (symbolic B and S kept: reshape copies them with 0)."""
    return b.transpose(b.reshape(x, _i64(b, [0, 0, heads, -1])), perm=(0, 2, 1, 3))


def _repeat_heads(b, x, group: int):
    """[B, Hkv, T, D] -> [B, Hkv*group, T, D], each head repeated ``group`` times in a row."""
    x5 = b.unsqueeze(x, _i64(b, [2]))
    x5 = b.expand(x5, _i64(b, [1, 1, group, 1, 1]))
    target = b.concat(b.shape(x, end=1), _i64(b, [-1]), b.shape(x, start=2), axis=0)
    return b.reshape(x5, target)


def _length(b, x, axis: int):
    """Dim ``axis`` of x as an int64 scalar (a constant when static)."""
    t = x.type
    if isinstance(t, TensorType) and t.shape is not None and isinstance(t.shape[axis], int):
        return _i64(b, t.shape[axis])
    return b.squeeze(b.shape(x, start=axis, end=axis + 1), _i64(b, [0]))


def decompose_attention(b, op):
    """Attention as core ops: reshape/transpose heads, concat the KV cache, scaled matmul,
    softcap, mask / causal bias, (guarded) softmax, matmul.  Sliding windows and
    nonpad_kv_seqlen are not decomposed (they keep the fused op)."""
    if op.operand(6) is not None or op.attr("left_window_size") >= 0 or op.attr("right_window_size") >= 0:
        raise UnsupportedOpError(f"attention: no decomposition for nonpad_kv_seqlen or sliding "
                                 f"windows (op from {', '.join(op.provenance) or 'builder'}); "
                                 "run it on a backend with an attention kernel")
    q, k, v, mask, past_k, past_v = (op.operand(i) for i in range(6))
    batch, hq, sq, d, hkv, skv, dv, past, rank = attention_dims(op)
    qt = op.operand_types[0]
    dt = qt.dtype.numpy
    if rank == 3:
        q, k, v = _to_heads(b, q, hq), _to_heads(b, k, hkv), _to_heads(b, v, hkv)
    if past_k is not None:
        k = b.concat(past_k, k, axis=2)
        v = b.concat(past_v, v, axis=2)
    present_k, present_v = k, v
    scale = op.attr("scale")
    if scale is None:
        if not isinstance(d, int):
            raise UnsupportedOpError("attention: decomposing needs a static head size or a scale")
        scale = 1.0 / np.sqrt(d)
    s = b.constant(np.asarray(np.sqrt(scale), dtype=dt))
    if not (isinstance(hq, int) and isinstance(hkv, int)):
        raise UnsupportedOpError("attention: decomposing needs static head counts")
    if hq != hkv:
        k, v = _repeat_heads(b, k, hq // hkv), _repeat_heads(b, v, hq // hkv)
    qk = b.matmul(b.mul(q, s), b.transpose(b.mul(k, s), perm=(0, 1, 3, 2)))
    softcap = op.attr("softcap")
    if softcap and softcap > 0:
        c = b.constant(np.asarray(softcap, dtype=dt))
        qk = b.mul(b.tanh(b.div(qk, c)), c)
    zero, ninf = b.constant(np.zeros((), dt)), b.constant(np.asarray(-np.inf, dt))
    bias = None
    if mask is not None:
        mt = op.operand_types[3]
        total = dim_add(past, skv)
        if mt.shape is not None and isinstance(mt.shape[-1], int) and isinstance(total, int) \
                and mt.shape[-1] < total:
            pads = [0] * (2 * len(mt.shape))
            pads[2 * len(mt.shape) - 1] = total - mt.shape[-1]
            fill = np.asarray(False) if mt.dtype is DType.bool else np.asarray(-np.inf, mt.dtype.numpy)
            mask = b.pad(mask, _i64(b, pads), b.constant(fill))
        bias = b.where(mask, zero, ninf) if mt.dtype is DType.bool else b.cast(mask, to=qt.dtype)
    if op.attr("is_causal"):
        i = b.unsqueeze(b.range(_i64(b, 0), _length(b, q, 2), _i64(b, 1)), _i64(b, [1]))
        j = b.range(_i64(b, 0), _length(b, present_k, 2), _i64(b, 1))
        if past_k is not None:
            i = b.add(i, _length(b, past_k, 2))
        causal = b.where(b.less_or_equal(j, i), zero, ninf)
        bias = causal if bias is None else b.add(bias, causal)
    scores = qk if bias is None else b.add(qk, bias)
    mode = op.attr("qk_matmul_output_mode")
    qk_out = scores if mode == 2 else qk
    prec = op.attr("softmax_precision")
    if prec is not None and prec != qt.dtype:
        scores = b.cast(scores, to=prec)
    probs = b.softmax(scores, axis=-1)
    if prec is not None and prec != qt.dtype:
        probs = b.cast(probs, to=qt.dtype)
    if mask is not None:  # a row with no key left gives zeros, not NaN
        row_max = b.reduce_max(bias, _i64(b, [-1]), keepdims=1)
        dead = b.isinf(row_max, detect_positive=0)
        probs = b.where(dead, zero, probs)
    if mode == 3:
        qk_out = probs
    if mode == 2 and bias is not None:  # the bias may broadcast: give the full shape
        qk_out = b.add(qk_out, b.mul(qk, zero))
    y = b.matmul(probs, v)
    if rank == 3:
        y = b.reshape(b.transpose(y, perm=(0, 2, 1, 3)), _i64(b, [0, 0, -1]))
    return [y, present_k, present_v, qk_out]


def decompose_rotary(b, op):
    """RoPE as core ops: gather the caches at the positions, split the rotated part in
    halves (or even/odd lanes), rotate, concat."""
    x, cos, sin, pos = (op.operand(i) for i in range(4))
    xt = op.operand_types[0]
    if xt.shape is None or not isinstance(xt.shape[-1], int):
        raise UnsupportedOpError("rotary_embedding: decomposing needs a static last dim")
    rank = len(xt.shape)
    if rank == 4:
        xs = b.transpose(x, perm=(0, 2, 1, 3))  # [B, S, H, D]
        d = xt.shape[3]
    else:
        heads = op.attr("num_heads")
        if xt.shape[2] % heads:
            raise UnsupportedOpError("rotary_embedding: hidden size not divisible by num_heads")
        d = xt.shape[2] // heads
        xs = b.reshape(x, _i64(b, [0, 0, heads, d]))
    rd = op.attr("rotary_embedding_dim") or d
    half = rd // 2
    if pos is not None:
        cos, sin = b.gather(cos, pos, axis=0), b.gather(sin, pos, axis=0)
    cos, sin = b.unsqueeze(cos, _i64(b, [2])), b.unsqueeze(sin, _i64(b, [2]))  # [B, S, 1, half]

    def lanes(start, end, step):
        return b.slice(xs, _i64(b, [start]), _i64(b, [end]), _i64(b, [3]), _i64(b, [step]))

    interleaved = op.attr("interleaved")
    x1, x2 = (lanes(0, rd, 2), lanes(1, rd, 2)) if interleaved else (lanes(0, half, 1), lanes(half, rd, 1))
    real = b.sub(b.mul(cos, x1), b.mul(sin, x2))
    imag = b.add(b.mul(sin, x1), b.mul(cos, x2))
    if interleaved:
        pair = b.concat(b.unsqueeze(real, _i64(b, [4])), b.unsqueeze(imag, _i64(b, [4])), axis=4)
        rot = b.reshape(pair, _i64(b, [0, 0, 0, rd]))
    else:
        rot = b.concat(real, imag, axis=3)
    if rd < d:
        rot = b.concat(rot, lanes(rd, d, 1), axis=3)
    if rank == 4:
        return [b.transpose(rot, perm=(0, 2, 1, 3))]
    return [b.reshape(rot, _i64(b, [0, 0, -1]))]
