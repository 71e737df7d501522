"""QDQ recognition: ``DequantizeLinear -> conv / matmul / gemm (+ bias) (-> relu / clip)
-> QuantizeLinear`` becomes one ``int8_conv`` / ``int8_matmul`` (galaxir/ir/ops/quant_int8.py)
that accumulates in int32 and requantizes, as onnxruntime's QDQ fusion does.

Between the quantized convs, the ops that onnxruntime's QDQ quantizer (and
``gx.quantize``) leave between a DequantizeLinear and a QuantizeLinear run on the 8-bit
values too, so a QDQ CNN has no float round trip:

* ``DequantizeLinear x2 -> add (-> relu) -> QuantizeLinear`` becomes ``int8_add`` (the
  same float32 arithmetic in one pass over the 8-bit tensors: bit-equal to the QDQ graph);
* ``max_pool``, ``concat``, nearest ``resize`` and the shape ops (flatten, reshape,
  squeeze, unsqueeze) whose inputs are DequantizeLinears with
  the QuantizeLinear's own scale and zero point run on the 8-bit tensors directly (they
  only select values, and dequantization is monotonic: exact).

It runs first at O1 and above (before constant folding turns the int8 weights'
DequantizeLinear into float constants) and only for a target whose backend runs
``int8_conv`` natively (the cpu backend); the numpy reference keeps the float QDQ
semantics.  The result differs from the float QDQ graph by at most one quantization step
(the float graph rounds the conv's float32 output, the int8 op its exact accumulator).

Scales must be positive and finite and zero points in their type's range: a QDQ chain
that breaks that raises CompileError naming the op, here and in the cpu lowering.
"""
from __future__ import annotations

import numpy as np

from ..errors import CompileError
from ..ir import Builder, Module
from ..ir.types import DType, TensorType
from .manager import FunctionPass
from .pipeline import register_level_pass

Q8 = (DType.uint8, DType.int8)


def _const(v):
    if v is None or v.producer is None or v.producer.name != "constant":
        return None
    return np.asarray(v.producer.attrs.get("value"))


def check_scale(op, what: str, s: np.ndarray) -> None:
    s = np.asarray(s)
    if s.size == 0 or not np.all(np.isfinite(s.astype(np.float64))) or np.any(s <= 0):
        raise CompileError(f"{op.name} ({_where(op)}): {what} must be positive and finite, got "
                           f"{np.array2string(s.reshape(-1)[:8], precision=4)}")


def check_zero_point(op, what: str, z: np.ndarray, dt: np.dtype) -> None:
    if dt.kind not in "iu":
        return
    info = np.iinfo(dt)
    z = np.asarray(z).astype(np.int64)
    if z.size and (z.min() < info.min or z.max() > info.max):
        raise CompileError(f"{op.name} ({_where(op)}): {what} {z.reshape(-1)[:8]} is outside "
                           f"the {dt} range [{info.min}, {info.max}]")


def _where(op) -> str:
    names = [r.name for r in op.results if getattr(r, "name", None)]
    return f"result {names[0]}" if names else "op"


def _single_use(module: Module, v) -> bool:
    return len(v.uses) == 1 and not any(o is v for o in module.graph.outputs)


class _DQ:
    """A dequantize_linear feeding the conv / matmul: its int tensor, scale, zero point."""

    def __init__(self, op):
        self.op = op
        self.q = op.operands[0]
        self.scale = op.operands[1]
        self.zp = op.operand(2)
        self.s = _const(self.scale)
        self.z = _const(self.zp) if self.zp is not None else np.zeros((), np.uint8)


def _dq(v, want_const: bool):
    p = v.producer if v is not None else None
    if p is None or p.name != "dequantize_linear" or (p.attr("block_size") or 0):
        return None
    d = _DQ(p)
    if not isinstance(d.q.type, TensorType) or d.q.type.dtype not in Q8:
        return None
    if d.s is None or (d.zp is not None and d.z is None):
        return None
    if want_const and _const(d.q) is None:
        return None
    if not isinstance(p.results[0].type, TensorType) or p.results[0].type.dtype is not DType.float32:
        return None
    return d


