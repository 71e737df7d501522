"""Recurrent layers: ``aten.lstm`` / ``aten.gru`` / ``aten.rnn_tanh`` / ``aten.rnn_relu`` become
one galaxir ``lstm`` / ``gru`` / ``rnn`` op per layer (ONNX semantics, seq-first layout).

torch stores gates as (i, f, g, o) for LSTM and (r, z, n) for GRU; ONNX wants (i, o, f, c)
and (z, r, h).  Weights are reordered at import (in numpy when they are constants).
torch's GRU applies the reset gate after the hidden matmul: ONNX ``linear_before_reset=1``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ....ir import Value
from ..importer import TorchContext, converter

# kind -> (gates, torch-to-ONNX gate order)
KINDS = {"lstm": (4, [0, 3, 1, 2]), "gru": (3, [1, 0, 2]), "rnn": (1, [0])}


def _reorder(ctx: TorchContext, v: Any, gates: int, order: list[int]) -> Any:
    """Rows of a gate-stacked weight/bias in ONNX gate order (numpy if constant)."""
    arr = ctx.static(v)
    if arr is not None:
        blocks = np.split(np.asarray(arr), gates, axis=0)
        return np.concatenate([blocks[i] for i in order], axis=0)
    if gates == 1:
        return v
    parts = ctx.op("split", v, axis=0, num_outputs=gates, num_results=gates)
    return ctx.op("concat", *[parts[i] for i in order], axis=0)


def _stack(ctx: TorchContext, items: list[Any]) -> Value:
    """Stack per-direction tensors on a new leading axis."""
    if all(isinstance(i, np.ndarray) for i in items):
        return ctx.constant(np.stack(items))
    zero = ctx.i64([0])
    vals = [ctx.op("unsqueeze", ctx.tensor(i), zero) for i in items]
    return vals[0] if len(vals) == 1 else ctx.op("concat", *vals, axis=0)


def _concat(ctx: TorchContext, a: Any, b: Any) -> Any:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.concatenate([a, b])
    return ctx.op("concat", ctx.tensor(a), ctx.tensor(b), axis=0)


def _recurrent(ctx: TorchContext, kind: str, activation: str | None = None):
    gates, order = KINDS[kind]
    x = ctx.args["input"]
    params = list(ctx.args["params"])
    has_bias = bool(ctx.args["has_biases"])
    layers = int(ctx.args["num_layers"])
    nd = 2 if ctx.args["bidirectional"] else 1
    batch_first = bool(ctx.args["batch_first"])
    if ctx.args.get("train") and ctx.args.get("dropout"):
        raise ctx.unsupported("recurrent dropout in training mode; export in eval mode")
    per_dir = 4 if has_bias else 2
    if len(params) != layers * nd * per_dir:
        raise ctx.unsupported(f"{len(params)} weight tensors for {layers} layer(s) x {nd} "
                              f"direction(s): projections (proj_size) are not supported")
    if kind == "lstm":
        h0_all, c0_all = ctx.args["hx"]
    else:
        h0_all, c0_all = ctx.args["hx"], None
    metas = ctx.meta("params")
    hidden = int(metas[1].shape[1])
    if ctx.rank("input") != 3:
        raise ctx.unsupported("unbatched (2-D) recurrent input; add a batch dim")
    seq = ctx.op("transpose", x, perm=[1, 0, 2]) if batch_first else x
    hs, cs = [], []
    for layer in range(layers):
        ws, rs, bs = [], [], []
        for d in range(nd):
            base = (layer * nd + d) * per_dir
            ws.append(_reorder(ctx, params[base], gates, order))
            rs.append(_reorder(ctx, params[base + 1], gates, order))
            if has_bias:
                bs.append(_concat(ctx, _reorder(ctx, params[base + 2], gates, order),
                                  _reorder(ctx, params[base + 3], gates, order)))
        W, R = _stack(ctx, ws), _stack(ctx, rs)
        B = _stack(ctx, bs) if has_bias else None
        rows = (ctx.i64([layer * nd]), ctx.i64([(layer + 1) * nd]), ctx.i64([0]))
        h0 = ctx.op("slice", h0_all, *rows) if layers > 1 else h0_all
        attrs: dict[str, Any] = {"hidden_size": hidden,
                                 "direction": "bidirectional" if nd == 2 else "forward"}
        if kind == "lstm":
            c0 = ctx.op("slice", c0_all, *rows) if layers > 1 else c0_all
            y, yh, yc = ctx.op("lstm", seq, W, R, B, None, h0, c0, None, **attrs)
            cs.append(yc)
        elif kind == "gru":
            y, yh = ctx.op("gru", seq, W, R, B, None, h0, linear_before_reset=1, **attrs)
        else:
            y, yh = ctx.op("rnn", seq, W, R, B, None, h0, activations=[activation] * nd, **attrs)
        hs.append(yh)
        # Y is [T, dirs, B, H]; the next layer (and torch's output) wants [T, B, dirs*H]
        y = ctx.op("transpose", y, perm=[0, 2, 1, 3])
        seq = ctx.op("reshape", y, ctx.i64([0, 0, -1]))
    out = ctx.op("transpose", seq, perm=[1, 0, 2]) if batch_first else seq
    h_n = hs[0] if len(hs) == 1 else ctx.op("concat", *hs, axis=0)
    if kind == "lstm":
        c_n = cs[0] if len(cs) == 1 else ctx.op("concat", *cs, axis=0)
        return out, h_n, c_n
    return out, h_n


@converter("lstm.input")
def lstm(ctx: TorchContext):
    return _recurrent(ctx, "lstm")


@converter("gru.input")
def gru(ctx: TorchContext):
    return _recurrent(ctx, "gru")


@converter("rnn_tanh.input")
def rnn_tanh(ctx: TorchContext):
    return _recurrent(ctx, "rnn", "Tanh")


@converter("rnn_relu.input")
def rnn_relu(ctx: TorchContext):
    return _recurrent(ctx, "rnn", "Relu")
