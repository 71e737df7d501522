"""f16/bf16 conversion: weights and activations in 16 bits, numerically sensitive ops
(softmax, normalizations, reductions, exp/log) kept in f32 with casts at the boundaries;
the model's inputs and outputs keep their f32 interface.

The composite ops (layer_norm, gelu, attention) are recognized first, on the f32 graph
simplified at O1 (the O2 ``fuse-recognize`` patterns): once casts sit around the softmax and gelu's
constants are rounded to 16 bits the patterns no longer match, and a backend would run
the pieces one by one (an f16 BERT encoder ran attention as five ops instead of one).
attention is kept in f32 as its softmax is."""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import GalaxirError
from ..ir import Module, Value
from ..ir.builder import create_op
from ..ir.types import DType, TensorType
from .params import QuantizationError
from .rewrite import drop_dead

#: op kinds kept in f32 unless ``keep`` says otherwise
DEFAULT_KEEP = ("softmax", "log_softmax", "layer_norm", "group_norm", "instance_norm",
                "rms_norm", "batch_norm", "exp", "log", "reduce_sum", "reduce_mean", "reduce_max",
                "reduce_min", "reduce_prod", "reduce_l1", "reduce_l2", "reduce_log_sum",
                "reduce_log_sum_exp", "reduce_sum_square", "cumsum", "softplus", "attention")
#: ops that are never converted: their float operands are parameters, not data
NEVER = ("constant", "quantize_linear", "dequantize_linear", "dynamic_quantize_linear")
#: ``created_by`` of the boundary casts made here (a backend may skip a float32 -> 16 bits
#: -> float32 pair of them, never a model's own casts)
CREATED_BY = "convert_float"
DTYPES = {"f16": DType.float16, "float16": DType.float16, "bf16": DType.bfloat16,
          "bfloat16": DType.bfloat16}


def _is(v: Value | None, dt: DType) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.dtype is dt


def _recognize_composites(m: Module) -> Module:
    """``m`` simplified (O1: shapes and constants folded, so the exporter's computed
    attention scale becomes a constant the pattern takes in) with its composites found."""
    from ..passes.fusion import Recognize
    from ..passes.manager import PassContext
    from ..passes.pipeline import optimize
    m = optimize(m, level=1)
    Recognize().run(m, PassContext())
    return m


def convert_float(model: Any, dtype: str = "f16", keep: Iterable[str] | None = None) -> Module:
    """A copy of ``model`` computing in ``dtype`` ("f16" or "bf16").  ``keep`` lists op
    kinds (or result names) to leave in f32; default: :data:`DEFAULT_KEEP`."""
    from .. import import_model
    if dtype not in DTYPES:
        raise QuantizationError(f"convert_float: dtype '{dtype}'; expected 'f16' or 'bf16'")
    low = DTYPES[dtype]
    keep = set(DEFAULT_KEEP if keep is None else keep)
    m = _recognize_composites(import_model(model))
    block = m.graph.block
    lows: dict[int, Value] = {}    # id(f32 value) -> its 16-bit version
    highs: dict[int, Value] = {}   # id(16-bit value made here) -> its f32 version
    made: set[int] = set()

    def insert(op):
        block.insert_before(anchor, op)
        return op.results[0]

    def to_low(v):
        if not _is(v, DType.float32):
            return v
        if id(v) not in lows:
            c = v.constant_value()
            if c is not None:
                lows[id(v)] = insert(create_op("constant", (), {"value": c.astype(low.numpy)}))
            else:
                lows[id(v)] = insert(create_op("cast", (v,), {"to": low}, created_by=CREATED_BY))
            highs[id(lows[id(v)])] = v
        return lows[id(v)]

    def to_high(v):
        if v is None or id(v) not in made:
            return v
        if id(v) not in highs:
            highs[id(v)] = insert(create_op("cast", (v,), {"to": DType.float32}, created_by=CREATED_BY))
        return highs[id(v)]

    converted = 0
    for op in list(block):
        anchor = op
        if op.is_terminator:
            for i, v in enumerate(op.operands):
                op.set_operand(i, to_high(v))
            continue
        name = op.results[0].name if op.results else None
        wants = (op.name not in NEVER and op.name not in keep and name not in keep
                 and not op.regions and any(_is(v, DType.float32) or (v is not None and id(v) in made)
                                            for v in op.operands))
        if wants:
            new = None
            try:
                cand = [to_low(to_high(v)) if v is not None and id(v) not in made else v
                        for v in op.operands]
                new = create_op(op.name, cand, dict(op.attrs), num_results=len(op.results))
            except GalaxirError:
                new = None
            if new is not None and all(_is(r, low) or not _is(o, DType.float32)
                                       for r, o in zip(new.results, op.results)):
                block.insert_before(op, new)
                for r, o in zip(new.results, op.results):
                    r.name = o.name
                    if _is(r, low):
                        made.add(id(r))
                op.replace_with(list(new.results))
                converted += 1
                continue
        for i, v in enumerate(op.operands):
            op.set_operand(i, to_high(v))
    m.metadata["float_conversion"] = f"{dtype}: {converted} ops converted"
    drop_dead(m)
    return m.verify()
