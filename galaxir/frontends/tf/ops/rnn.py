"""Keras LSTM / GRU loops recognized as galaxir's ``lstm`` / ``gru`` ops.

Keras (3, TF backend) runs a recurrent layer as a ``While`` loop: a time counter, the input
sequence as a TensorList read at the counter, the states, the weights passed through, and a
TensorList the new state is written into.  When the loop's cell is exactly Keras' fused
``LSTMCell`` (sigmoid / tanh, any bias) or ``GRUCell`` with ``reset_after=True``, and its
trip count is the sequence's static length, the whole loop is one ``lstm`` / ``gru`` op
(gates reordered to ONNX's order), which the cpu backend runs natively.  Anything else
(other activations, ``reset_after=False``, a dynamic length) stays a ``loop`` region.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ....ir import Value
from ..importer import TfContext


def _src(t):
    while t.op.type == "Identity":
        t = t.op.inputs[0]
    return t


def _is(t, *types: str):
    """The op making ``t`` (through Identities) when its type is one of ``types``."""
    op = _src(t).op
    return op if op.type in types else None


def _pairs(op):
    a, b = op.inputs
    return ((a, b), (b, a))


def _same(a, b) -> bool:
    return _src(a) is _src(b)


class _Frame:
    """The parts of a Keras RNN loop outside its cell."""

    def __init__(self, ctx: TfContext, body, cond, plan: dict[int, str]):
        from .control import _const, _is_counter
        self.ctx, self.body, self.cond, self.plan = ctx, body, cond, plan
        self._const = _const
        self.counters = [j for j, p in plan.items() if p == "carried" and _is_counter(ctx, body, j)]
        self.states = [j for j, p in plan.items() if p == "carried" and j not in self.counters]
        self.lists = [j for j, p in plan.items() if p in ("scan", "last")]

    def arg(self, t, graph=None) -> int | None:
        g = graph or self.body
        s = _src(t)
        return next((j for j, a in enumerate(g.inputs) if a is s), None)

    def value(self, t) -> np.ndarray | None:
        """A body tensor's value when it is computed from constants only (the weights the
        loop passes through, and Keras' splits and squeezes of them)."""
        t = _src(t)
        j = self.arg(t)
        if j is not None:
            return self.ctx.static(j) if self.plan[j] == "invariant" else None
        op = t.op
        if op.type == "Const":
            return self._const(t)
        if op.type == "Split":
            axis, v = self.value(op.inputs[0]), self.value(op.inputs[1])
            if axis is None or v is None:
                return None
            return np.split(v, op.get_attr("num_split"), axis=int(axis))[t.value_index]
        if op.type == "Squeeze":
            v = self.value(op.inputs[0])
            dims = list(op.get_attr("squeeze_dims"))
            return None if v is None else np.squeeze(v, axis=tuple(dims) if dims else None)
        return None

    def trip(self) -> int | None:
        """The loop's static trip count from its condition (counter < bound, and-ed)."""
        bounds = []

        def walk(t) -> bool:
            op = _src(t).op
            if op.type == "LogicalAnd":
                return walk(op.inputs[0]) and walk(op.inputs[1])
            if op.type != "Less" or self.arg(op.inputs[0], self.cond) not in self.counters:
                return False
            b = self._const(op.inputs[1])
            m = self.arg(op.inputs[1], self.cond)
            if b is None and m is not None and self.plan[m] == "invariant":
                b = self.ctx.static(m)
            if b is None or b.size != 1:
                return False
            bounds.append(int(b.reshape(-1)[0]))
            return True
        return min(bounds) if walk(self.cond.outputs[0]) and bounds else None

    def sequence(self, trip: int):
        """(the GetItem tensor, the time-major sequence Value) of the loop's one input read."""
        reads = [op for op in self.body.get_operations() if op.type == "TensorListGetItem"]
        if len(reads) != 1:
            return None
        op = reads[0]
        m, j = self.arg(op.inputs[0]), self.arg(op.inputs[1])
        if m is None or self.plan[m] != "invariant" or j not in self.counters:
            return None
        seq = self.ctx.inputs[m]
        shape = getattr(getattr(seq, "type", None), "shape", None)
        if not isinstance(seq, Value) or shape is None or len(shape) != 3 or shape[0] != trip:
            return None
        return op.outputs[0], seq

    def matmul(self, t, lhs):
        """The constant right operand of ``MatMul(lhs, W)`` (no transposes), else None."""
        op = _is(t, "MatMul")
        if op is None or op.get_attr("transpose_a") or op.get_attr("transpose_b") or \
                not _same(op.inputs[0], lhs):
            return None
        w = self.value(op.inputs[1])
        return w if w is not None and w.ndim == 2 else None

    def plus_bias(self, t, lhs):
        """(W, b) of ``MatMul(lhs, W) [+ b]`` with constants W and b (b None when absent)."""
        w = self.matmul(t, lhs)
        if w is not None:
            return w, None
        op = _is(t, "BiasAdd", "AddV2", "Add")
        if op is None:
            return None
        for a, b in _pairs(op):
            w, bias = self.matmul(a, lhs), self.value(b)
            if w is not None and bias is not None and bias.ndim == 1:
                return w, bias
        return None


