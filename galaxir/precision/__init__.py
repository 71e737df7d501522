"""Post-training quantization and float conversion: a tool above the passes (as
``compile`` is) that rewrites a float module into a quantized or 16-bit one.

    qm = gx.quantize(m, calibration=[{"x": x0}, ...])            # static int8, QDQ form
    qm = gx.quantize(m, calibration=None)                        # dynamic int8
    qm = gx.quantize(m, weight_bits=4, block_size=32)            # int4 weights, blockwise
    print(gx.quantization_report(m, qm, feeds))                  # SQNR per op, worst first
    hm = gx.convert_float(m, "bf16")                             # 16-bit weights/activations
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from ..ir import Module
from .calibrate import collect_ranges
from .dynamic import quantize_dynamic
from .floatconv import convert_float
from .keys import value_keys
from .lowbit import quantize_weights_blockwise, weight_bytes
from .observers import METHODS
from .params import QTYPES, QuantizationError
from .rewrite import drop_dead
from .report import QuantizationReport, quantization_report
from .static import activation_values, quantize_static
from .targets import find_targets, forward_constant_identities


def _check_options(method, weight_type, activation_type, weight_bits):
    if method not in METHODS:
        raise QuantizationError(f"unknown calibration method '{method}'; expected one of {list(METHODS)}")
    for what, t in (("weight_type", weight_type), ("activation_type", activation_type)):
        if t not in ("s8", "u8"):
            raise QuantizationError(f"{what}='{t}'; expected 's8' or 'u8'")
    if weight_bits not in (4, 8):
        raise QuantizationError(f"weight_bits={weight_bits}; expected 8 or 4")


def quantize(model: Any, calibration: Iterable | None = None, method: str = "minmax",
             per_channel: bool = True, weight_type: str = "s8", activation_type: str = "u8",
             exclude: Iterable[str] = (), weight_bits: int = 8, block_size: int = 32,
             symmetric: bool = True, min_sqnr: float | None = None, feeds: Iterable | None = None,
             percentile: float = 99.999, progress: bool = True, target: str = "numpy") -> Module:
    """A quantized copy of ``model``.

    - ``weight_bits=4``: matmul/gemm/linear weights blockwise int4 (``block_size`` along K,
      ``symmetric`` or with uint4 zero points); activations stay float.
    - ``calibration=None``: dynamic int8 (weights int8, activations quantized at run time).
    - otherwise static int8 in the QDQ form, ranges from ``calibration`` (an iterable of feed
      dicts) by ``method`` ("minmax", "percentile", "entropy").

    ``exclude`` names ops to leave in float (result names as the report shows them, or op
    kinds).  ``min_sqnr`` (dB) keeps in float the ops whose own error would take the model's
    output SQNR below it, measured on ``feeds`` (default: the calibration set); the module's
    metadata ``quantization`` (JSON) says which.  ``target`` runs the float model for
    calibration and the min_sqnr measurements (the numpy reference by default; "cpu" is
    faster on big models)."""
    from .. import import_model
    _check_options(method, weight_type, activation_type, weight_bits)
    base = forward_constant_identities(import_model(model))
    if calibration is not None and weight_bits == 8:
        calibration = list(calibration)
        if not calibration:
            raise QuantizationError("the calibration set is empty: give at least one feed dict "
                                    "(or calibration=None for dynamic quantization)")
    ranges = None
    if calibration is not None and weight_bits == 8:
        probe = base.clone()
        keys = value_keys(probe)
        values = activation_values(find_targets(probe))
        got = collect_ranges(probe, values, calibration, method, percentile, show=progress,
                             target=target)
        ranges = {keys[k]: r for k, r in ((id(v), got[id(v)]) for v in values)}
    info = {"mode": "int4-weights" if weight_bits == 4 else
            ("dynamic" if calibration is None else "static"),
            "method": method if ranges is not None else None,
            "per_channel": per_channel, "weight_type": weight_type,
            "activation_type": activation_type}

    def build(excluded) -> Module:
        m = base.clone()
        targets = find_targets(m, list(exclude) + list(excluded))
        if weight_bits == 4:
            quantize_weights_blockwise(m, targets, 4, block_size, symmetric)
            info.update(block_size=block_size, symmetric=symmetric)
        elif ranges is None:
            quantize_dynamic(m, targets, weight_type, per_channel)
        else:
            keys = value_keys(m)
            r = {id(v): ranges[keys[id(v)]] for v in activation_values(targets)}
            quantize_static(m, targets, r, weight_type, activation_type, per_channel)
        drop_dead(m, ("constant",))
        m.metadata["quantization"] = json.dumps({**info, "kept_float": list(excluded)})
        return m

    qm = build([])
    if min_sqnr is None:
        return qm
    evals = list(feeds) if feeds is not None else calibration
    if not evals:
        raise QuantizationError("min_sqnr needs feeds to measure on (feeds=, or calibration data)")
    rep = quantization_report(base, qm, evals, target)
    if rep.model_sqnr_db >= min_sqnr:
        return qm
    order = [r.label for r in sorted(rep.rows, key=lambda r: -r.own_noise)]
    lo, hi, best = 1, len(order), None   # smallest k whose model SQNR reaches min_sqnr
    while lo <= hi:
        k = (lo + hi) // 2
        cand = build(order[:k])
        if quantization_report(base, cand, evals, target).model_sqnr_db >= min_sqnr:
            best, hi = cand, k - 1
        else:
            lo = k + 1
    return best if best is not None else build(order)


def quantization_info(module: Module) -> dict:
    """What ``quantize`` recorded in the module's metadata (mode, method, kept_float...)."""
    return json.loads(module.metadata.get("quantization", "{}"))


__all__ = ["quantize", "quantization_report", "QuantizationReport", "convert_float",
           "quantization_info", "weight_bytes", "QuantizationError", "QTYPES"]
