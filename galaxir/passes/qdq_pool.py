"""QDQ recognition of global average pooling: ``DequantizeLinear -> global_average_pool
(or reduce_mean over every spatial axis) (-> flatten / reshape / squeeze) ->
QuantizeLinear`` (per-tensor) becomes ``int8_global_average_pool`` (then the same shape
op on the 8-bit result), so the pooling in front of a QDQ CNN's classifier runs on the
8-bit tensor (galaxir/ir/ops/quant_int8_pool.py).

Part of the qdq-int8 pass (passes/qdq.py calls ``rewrite_mean`` with its other 8-bit
rewrites), and only for a target that runs the op natively; the numpy reference keeps
the float QDQ graph."""
from __future__ import annotations

import numpy as np

from ..ir import Builder, Module
from ..ir.types import TensorType
from .qdq import _const, _dq_per_tensor, _quantized_source, _single_use, check_scale, \
    check_zero_point

#: shape ops allowed between the mean and the QuantizeLinear (value: their data operand)
RESHAPES = ("flatten", "reshape", "squeeze")


def _spatial_mean(p):
    """(keepdims) if ``p`` averages an NCHW-style tensor over all its spatial axes."""
    x = p.operands[0]
    if not isinstance(x.type, TensorType) or x.type.shape is None or len(x.type.shape) < 3:
        return None
    rank = len(x.type.shape)
    if p.name == "global_average_pool":
        return 1 if (p.attr("layout") or "NCHW") == "NCHW" else None
    if p.name != "reduce_mean" or p.operand(1) is None:
        return None
    axes = _const(p.operand(1))
    if axes is None:
        return None
    norm = sorted({int(a) % rank for a in np.asarray(axes).reshape(-1)})
    if norm != list(range(2, rank)) or axes.size != rank - 2:
        return None
    keep = p.attr("keepdims")
    return 1 if keep is None else int(bool(keep))


def rewrite_mean(module: Module, q) -> bool:
    got = _quantized_source(q)
    if got is None:
        return False
    (sy, zy, out_dt), v, p = got
    shape_op = None
    if p is not None and p.name in RESHAPES and _single_use(module, v) and not p.regions:
        shape_op = p
        v = p.operands[0]
        p = v.producer
    if p is None or not _single_use(module, v) or p.regions:
        return False
    keep = _spatial_mean(p)
    if keep is None:
        return False
    d = _dq_per_tensor(p.operands[0])
    if d is None:
        return False
    check_scale(d.op, "x_scale", d.s)
    check_zero_point(d.op, "zero point", d.z, d.q.type.dtype.numpy)
    check_scale(q, "y_scale", sy)
    prov = p.provenance + q.provenance + (shape_op.provenance if shape_op else ())
    bld = Builder(q.parent, before=q, provenance=prov, created_by="qdq-int8-pool")
    pool = bld.op("int8_global_average_pool", d.q,
                 bld.constant(np.asarray(d.s, np.float32).reshape(())),
                 bld.constant(np.asarray(d.z, d.q.type.dtype.numpy).reshape(())),
                 bld.constant(np.asarray(sy, np.float32).reshape(())),
                 bld.constant(np.asarray(zy, out_dt.numpy).reshape(())), keepdims=keep)
    new = pool
    if shape_op is not None:
        new = bld.op(shape_op.name, pool, *shape_op.operands[1:], num_results=1,
                     **dict(shape_op.attrs))
    if new.type != q.results[0].type:
        for r in dict.fromkeys((new, pool)):
            r.producer.erase()
        return False
    q.replace_with([new])
    for op in ([shape_op] if shape_op else []) + [p]:
        if all(not r.uses for r in op.results):
            op.erase()
    return True