def _split_part(t, n: int):
    """(the Split op, index) when ``t`` is part of an n-way split on the last axis."""
    t = _src(t)
    if t.op.type != "Split" or t.op.get_attr("num_split") != n:
        return None
    return t.op, t.value_index


def _unary(t, kind: str):
    op = _is(t, kind)
    return op.inputs[0] if op is not None else None


def _lstm_cell(f: _Frame, x_t, h_slot: int, c_slot: int):
    """(W, R, b) of Keras' fused LSTMCell (i, f, c, o gate columns), else None."""
    body = f.body
    h_arg, c_arg = body.inputs[h_slot], body.inputs[c_slot]
    h_new, c_new = _src(body.outputs[h_slot]), _src(body.outputs[c_slot])
    op = _is(h_new, "Mul")
    if op is None:
        return None
    gates: dict[int, Any] = {}
    split = None

    def gate(t, k: int, act: str) -> bool:
        nonlocal split
        inner = _unary(t, act)
        part = _split_part(inner, 4) if inner is not None else None
        if part is None or part[1] != k or (split is not None and part[0] is not split):
            return False
        split = part[0]
        gates[k] = part
        return True

    if not any(gate(a, 3, "Sigmoid") and _unary(b, "Tanh") is not None and
               _same(_unary(b, "Tanh"), c_new) for a, b in _pairs(op)):
        return None
    add = _is(c_new, "AddV2", "Add")
    if add is None:
        return None

    def forget(t) -> bool:
        m = _is(t, "Mul")
        return m is not None and any(gate(a, 1, "Sigmoid") and _same(b, c_arg) for a, b in _pairs(m))

    def update(t) -> bool:
        m = _is(t, "Mul")
        return m is not None and any(gate(a, 0, "Sigmoid") and gate(b, 2, "Tanh") for a, b in _pairs(m))

    if not any(forget(a) and update(b) for a, b in _pairs(add)):
        return None
    axis = f.value(split.inputs[0])
    if axis is None or int(axis) not in (1, -1):
        return None
    z = split.inputs[1]
    bias = None
    op = _is(z, "BiasAdd", "AddV2", "Add")
    if op is not None and _is(op.inputs[0], "MatMul") is None:  # (x W + h R) + b
        for a, b in _pairs(op):
            v = f.value(b)
            if v is not None and v.ndim == 1:
                bias, z = v, a
                break
        else:
            return None
    op = _is(z, "AddV2", "Add")
    if op is None:
        return None
    for a, b in _pairs(op):
        w, r = f.matmul(a, x_t), f.matmul(b, h_arg)
        if w is not None and r is not None:
            return w, r, bias
    return None


