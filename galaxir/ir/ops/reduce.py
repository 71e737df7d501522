"""Reductions and the ops built on them: reduce_*, argmax/argmin, the softmax family,
normalizations (batch, layer, group, instance, rms, lp, mean-variance, lrn) and the
negative-log-likelihood loss.

Composite ops (softmax, log_softmax, layer_norm, rms_norm, group_norm, instance_norm,
batch_norm, lp_norm, mean_variance_norm) carry a ``decompose`` into core ops (reductions
and elementwise arithmetic), so a backend that lacks the named op still runs them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..opdef import INDEX, INT64, attr, define
from ..traits import LayoutAttr
from ..types import UNKNOWN, DType, TensorType
from .rules import const_value, fail, normalize_axis, same_as, tensor_operand

if TYPE_CHECKING:
    from ..core import Operation, Value

# -- reductions ------------------------------------------------------------------------------
REDUCTIONS = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod",
              "reduce_l1", "reduce_l2", "reduce_log_sum", "reduce_log_sum_exp",
              "reduce_sum_square"]


def reduced_shape(op: "Operation", shape, axes, keepdims: bool):
    """The shape after reducing ``axes`` (already known) of ``shape`` (None: unknown rank)."""
    if shape is None:
        return None
    rank = len(shape)
    norm = {normalize_axis(op, int(a), rank) for a in axes}
    if len(norm) != len(list(axes)):
        raise fail(op, f"axes {list(axes)} name the same axis twice")
    if keepdims:
        return tuple(1 if i in norm else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in norm)


def _reduce_infer(op: "Operation"):
    t = tensor_operand(op, 0)
    keep = bool(op.attr("keepdims"))
    noop = bool(op.attr("noop_with_empty_axes"))
    axes_v = op.operand(1)
    if axes_v is not None:
        at = axes_v.type
        axes = const_value(op, 1)
        if axes is None:  # data-dependent axes
            if isinstance(at, TensorType) and at.shape is not None and len(at.shape) == 1 \
                    and at.shape[0] == 0:
                axes = np.zeros(0, np.int64)
            elif t.shape is None:
                return [t.with_shape(None)]
            elif keep:
                return [t.with_shape((UNKNOWN,) * len(t.shape))]
            elif isinstance(at, TensorType) and at.shape is not None and len(at.shape) == 1 \
                    and isinstance(at.shape[0], int):
                return [t.with_shape((UNKNOWN,) * max(len(t.shape) - at.shape[0], 0))]
            else:
                return [t.with_shape(None)]
        axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    else:
        axes = []
    if not axes:
        if noop:
            return [t]
        if t.shape is None:
            return [t] if keep else [t.with_shape(())]
        axes = list(range(len(t.shape)))
    return [t.with_shape(reduced_shape(op, t.shape, axes, keep))]


for _name in REDUCTIONS:
    define(_name, operands=["data", "axes?"], infer=_reduce_infer, types={"axes": INT64},
           attrs={"keepdims": attr("int", 1), "noop_with_empty_axes": attr("int", 0)},
           doc="Reduce over the int64 ``axes`` operand (all axes when absent or empty, "
               "unless noop_with_empty_axes=1, which makes it an identity).")


def _arg_infer(op: "Operation"):
    t = tensor_operand(op, 0)
    keep = bool(op.attr("keepdims"))
    if t.shape is None:
        return [TensorType(DType.int64, None)]
    axis = normalize_axis(op, op.attr("axis"), len(t.shape))
    if not t.shape:
        raise fail(op, "input must have rank >= 1")
    return [TensorType(DType.int64, reduced_shape(op, t.shape, [axis], keep))]


for _name in ["argmax", "argmin"]:
    define(_name, operands=["data"], infer=_arg_infer,
           attrs={"axis": attr("int", 0), "keepdims": attr("int", 1),
                  "select_last_index": attr("int", 0)})


# -- softmax family --------------------------------------------------------------------------
def _axis_rule(op: "Operation"):
    t = tensor_operand(op, 0)
    if t.shape is not None:
        normalize_axis(op, op.attr("axis"), len(t.shape))
    return [t]


def _axes_const(b, axes) -> "Value":
    return b.constant(np.asarray(list(axes), dtype=np.int64))


def _scalar(b, value, like: "Value") -> "Value":
    return b.constant(np.asarray(value, dtype=like.type.dtype.numpy))


def _decompose_softmax(b, op):
    x = op.operands[0]
    ax = _axes_const(b, [op.attr("axis")])
    shifted = b.sub(x, b.reduce_max(x, ax, keepdims=1))
    e = b.exp(shifted)
    return [b.div(e, b.reduce_sum(e, ax, keepdims=1))]


def _decompose_log_softmax(b, op):
    x = op.operands[0]
    ax = _axes_const(b, [op.attr("axis")])
    shifted = b.sub(x, b.reduce_max(x, ax, keepdims=1))
    return [b.sub(shifted, b.log(b.reduce_sum(b.exp(shifted), ax, keepdims=1)))]


define("softmax", operands=["x"], attrs={"axis": attr("int", -1)}, infer=_axis_rule,
       decompose=_decompose_softmax, doc="exp(x - max) / sum(exp(x - max)) along ``axis``.")
define("log_softmax", operands=["x"], attrs={"axis": attr("int", -1)}, infer=_axis_rule,
       decompose=_decompose_log_softmax)
define("hardmax", operands=["x"], attrs={"axis": attr("int", -1)}, infer=_axis_rule,
       doc="1 at the first maximum along ``axis``, 0 elsewhere.")


# -- normalizations ----------------------------------------------------------------------------
def _trailing_axes(op: "Operation", rank: int | None):
    if rank is None:
        raise fail(op, "decomposition needs the input rank")
    axis = normalize_axis(op, op.attr("axis"), rank)
    return list(range(axis, rank))


def _channel_view(b, v: "Value", rank: int) -> "Value":
    """Reshape a per-channel [C] vector to [C, 1, ..., 1] so it broadcasts against NC..."""
    if rank <= 2:
        return v
    return b.reshape(v, b.constant(np.asarray([-1] + [1] * (rank - 2), np.int64)))


def _rank_of(op: "Operation", i: int = 0) -> int:
    t = tensor_operand(op, i)
    if t.shape is None:
        raise fail(op, "decomposition needs the input rank")
    return len(t.shape)


def _normalize(b, x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes`` (kept dims), from core ops."""
    ax = _axes_const(b, axes)
    d = b.sub(x, b.reduce_mean(x, ax, keepdims=1))
    var = b.reduce_mean(b.mul(d, d), ax, keepdims=1)
    return b.div(d, b.sqrt(b.add(var, _scalar(b, eps, x))))