def _bias_int(b, sx: np.ndarray, sw: np.ndarray, n: int):
    """The int32 bias in the accumulator's scale (sx * sw), or None if it cannot be had."""
    if b is None:
        return None
    acc_scale = (sx.astype(np.float32) * sw.astype(np.float32)).reshape(-1)
    p = b.producer
    if p is not None and p.name == "dequantize_linear":
        q, s = _const(p.operands[0]), _const(p.operands[1])
        z = _const(p.operand(2)) if p.operand(2) is not None else np.zeros((), np.int32)
        if q is None or s is None or z is None or q.dtype != np.int32:
            return None
        if q.size == n and not np.any(z) and np.array_equal(
                np.broadcast_to(s.reshape(-1), (n,)), np.broadcast_to(acc_scale, (n,))):
            return q.reshape(n).astype(np.int32)
        f = ((q.astype(np.float32) - z.astype(np.float32)) * s.astype(np.float32))
    else:
        f = _const(b)
        if f is None or f.dtype != np.float32:
            return None
    f = np.asarray(f, np.float64).reshape(-1)
    if f.size not in (1, n):
        return None
    r = np.rint(np.broadcast_to(f, (n,)) / np.broadcast_to(acc_scale, (n,)).astype(np.float64))
    if np.any(np.abs(r) > 2**31 - 1):
        return None
    return r.astype(np.int32)


def _clamp_from(act, act_params, sy: float, zy: int) -> tuple[float, float] | None:
    """The clamp (lo, hi) in the quantized domain of a relu / clip folded into the store."""
    if act == "relu":
        return (zy, np.inf)
    if act == "clip":
        lo, hi = act_params
        return (zy + np.rint(np.float32(lo) / np.float32(sy)) if np.isfinite(lo) else -np.inf,
                zy + np.rint(np.float32(hi) / np.float32(sy)) if np.isfinite(hi) else np.inf)
    return None


def _rewrite_one(module: Module, q) -> bool:
    if (q.attr("block_size") or 0) or q.attr("precision") is not None:
        return False
    sy, zy_v = _const(q.operands[1]), q.operand(2)
    zy = _const(zy_v) if zy_v is not None else None
    if sy is None or sy.size != 1 or (zy_v is not None and (zy is None or zy.size != 1)):
        return False
    out_t = q.results[0].type
    if not isinstance(out_t, TensorType) or out_t.dtype not in Q8:
        return False
    if zy is None:
        zy = np.zeros((), out_t.dtype.numpy)
    v = q.operands[0]
    clamp = (-np.inf, np.inf)
    absorbed = []
    p = v.producer
    if p is not None and p.name in ("relu", "clip") and _single_use(module, v):
        if p.name == "relu":
            c = _clamp_from("relu", (), float(sy.reshape(-1)[0]), int(zy.reshape(-1)[0]))
        else:
            lo = _const(p.operand(1)) if p.operand(1) is not None else np.float32(-np.inf)
            hi = _const(p.operand(2)) if p.operand(2) is not None else np.float32(np.inf)
            if lo is None or hi is None:
                return False
            c = _clamp_from("clip", (float(lo), float(hi)), float(sy.reshape(-1)[0]),
                            int(zy.reshape(-1)[0]))
        clamp = c
        absorbed.append(p)
        v = p.operands[0]
        p = v.producer
    if p is None or not _single_use(module, v):
        return False
    bias = None
    if p.name == "add" and p.operands[0].producer is not None \
            and p.operands[0].producer.name == "matmul" and _single_use(module, p.operands[0]):
        bias = p.operands[1]
        absorbed.append(p)
        p = p.operands[0].producer
    if p.name == "conv":
        x, w = _dq(p.operands[0], False), _dq(p.operands[1], True)
        bias = p.operand(2)
        kind = "int8_conv"
    elif p.name == "matmul":
        x, w = _dq(p.operands[0], False), _dq(p.operands[1], True)
        kind = "int8_matmul"
    elif p.name == "gemm" and not p.attr("transA") and float(p.attr("alpha") or 1.0) == 1.0 \
            and float(p.attr("beta") if p.attr("beta") is not None else 1.0) == 1.0:
        x, w = _dq(p.operands[0], False), _dq(p.operands[1], True)
        bias = p.operand(2)
        kind = "int8_matmul"
    else:
        return False
    if x is None or w is None or x.s.size != 1 or x.z.size != 1:
        return False
    wq = _const(w.q)
    if kind == "int8_conv":
        n_out = wq.shape[0]
        per_axis = w.s.size > 1
        axis = w.op.attr("axis") if w.op.attr("axis") is not None else 1
        if per_axis and axis % wq.ndim != 0:
            return False
    else:
        if wq.ndim != 2:
            return False
        trans = p.name == "gemm" and bool(p.attr("transB"))
        per_axis = w.s.size > 1
        if per_axis and (w.op.attr("axis") if w.op.attr("axis") is not None else 1) % 2 != \
                (0 if trans else 1):
            return False
        n_out = wq.shape[0] if trans else wq.shape[1]
        if trans:
            wq = np.ascontiguousarray(wq.T)
    if w.s.size not in (1, n_out) or w.z.size not in (1, w.s.size):
        return False
    for d, name in ((x, "x_scale"), (w, "w_scale")):
        check_scale(d.op, name, d.s)
        check_zero_point(d.op, "zero point", d.z, d.q.type.dtype.numpy)
    check_scale(q, "y_scale", sy)
    b_int = _bias_int(bias, x.s.reshape(-1), w.s.reshape(-1), n_out) if bias is not None else None
    if bias is not None and b_int is None:
        return False
    tlo, thi = (0, 255) if out_t.dtype is DType.uint8 else (-128, 127)
    lo = int(max(tlo, clamp[0])) if np.isfinite(clamp[0]) else tlo
    hi = int(min(thi, clamp[1])) if np.isfinite(clamp[1]) else thi
    if lo > hi:
        lo = hi = min(max(lo, tlo), thi)
    bld = Builder(q.parent, before=q, provenance=p.provenance + q.provenance,
                  created_by="qdq-int8")
    xz = bld.constant(np.asarray(x.z, x.q.type.dtype.numpy).reshape(()))
    wz = bld.constant(np.asarray(w.z, w.q.type.dtype.numpy).reshape(-1 if w.s.size > 1 else ()))
    ws = bld.constant(np.asarray(w.s, np.float32).reshape(-1 if w.s.size > 1 else ()))
    ops = [x.q, bld.constant(np.asarray(x.s, np.float32).reshape(())), xz,
           bld.constant(wq), ws, wz, bld.constant(np.asarray(sy, np.float32).reshape(())),
           bld.constant(np.asarray(zy, out_t.dtype.numpy).reshape(()))]
    if b_int is not None:
        ops.append(bld.constant(b_int))
    attrs = {"clamp_lo": lo, "clamp_hi": hi}
    if kind == "int8_conv":
        attrs.update({k: p.attrs[k] for k in ("auto_pad", "dilations", "group", "kernel_shape",
                                              "pads", "strides") if k in p.attrs})
    new = bld.op(kind, *ops, **attrs)
    q.replace_with([new])
    for op in absorbed:
        if all(not r.uses for r in op.results):
            op.erase()
    if all(not r.uses for r in p.results):
        p.erase()
    return True