def _column_slice(t, width: int):
    """(start, stop) of ``t = m[:, start:stop]`` (a StridedSlice or a 3-way Split of m), and m."""
    src = _src(t)
    part = _split_part(src, 3)
    if part is not None:
        k, step = part[1], width // 3
        return (k * step, (k + 1) * step), part[0].inputs[1]
    op = src.op
    if op.type != "StridedSlice" or any(op.get_attr(a) for a in
                                        ("ellipsis_mask", "new_axis_mask", "shrink_axis_mask")):
        return None
    from .control import _const
    begin, end, strides = (_const(op.inputs[i]) for i in (1, 2, 3))
    if begin is None or end is None or strides is None or len(begin) != 2 or \
            list(strides) != [1, 1]:
        return None
    bm, em = op.get_attr("begin_mask"), op.get_attr("end_mask")
    if not ((bm & 1 or begin[0] == 0) and (em & 1)):
        return None
    start = 0 if bm & 2 else int(begin[1])
    stop = width if em & 2 else int(end[1])
    return (start, stop), op.inputs[0]


def _gru_cell(f: _Frame, x_t, h_slot: int):
    """(W, R, b_input, b_recurrent) of Keras' GRUCell with reset_after=True, else None."""
    body = f.body
    h_arg, h_new = body.inputs[h_slot], _src(body.outputs[h_slot])
    add = _is(h_new, "AddV2", "Add")
    if add is None:
        return None
    found = {}

    def keep(t) -> bool:  # z * h_prev
        m = _is(t, "Mul")
        if m is None:
            return False
        for a, b in _pairs(m):
            if _same(b, h_arg) and _is(a, "Sigmoid") is not None:
                found["z"] = _src(a)
                return True
        return False

    def mix(t) -> bool:  # (1 - z) * hh
        m = _is(t, "Mul")
        if m is None:
            return False
        for a, b in _pairs(m):
            sub = _is(a, "Sub")
            if sub is None or _is(b, "Tanh") is None:
                continue
            one = f.value(sub.inputs[0])
            if one is not None and one.size == 1 and float(one.reshape(-1)[0]) == 1.0 and \
                    _same(sub.inputs[1], found["z"]):
                found["hh"] = _src(b).op.inputs[0]
                return True
        return False

    if not any(keep(a) and mix(b) for a, b in _pairs(add)):
        return None
    xs, rs = {}, {}

    def gate_sum(t, key: str) -> bool:  # x_key + recurrent_key
        s = _is(t, "AddV2", "Add")
        if s is None:
            return False
        for a, b in _pairs(s):
            part = _split_part(a, 3)
            if part is not None:
                xs[key], rs[key] = part, b
                return True
        return False

    if not gate_sum(_src(found["z"]).op.inputs[0], "z"):
        return None
    hh = _is(found["hh"], "AddV2", "Add")
    if hh is None:
        return None
    for a, b in _pairs(hh):  # x_h + r * recurrent_h
        part, m = _split_part(a, 3), _is(b, "Mul")
        if part is None or m is None:
            continue
        for ra, rb in _pairs(m):
            sig = _is(ra, "Sigmoid")
            if sig is not None and gate_sum(sig.inputs[0], "r"):
                xs["h"], rs["h"] = part, rb
                break
        if "h" in xs:
            break
    else:
        return None
    if "h" not in xs:
        return None
    split = xs["z"][0]
    if any(xs[k][0] is not split for k in "rh") or [xs[k][1] for k in "zrh"] != [0, 1, 2]:
        return None
    axis = f.value(split.inputs[0])
    if axis is None or int(axis) not in (1, -1):
        return None
    wx = f.plus_bias(split.inputs[1], x_t)
    if wx is None:
        return None
    w, bx = wx
    width = w.shape[1]
    cols, inner = {}, None
    for k in "zrh":
        got = _column_slice(rs[k], width)
        if got is None or (inner is not None and not _same(got[1], inner)):
            return None
        cols[k], inner = got[0], got[1]
    step = width // 3
    if [cols[k] for k in "zrh"] != [(0, step), (step, 2 * step), (2 * step, width)]:
        return None
    wr = f.plus_bias(inner, h_arg)
    if wr is None:
        return None
    r, br = wr
    return w, r, bx, br