def _decompose_layer_norm(b, op):
    x, scale, bias = op.operand(0), op.operand(1), op.operand(2)
    y = b.mul(_normalize(b, x, _trailing_axes(op, _rank_of(op)), op.attr("epsilon")), scale)
    return [y if bias is None else b.add(y, bias)]


def _decompose_rms_norm(b, op):
    x, scale = op.operands
    ax = _axes_const(b, _trailing_axes(op, _rank_of(op)))
    ms = b.reduce_mean(b.mul(x, x), ax, keepdims=1)
    y = b.div(x, b.sqrt(b.add(ms, _scalar(b, op.attr("epsilon"), x))))
    return [b.mul(y, scale)]


def _decompose_instance_norm(b, op):
    x, scale, bias = op.operands
    rank = _rank_of(op)
    y = _normalize(b, x, range(2, rank), op.attr("epsilon"))
    return [b.add(b.mul(y, _channel_view(b, scale, rank)), _channel_view(b, bias, rank))]


def _decompose_group_norm(b, op):
    x, scale, bias = op.operands
    rank = _rank_of(op)
    g = op.attr("num_groups")
    grouped = b.reshape(x, b.constant(np.asarray([0, g, -1], np.int64)))
    y = _normalize(b, grouped, [2], op.attr("epsilon"))
    y = b.reshape(y, b.shape(x))
    return [b.add(b.mul(y, _channel_view(b, scale, rank)), _channel_view(b, bias, rank))]


def _decompose_batch_norm(b, op):
    x, scale, bias, mean, var = op.operands
    rank = _rank_of(op)
    inv = b.div(scale, b.sqrt(b.add(var, _scalar(b, op.attr("epsilon"), var))))
    shift = b.sub(bias, b.mul(mean, inv))
    if (op.attr("layout") or "NCHW") == "NHWC":  # channels last: [C] broadcasts as it is
        return [b.add(b.mul(x, inv), shift)]
    return [b.add(b.mul(x, _channel_view(b, inv, rank)), _channel_view(b, shift, rank))]


def _decompose_lp_norm(b, op):
    x = op.operands[0]
    ax = _axes_const(b, [op.attr("axis")])
    p = op.attr("p")
    norm = b.reduce_l2(x, ax, keepdims=1) if p == 2 else b.reduce_l1(x, ax, keepdims=1)
    zero = _scalar(b, 0, x)
    is_zero = b.equal(norm, zero)
    safe = b.where(is_zero, _scalar(b, 1, x), norm)
    return [b.where(is_zero, zero, b.div(x, safe))]


def _decompose_mvn(b, op):
    x = op.operands[0]
    ax = _axes_const(b, op.attr("axes"))
    mean = b.reduce_mean(x, ax, keepdims=1)
    var = b.sub(b.reduce_mean(b.mul(x, x), ax, keepdims=1), b.mul(mean, mean))
    return [b.div(b.sub(x, mean), b.add(b.sqrt(var), _scalar(b, 1e-9, x)))]


