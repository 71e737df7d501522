"""float16 / bfloat16 models on the cpu backend: storage in 16 bits, compute in float32.

``widen_half(module)`` (called by lower_module before lowering) gives every op that has
a float32 kernel -- conv, matmul, gemm, the fused ops, the elementwise ops, pooling,
softmax, ... -- float32 operands and results when its floats are all one 16-bit type:
constant operands become float32 constants, the others go through a ``cast`` to float32,
and each result is cast back to its 16-bit type right after the op.  The casts run
natively (kernels_f16.HalfCast, F16C conversions), so the tensors between the ops stay
16-bit and every such op runs on the float32 kernels; a widened op whose operand was
narrowed from a float32 value (by a widened op or at one of convert_float's boundaries)
reads that value, and casts nothing reads are dropped.  bf16 products may run on
vdpbf16ps instead (lower_bf16.py).  The results match the numpy reference within the
16-bit type's rounding (the reference computes some ops in 16 bits).
"""
from __future__ import annotations

import numpy as np

from ...ir import Builder, Module
from ...ir.types import DType, TensorType
from .kernels_f16 import HalfCast
from .lower_bf16 import dot_form, use_bf16_dot
from .lower import ELEMENTWISE, RULES, const_of, rule, static_shape
from .lower_reduce import REDUCTIONS

HALF = {DType.float16: "f16", DType.bfloat16: "bf16"}
#: ops widened to float32 (their float32 kernels are native); the data movement ops
#: (transpose, concat, slice: byte copies of any item size) run on the 16-bit tensors as
#: they are -- widening them cost two casts each (a third of an f16 BERT encoder's casts)
WIDEN = set(ELEMENTWISE) | {"conv", "fused_conv", "matmul", "linear", "gemm", "fused_gemm",
                            "fused_add", "max_pool", "average_pool", "global_average_pool",
                            "global_max_pool", "softmax", "log_softmax",
                            "conv_transpose", "resize", "pad", "layer_norm", "attention",
                            *REDUCTIONS}


def _half_of(op) -> DType | None:
    """The one 16-bit float type of ``op``'s float operands and results, else None."""
    seen = set()
    for v in list(op.operands) + list(op.results):
        if v is None or not isinstance(v.type, TensorType):
            continue
        dt = v.type.dtype
        if dt in HALF:
            seen.add(dt)
        elif dt.numpy.kind == "f":
            return None
    return next(iter(seen)) if len(seen) == 1 else None


def widen_half(module: Module) -> int:
    """Rewrite the top-level 16-bit float ops to float32 between casts; returns how many."""
    ops = list(module.graph.block)
    n = 0
    widened: dict[int, object] = {}   # id(16-bit value) -> its float32 cast
    for k, op in enumerate(ops):
        if op.is_terminator or op.name not in WIDEN or op.regions:
            continue
        half = _half_of(op)
        if half is None or any(static_shape(r.type) is None for r in op.results):
            continue
        b = Builder(op.parent, before=op, provenance=op.provenance, created_by="cpu.widen_half")
        # a bf16 product for the vdpbf16ps GEMM keeps its activation and weights in bf16
        as_is = (0, 1) if half is DType.bfloat16 and use_bf16_dot() and dot_form(op) else ()
        for i, v in enumerate(op.operands):
            if v is None or not isinstance(v.type, TensorType) or v.type.dtype is not half \
                    or i in as_is:
                continue
            c = const_of(v)
            if c is not None:
                op.set_operand(i, b.constant(np.asarray(c).astype(np.float32)))
                continue
            w = widened.get(id(v)) or _f32_source(v)
            if w is None:
                w = b.op("cast", v, to=DType.float32)
                widened[id(v)] = w
            op.set_operand(i, w)
        after = Builder(op.parent, before=ops[k + 1], provenance=op.provenance,
                        created_by="cpu.widen_half")
        for r in op.results:
            if not isinstance(r.type, TensorType) or r.type.dtype is not half:
                continue
            uses = list(r.uses)
            r.type = TensorType(DType.float32, r.type.shape)
            narrow = after.op("cast", r, to=half)
            for user, i in uses:
                user.set_operand(i, narrow)
            widened[id(narrow)] = r     # a later widened op reads the float32 value
        n += 1
    _skip_round_trips(module)
    return n


#: the makers of the boundary casts whose float32 -> 16 bits -> float32 pairs are skipped
#: (convert_float's and widen_half's own; a model's explicit casts always round)
BOUNDARY_CASTS = ("convert_float", "cpu.widen_half")


def _f32_source(v):
    """x when ``v = cast(x)``, a boundary cast, narrows a float32 ``x`` to 16 bits."""
    p = v.producer
    if p is None or p.name != "cast" or p.created_by not in BOUNDARY_CASTS \
            or not isinstance(p.operands[0].type, TensorType):
        return None
    x = p.operands[0]
    return x if x.type.dtype is DType.float32 and x.type.shape == v.type.shape else None


def _skip_round_trips(module: Module) -> None:
    """float32 -> 16 bits -> float32 pairs of boundary casts (convert_float's around the
    ops it keeps in f32, widen_half's) read the float32 value, as a widened op reads its
    widened operand (the value is not rounded to 16 bits in between), then the casts
    nothing reads any more are dropped (an f16 BERT encoder: 92 casts -> 40)."""
    block = module.graph.block
    for op in list(block):
        if op.name == "cast" and op.created_by in BOUNDARY_CASTS \
                and isinstance(op.results[0].type, TensorType) \
                and op.results[0].type.dtype is DType.float32 \
                and isinstance(op.operands[0].type, TensorType) \
                and op.operands[0].type.dtype in HALF:
            x = _f32_source(op.operands[0])
            if x is not None:
                for user, i in list(op.results[0].uses):
                    user.set_operand(i, x)
    for op in reversed(list(block)):
        if op.name == "cast" and not op.results[0].uses \
                and any(isinstance(v.type, TensorType) and v.type.dtype in HALF
                        for v in (op.operands[0], op.results[0])):
            op.erase()


_previous_cast_rule = RULES.get("cast")


@rule("cast")
def lower_half_cast(op):
    """f16 / bf16 <-> f32 casts natively; any other cast as the rule before this one."""
    x, y = op.operands[0], op.results[0]
    kinds = {**HALF, DType.float32: "f32"}
    sx, sy = static_shape(x.type), static_shape(y.type)
    if (isinstance(x.type, TensorType) and isinstance(y.type, TensorType) and sx is not None
            and x.type.dtype in kinds and y.type.dtype in kinds
            and (x.type.dtype in HALF or y.type.dtype in HALF)):
        return HalfCast(n=int(np.prod(sx)), src=kinds[x.type.dtype], dst=kinds[y.type.dtype]), [x]
    if _previous_cast_rule is not None:
        return _previous_cast_rule(op)
    return "no native kernel for this cast"