def _per_tensor_q(q):
    """(scale, zero point, dtype) of a per-tensor quantize_linear with constant params."""
    if (q.attr("block_size") or 0) or q.attr("precision") is not None:
        return None
    sy = _const(q.operands[1])
    zv = q.operand(2)
    zy = _const(zv) if zv is not None else None
    out_t = q.results[0].type
    if sy is None or sy.size != 1 or (zv is not None and (zy is None or zy.size != 1)) \
            or not isinstance(out_t, TensorType) or out_t.dtype not in Q8:
        return None
    if zy is None:
        zy = np.zeros((), out_t.dtype.numpy)
    return np.asarray(sy, np.float32).reshape(()), np.asarray(zy).reshape(()), out_t.dtype


def _dq_per_tensor(v):
    d = _dq(v, False)
    if d is None or d.s.size != 1 or d.z.size != 1:
        return None
    return d


def _quantized_source(q):
    """((scale, zero point, dtype), value, its producer) of a per-tensor QuantizeLinear
    ``q``: what the rewrites below fold into an 8-bit op; None for other quantizers."""
    qp = _per_tensor_q(q)
    if qp is None:
        return None
    v = q.operands[0]
    return qp, v, v.producer


def _rewrite_add(module: Module, q) -> bool:
    """DQ(a) + DQ(b) (-> relu) -> Q  ==>  int8_add (a relu becomes the clamp)."""
    got = _quantized_source(q)
    if got is None:
        return False
    (sy, zy, out_dt), v, p = got
    absorbed = []
    lo, hi = (0, 255) if out_dt is DType.uint8 else (-128, 127)
    if p is not None and p.name == "relu" and _single_use(module, v):
        lo = max(lo, int(zy))
        absorbed.append(p)
        v = p.operands[0]
        p = v.producer
    if p is None or p.name != "add" or not _single_use(module, v):
        return False
    a, b = _dq_per_tensor(p.operands[0]), _dq_per_tensor(p.operands[1])
    if a is None or b is None:
        return False
    for d in (a, b):
        check_scale(d.op, "x_scale", d.s)
        check_zero_point(d.op, "zero point", d.z, d.q.type.dtype.numpy)
    check_scale(q, "y_scale", sy)
    bld = Builder(q.parent, before=q, provenance=p.provenance + q.provenance, created_by="qdq-int8")
    ops = []
    for d in (a, b):
        ops += [d.q, bld.constant(np.asarray(d.s, np.float32).reshape(())),
                bld.constant(np.asarray(d.z, d.q.type.dtype.numpy).reshape(()))]
    ops += [bld.constant(sy), bld.constant(np.asarray(zy, out_dt.numpy))]
    new = bld.op("int8_add", *ops, clamp_lo=lo, clamp_hi=hi)
    q.replace_with([new])
    for op in absorbed + [p]:
        if all(not r.uses for r in op.results):
            op.erase()
    return True