def _check_rank_at_least(n: int):
    def rule(op: "Operation"):
        t = tensor_operand(op, 0)
        if t.shape is not None and len(t.shape) < n:
            raise fail(op, f"input must have rank >= {n}, got {t}")
        return [t]
    return rule


def _layer_norm_infer(op: "Operation"):
    t = tensor_operand(op, 0)
    if t.shape is not None:
        normalize_axis(op, op.attr("axis"), len(t.shape))
    return [t]


def _lp_norm_verify_p(op: "Operation"):
    if op.attr("p") not in (1, 2):
        raise fail(op, f"p must be 1 or 2, got {op.attr('p')}")


_NORM_DOC = "stash_type: the ONNX compute-precision attribute (1 = float32 statistics)."
_NORM_TYPES = {"x": "T", "scale": "T", "bias": "T"}
define("layer_norm", operands=["x", "scale", "bias?"], infer=_layer_norm_infer, types=_NORM_TYPES,
       attrs={"axis": attr("int", -1), "epsilon": attr("float", 1e-5),
              "stash_type": attr("int", 1)},
       decompose=_decompose_layer_norm,
       doc="Normalize over the axes from ``axis`` to the last; then * scale + bias. " + _NORM_DOC)
define("rms_norm", operands=["x", "scale"], infer=_layer_norm_infer,
       types={"x": "T", "scale": "T"},
       attrs={"axis": attr("int", -1), "epsilon": attr("float", 1e-5),
              "stash_type": attr("int", 1)},
       decompose=_decompose_rms_norm, doc="x / sqrt(mean(x^2) + eps) * scale. " + _NORM_DOC)
define("group_norm", operands=["x", "scale", "bias"], infer=_check_rank_at_least(2),
       types=_NORM_TYPES,
       attrs={"num_groups": attr("int", required=True), "epsilon": attr("float", 1e-5),
              "stash_type": attr("int", 1)},
       decompose=_decompose_group_norm,
       doc="Normalize channel groups; scale and bias are per channel [C]. " + _NORM_DOC)
define("instance_norm", operands=["x", "scale", "bias"], infer=_check_rank_at_least(2),
       types=_NORM_TYPES,
       attrs={"epsilon": attr("float", 1e-5)}, decompose=_decompose_instance_norm)
define("batch_norm", operands=["x", "scale", "bias", "mean", "var"],
       infer=_check_rank_at_least(1),
       types={"x": "T", "scale": "T", "bias": "T", "mean": "T", "var": "T"},
       attrs={"epsilon": attr("float", 1e-5),
                                              "layout": attr("str", "NCHW")},
       decompose=_decompose_batch_norm,
       doc="Inference-mode batch normalization with per-channel (axis 1) statistics. "
           "ONNX training mode imports as reductions feeding this op.")
define("lp_norm", operands=["x"], infer=_axis_rule, verify=_lp_norm_verify_p,
       attrs={"axis": attr("int", -1), "p": attr("int", 2)}, decompose=_decompose_lp_norm,
       doc="x / ||x||_p along ``axis`` (0 where the norm is 0).")
define("mean_variance_norm", operands=["x"], infer=same_as(0),
       attrs={"axes": attr("ints", (0, 2, 3))}, decompose=_decompose_mvn,
       doc="(x - mean) / (std + 1e-9) over ``axes``.")
def _lrn_infer(op: "Operation"):
    if (op.attr("layout") or "NCHW") not in ("NCHW", "NHWC"):
        raise fail(op, f"layout must be NCHW or NHWC, got {op.attr('layout')!r}")
    return _check_rank_at_least(2)(op)


define("lrn", traits=[LayoutAttr()],
       operands=["x"], infer=_lrn_infer,
       attrs={"size": attr("int", required=True), "alpha": attr("float", 1e-4),
              "beta": attr("float", 0.75), "bias": attr("float", 1.0),
              "layout": attr("str", "NCHW")},
       doc="Local response normalization across channels (axis 1; the last axis with "
           "layout NHWC, set by the O3 layout pass).")


# -- losses ----------------------------------------------------------------------------------
def _nll_infer(op: "Operation"):
    t = tensor_operand(op, 0)
    tgt = tensor_operand(op, 1)
    red = op.attr("reduction")
    if red not in ("none", "sum", "mean"):
        raise fail(op, f"reduction must be none, sum or mean, got {red!r}")
    if red != "none":
        return [t.with_shape(())]
    if t.shape is not None:
        if len(t.shape) < 2:
            raise fail(op, f"input must be [N, C, ...], got {t}")
        return [t.with_shape((t.shape[0],) + t.shape[2:])]
    return [t.with_shape(tgt.shape)]


define("negative_log_likelihood_loss", operands=["input", "target", "weight?"],
       infer=_nll_infer, types={"input": "T", "weight": "T", "target": INDEX},
       attrs={"reduction": attr("str", "mean"), "ignore_index": attr("int")},
       doc="-input[n, target[n, ...], ...] * weight[target]; ignore_index entries count 0.")