def recognize(ctx: TfContext, body, cond, plan: dict[int, str]) -> list | None:
    """The While's results computed by one lstm / gru op, or None when the loop is not a
    Keras LSTM / GRU layer galaxir's ops express exactly."""
    f = _Frame(ctx, body, cond, plan)
    if len(f.lists) != 1 or len(f.states) not in (1, 2) or not f.counters:
        return None
    trip = f.trip()
    if trip is None or trip < 1:
        return None
    got = f.sequence(trip)
    if got is None:
        return None
    x_t, seq = got
    k_out = f.lists[0]
    written = _src(body.outputs[k_out]).op.inputs[2]
    init = list(ctx.inputs)
    if len(f.states) == 2:
        for h_slot, c_slot in (f.states, f.states[::-1]):
            if not _same(written, body.outputs[h_slot]):
                continue
            cell = _lstm_cell(f, x_t, h_slot, c_slot)
            if cell is not None:
                return _emit_lstm(ctx, f, seq, trip, cell, h_slot, c_slot, k_out, init)
        return None
    (h_slot,) = f.states
    if not _same(written, body.outputs[h_slot]):
        return None
    cell = _gru_cell(f, x_t, h_slot)
    return None if cell is None else _emit_gru(ctx, f, seq, trip, cell, h_slot, k_out, init)


def _weights(ctx: TfContext, mats: list[np.ndarray], order: list[int], hidden: int, dtype):
    """Keras [in, gates*H] kernels as ONNX [1, gates*H, in], gate blocks in ``order``."""
    out = []
    for m in mats:
        blocks = [m[..., g * hidden:(g + 1) * hidden] for g in order]
        out.append(np.concatenate(blocks, axis=-1))
    return out


def _finish(ctx: TfContext, f: _Frame, trip: int, y, y_h, states: dict[int, Value], k_out: int,
            init: list) -> list:
    out = list(init)
    for slot, v in states.items():
        out[slot] = ctx.op("squeeze", v, ctx.i64([0]))
    out[k_out] = ctx.op("squeeze", y, ctx.i64([1])) if f.plan[k_out] == "scan" else y_h
    for j in f.counters:
        out[j] = ctx.op("add", init[j], ctx.const(trip, init[j].type.dtype.numpy))
    return out


def _emit_lstm(ctx, f, seq, trip, cell, h_slot, c_slot, k_out, init) -> list:
    w, r, b = cell
    hidden = r.shape[0]
    if w.shape[1] != 4 * hidden or r.shape[1] != 4 * hidden or (b is not None and b.size != 4 * hidden):
        return None
    dt = w.dtype
    order = [0, 3, 1, 2]  # Keras i, f, c, o -> ONNX i, o, f, c
    w, r = _weights(ctx, [w, r], order, hidden, dt)
    bias = np.zeros(8 * hidden, dt)
    if b is not None:
        bias[:4 * hidden] = _weights(ctx, [b], order, hidden, dt)[0]
    h0 = ctx.op("unsqueeze", init[h_slot], ctx.i64([0]))
    c0 = ctx.op("unsqueeze", init[c_slot], ctx.i64([0]))
    y, y_h, y_c = ctx.op("lstm", seq, ctx.const(w.T[None]), ctx.const(r.T[None]),
                         ctx.const(bias[None]), None, h0, c0, None, hidden_size=hidden)
    return _finish(ctx, f, trip, y, y_h, {h_slot: y_h, c_slot: y_c}, k_out, init)


def _emit_gru(ctx, f, seq, trip, cell, h_slot, k_out, init) -> list:
    w, r, bx, br = cell
    hidden = r.shape[0]
    if w.shape[1] != 3 * hidden or r.shape[1] != 3 * hidden:
        return None
    dt = w.dtype
    bias = np.zeros(6 * hidden, dt)
    if bx is not None:
        bias[:3 * hidden] = bx
    if br is not None:
        bias[3 * hidden:] = br
    h0 = ctx.op("unsqueeze", init[h_slot], ctx.i64([0]))
    y, y_h = ctx.op("gru", seq, ctx.const(w.T[None]), ctx.const(r.T[None]), ctx.const(bias[None]),
                    None, h0, hidden_size=hidden, linear_before_reset=1)
    return _finish(ctx, f, trip, y, y_h, {h_slot: y_h}, k_out, init)
