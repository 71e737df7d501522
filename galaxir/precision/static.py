"""Static (calibrated) quantization into the QDQ form: QuantizeLinear/DequantizeLinear
pairs on the activations around each conv/matmul/gemm/linear, int8 weights with a
DequantizeLinear, int32 biases with scale x_scale * w_scale (as onnxruntime's QDQ
quantizer writes them)."""
from __future__ import annotations

import numpy as np

from ..ir import Module, Value
from .params import QParams, check_params, from_range, qtype, quantize_array, weight_params
from .rewrite import Inserter, after, redirect
from .targets import Target


def activation_values(targets: list[Target]) -> list[Value]:
    """Each value to quantize once: the targets' activation inputs and (moved past a
    relu/clip) outputs that feed another op."""
    seen, out = set(), []
    for t in targets:
        vals = [t.op.operand(i) for i in t.inputs]
        if _feeds_ops(t.out):
            vals.append(t.out)
        for v in vals:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


def _feeds_ops(v: Value) -> bool:
    """Whether an op other than the graph's return (through identities) reads ``v``: a
    model output is left float."""
    for u in v.users:
        if u.is_terminator:
            continue
        if u.name == "identity" and not _feeds_ops(u.results[0]):
            continue
        return True
    return False


def insert_qdq(module: Module, v: Value, p: QParams, qname: str) -> None:
    """v -> quantize_linear -> dequantize_linear, read by all of v's users but the outputs."""
    block = module.graph.block
    ins = after(block, v)
    where = f"tensor '{v.name}'" if v.name else f"the output of {v.producer.name}"
    check_params(p.scale, p.zero_point, qtype(qname)[0], where)
    s, z = ins.const(p.scale), ins.const(p.zero_point)
    q = ins.op("quantize_linear", v, s, z)
    d = ins.op("dequantize_linear", q, s, z)
    redirect(v, d, skip=q.producer)


def quantize_weight(module: Module, t: Target, wname: str, per_channel: bool,
                    act: dict[int, QParams]) -> None:
    """The target's constant weight (and bias) stored quantized behind a DequantizeLinear."""
    op = t.op
    ins = Inserter(module.graph.block, op)
    w = op.operand(t.weight).constant_value()
    sym = wname.startswith("s")
    axis = t.axis if per_channel else None
    p = weight_params(w, wname, axis, symmetric=sym, where=f"{op.name} '{t.label}' weight")
    wq = quantize_array(w, p, wname, axis)
    attrs = {"axis": axis} if axis is not None else {}
    dq = ins.op("dequantize_linear", ins.const(wq), ins.const(p.scale), ins.const(p.zero_point), **attrs)
    op.set_operand(t.weight, dq)
    if t.bias is None:
        return
    xp = act.get(id(op.operand(t.inputs[0])))
    if xp is None:
        return
    b = op.operand(t.bias).constant_value().astype(np.float64)
    bs = (np.float64(xp.scale) * p.scale.astype(np.float64)).astype(np.float32)
    bs = np.broadcast_to(bs, b.shape).copy() if bs.ndim else bs
    q = np.clip(np.rint(b / bs.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
    battrs = {"axis": 0} if bs.ndim else {}
    op.set_operand(t.bias, ins.op("dequantize_linear", ins.const(q), ins.const(bs), **battrs))


#: ops that only select values: their quantized output shares their input's scale and zero
#: point (as onnxruntime's quantizer does), so the cpu backend runs them on the 8-bit values
SELECTING = ("max_pool",)


def _share_selecting(values: list[Value], act: dict[int, QParams]) -> None:
    for v in values:
        p = v.producer
        if p is not None and p.name in SELECTING and id(p.operand(0)) in act:
            act[id(v)] = act[id(p.operand(0))]


def quantize_static(module: Module, targets: list[Target], ranges: dict[int, tuple[float, float]],
                    weight_type: str, activation_type: str, per_channel: bool) -> Module:
    """Rewrite ``module`` in place (its targets were found in it)."""
    act: dict[int, QParams] = {}
    values = activation_values(targets)
    for v in values:
        lo, hi = ranges[id(v)]
        act[id(v)] = from_range(lo, hi, activation_type, symmetric=False,
                                where=f"tensor '{v.name}'")
    for t in targets:
        quantize_weight(module, t, weight_type, per_channel, act)
    for v in values:
        insert_qdq(module, v, act[id(v)], activation_type)
    return module
