"""Dynamic quantization's matmul chain (what ``gx.quantize(m, calibration=None)`` and
onnxruntime's quantize_dynamic build)::

    xq, xs, xz = dynamic_quantize_linear(x)
    y = cast(matmul_integer(xq, w, xz[, w_zp]), float32) * (xs * w_scale) [+ bias]

becomes one ``dynamic_qmatmul(x, w, w_scale, w_zp[, bias])`` (galaxir/ir/ops/quant_int8.py)
at O2, for a backend that runs it natively: the cpu kernel quantizes x, runs the packed
int8 GEMM and applies the zero-point correction, the scale and the bias in its store, with
no int32 or float intermediate tensor.  The arithmetic is the chain's, step by step, so
the result is bit-equal.  ``w``, ``w_zp``, ``w_scale`` and ``bias`` must be constants
(``w_scale`` and ``bias`` float32, per tensor or one per column); anything else is left
alone.
"""
from __future__ import annotations

import numpy as np

from ..ir import Builder, Module
from ..ir.types import DType, TensorType
from .manager import FunctionPass
from .pipeline import register_level_pass
from .qdq import _const, _native_ops


def _sole_user(module: Module, v, name: str):
    """The one op using ``v`` (once) when it is a ``name`` and ``v`` is no graph output."""
    if len(v.uses) != 1 or any(o is v for o in module.graph.outputs):
        return None
    op = next(iter(v.uses))[0]
    return op if op.name == name else None


def _other(op, v):
    """The operand of the binary ``op`` that is not ``v`` (None if both or neither are)."""
    a, b = op.operand(0), op.operand(1)
    if a is v and b is not v:
        return b
    if b is v and a is not v:
        return a
    return None


def _per_column(c, n: int) -> bool:
    return c is not None and c.dtype == np.float32 and c.shape in ((), (1,), (n,))


def _rewrite(module: Module, dq, mi) -> bool:
    x = dq.operand(0)
    xq, xs, xz = dq.results
    if mi.operand(0) is not xq or mi.operand(2) is not xz or len(mi.operands) > 4:
        return False
    w, wz = _const(mi.operand(1)), (_const(mi.operand(3)) if mi.operand(3) is not None else None)
    if w is None or w.ndim != 2 or w.dtype not in (np.int8, np.uint8):
        return False
    if mi.operand(3) is not None and (wz is None or wz.size not in (1, w.shape[1])):
        return False
    n = w.shape[1]
    cast = _sole_user(module, mi.results[0], "cast")
    if cast is None or cast.results[0].type.dtype is not DType.float32:
        return False
    mul = _sole_user(module, cast.results[0], "mul")
    scale = _other(mul, cast.results[0]) if mul is not None else None
    sp = scale.producer if scale is not None else None
    if sp is None or sp.name != "mul" or len(scale.uses) != 1:
        return False
    ws = _other(sp, xs)
    wsc = _const(ws) if ws is not None else None
    if not _per_column(wsc, n) or mul.results[0].type != _float_like(mul.results[0], n):
        return False
    last, bias = mul, None
    add = _sole_user(module, mul.results[0], "add")
    if add is not None:
        b = _other(add, mul.results[0])
        bc = _const(b) if b is not None else None
        if bc is not None and bc.dtype == np.float32 and bc.shape == (n,) \
                and add.results[0].type == mul.results[0].type:
            last, bias = add, b
    bld = Builder(last.parent, before=last, provenance=mi.provenance + last.provenance,
                  created_by="qdq-dynamic")
    wzv = mi.operand(3) if mi.operand(3) is not None else bld.constant(np.zeros((), w.dtype))
    new = bld.op("dynamic_qmatmul", x, mi.operand(1), ws, wzv, *([bias] if bias is not None else []),
                 num_results=1)
    if new.type != last.results[0].type:
        new.producer.erase()
        return False
    new.name = last.results[0].name
    last.replace_with([new])
    for op in (mul, sp, cast, mi):
        if op.parent is not None and all(not r.uses for r in op.results):
            op.erase()
    return True


def _float_like(v, n: int):
    t = v.type
    ok = isinstance(t, TensorType) and t.dtype is DType.float32 and t.shape and t.shape[-1] == n
    return t if ok else None


def dynamic_matmul_to_fused(module: Module, ctx=None) -> bool:
    """Rewrite the top-level dynamic-quantization matmul chains (in place)."""
    if ctx is not None:
        native = _native_ops(getattr(ctx, "backend", None))
        if native is None or "dynamic_qmatmul" not in native:
            return False
    changed = False
    for dq in list(module.graph.block):
        if dq.name != "dynamic_quantize_linear" or dq.parent is None:
            continue
        if not isinstance(dq.operand(0).type, TensorType) or dq.operand(0).type.dtype is not DType.float32:
            continue
        for mi in list(dq.results[0].users):
            if mi.name == "matmul_integer" and mi.parent is not None:
                changed |= _rewrite(module, dq, mi)
        if all(not r.uses for r in dq.results):
            dq.erase()
    return changed


register_level_pass(2, lambda: FunctionPass(dynamic_matmul_to_fused, "qdq-dynamic"), index=0)