#: ops that only select or move values: on inputs quantized with the result's own scale and
#: zero point they give exactly the quantized result; value: their tensor operands
SELECTING = {"max_pool": (0,), "concat": None, "resize": (0,), "flatten": (0,), "reshape": (0,),
             "squeeze": (0,), "unsqueeze": (0,)}


def _rewrite_selecting(module: Module, q) -> bool:
    """Q(op(DQ(x), ...)) with every DQ sharing Q's params  ==>  op(x, ...) on 8 bits."""
    got = _quantized_source(q)
    if got is None:
        return False
    (sy, zy, out_dt), v, p = got
    if p is None or p.name not in SELECTING or not _single_use(module, v) or p.regions:
        return False
    if any(r.uses for r in p.results[1:]):
        return False
    if p.name == "resize" and (p.attr("mode") or "nearest") != "nearest":
        return False
    idx = SELECTING[p.name]
    idx = range(len(p.operands)) if idx is None else idx
    dqs = {}
    for i in idx:
        d = _dq_per_tensor(p.operand(i))
        if d is None or d.q.type.dtype is not out_dt \
                or np.float32(d.s.reshape(())) != sy or int(d.z.reshape(())) != int(zy):
            return False
        dqs[i] = d
    bld = Builder(q.parent, before=q, provenance=p.provenance + q.provenance, created_by="qdq-int8")
    operands = [dqs[i].q if i in dqs else p.operand(i) for i in range(len(p.operands))]
    new = bld.op(p.name, *operands, num_results=1, **dict(p.attrs))
    if new.type != q.results[0].type:
        new.producer.erase()
        return False
    q.replace_with([new])
    if all(not r.uses for r in p.results):
        p.erase()
    return True


def _native_ops(backend):
    native_ops = getattr(backend, "native_ops", None)
    if native_ops is None:
        return None
    try:
        return native_ops()
    except Exception:
        return None


def _backend_takes_int8(backend) -> bool:
    """Does the target (``ctx.backend``) run int8_conv and int8_matmul natively?"""
    native = _native_ops(backend)
    return native is not None and "int8_conv" in native and "int8_matmul" in native


def qdq_to_int8(module: Module, ctx=None) -> bool:
    """Rewrite the top-level QDQ chains of ``module`` (in place); True if any changed."""
    if ctx is not None and not _backend_takes_int8(getattr(ctx, "backend", None)):
        return False
    native = _native_ops(getattr(ctx, "backend", None)) if ctx is not None else None
    changed = False
    for op in list(module.graph.block):
        if op.name == "quantize_linear" and op.parent is not None:
            changed |= _rewrite_one(module, op)
    from .qdq_pool import rewrite_mean  # (it builds on this module's matchers)
    add = native is None or "int8_add" in native
    pool = native is None or "int8_global_average_pool" in native
    for op in list(module.graph.block):
        if op.name == "quantize_linear" and op.parent is not None:
            changed |= (add and (_rewrite_add(module, op) or _rewrite_selecting(module, op))) \
                or (pool and rewrite_mean(module, op))
    return changed


register_level_pass(1, lambda: FunctionPass(qdq_to_int8, "qdq-int8"), index=0)
