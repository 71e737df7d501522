"""The accuracy report: each quantized op's output against the float model's (SQNR in dB),
worst first, and the model outputs' SQNR."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..ir import Module, Value
from .calibrate import Tapped
from .params import QuantizationError
from .targets import KINDS, label_of


def sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power == 0:
        return math.inf
    if signal_power == 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass
class OpRow:
    label: str
    kind: str
    sqnr_db: float
    input_sqnr_db: float
    #: the relative noise power this op adds (output minus input), what min_sqnr ranks by
    own_noise: float


@dataclass
class QuantizationReport:
    rows: list[OpRow]                      # worst SQNR first
    outputs: dict[str, float]              # model output name -> SQNR dB
    feeds: int
    kept_float: list[str] = field(default_factory=list)

    @property
    def model_sqnr_db(self) -> float:
        return min(self.outputs.values()) if self.outputs else math.inf

    def as_dicts(self) -> list[dict]:
        return [dict(r.__dict__) for r in self.rows]

    def __str__(self) -> str:
        w = max([len(r.label) for r in self.rows] + [2])
        lines = [f"quantization report over {self.feeds} feed(s): model output SQNR "
                 + ", ".join(f"{k} {v:.1f} dB" for k, v in self.outputs.items()),
                 f"{'op':<{w}}  {'kind':<7} {'SQNR dB':>8} {'input dB':>9}"]
        for r in self.rows:
            lines.append(f"{r.label:<{w}}  {r.kind:<7} {r.sqnr_db:>8.1f} {r.input_sqnr_db:>9.1f}")
        if self.kept_float:
            lines.append(f"kept in float (min_sqnr): {', '.join(self.kept_float)}")
        return "\n".join(lines)


def _float_ops(module: Module):
    """label -> op for the float model's conv/matmul/gemm/linear ops."""
    ops, i = {}, 0
    for op in module.graph.block:
        if op.name in KINDS:
            ops[label_of(op, i)] = op
            i += 1
    return ops


def _pre_quant(v: Value) -> Value:
    """The float value a dequantize_linear(quantize_linear(x)) pair stands for."""
    p = v.producer
    if p is not None and p.name == "dequantize_linear":
        q = p.operand(0).producer
        if q is not None and q.name == "quantize_linear":
            return q.operand(0)
    return v


def quantization_report(float_module: Module, quant_module: Module, feeds: Iterable,
                        target: str = "numpy") -> QuantizationReport:
    """Run both models on each feed dict and compare, op by op, the outputs of every op of
    the float model that the quantized model computes differently (found by result name)."""
    fm, qm = float_module.clone(), quant_module.clone()
    named = {r.name: r for op in qm.graph.block for r in op.results if r.name}
    pairs = []
    for label, op in _float_ops(fm).items():
        q = named.get(label)
        if q is None:
            continue
        qop = q.producer
        if qop.name == op.name and all(a is not None and b is not None and
                                       a.constant_value() is not None and b.constant_value() is not None
                                       and np.array_equal(a.constant_value(), b.constant_value())
                                       or (a is None and b is None)
                                       for a, b in zip(op.operands[1:], qop.operands[1:])):
            continue  # unchanged (kept in float or never quantized)
        qin = _pre_quant(qop.operand(0)) if qop.name == op.name else None
        pairs.append((label, op.name, op.results[0], op.operand(0), q, qin))
    ftaps = [x for p in pairs for x in (p[2], p[3])]
    qtaps = [x for p in pairs for x in (p[4], p[5] if p[5] is not None else p[4])]
    sig = np.zeros(len(pairs))
    noise = np.zeros(len(pairs))
    isig, inoise = np.zeros(len(pairs)), np.zeros(len(pairs))
    osig, onoise = np.zeros(len(fm.graph.outputs)), np.zeros(len(fm.graph.outputs))
    ft, qt = Tapped(fm, ftaps, target), Tapped(qm, qtaps, target)
    n = 0
    try:
        for f in feeds:
            fo, fa = ft.run(f)
            qo, qa = qt.run(f)
            for i in range(len(pairs)):
                a, b = np.asarray(fa[2 * i], np.float64), np.asarray(qa[2 * i], np.float64)
                sig[i] += float(np.sum(a * a))
                noise[i] += float(np.sum((a - b) ** 2))
                if pairs[i][5] is not None:
                    a, b = np.asarray(fa[2 * i + 1], np.float64), np.asarray(qa[2 * i + 1], np.float64)
                    isig[i] += float(np.sum(a * a))
                    inoise[i] += float(np.sum((a - b) ** 2))
            for j, (a, b) in enumerate(zip(fo, qo)):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                osig[j] += float(np.sum(a * a))
                onoise[j] += float(np.sum((a - b) ** 2))
            n += 1
    finally:
        ft.close()
        qt.close()
    if n == 0:
        raise QuantizationError("quantization_report needs at least one feed dict")
    rows = []
    for i, p in enumerate(pairs):
        rel_out = noise[i] / sig[i] if sig[i] else 0.0
        rel_in = inoise[i] / isig[i] if isig[i] else 0.0
        rows.append(OpRow(p[0], p[1], sqnr_db(sig[i], noise[i]), sqnr_db(isig[i], inoise[i]),
                          max(rel_out - rel_in, 0.0)))
    rows.sort(key=lambda r: r.sqnr_db)
    outs = {name: sqnr_db(s, e) for name, s, e in zip(fm.graph.output_names, osig, onoise)}
    return QuantizationReport(rows, outs, n)
