"""Structural ops: constants, the block terminator, and control flow with regions
(if, loop, scan).  ``merge_types`` is the join used wherever two values may flow into one
result (if branches, loop-carried values, sequence elements)."""
from __future__ import annotations

from ..opdef import BOOL, INT64, attr, define
from ..traits import ConstantLike
from ..types import (UNKNOWN, AnyType, DType, OptionalType, SequenceType, TensorType, Type,
                     types_compatible)
from .rules import fail


def _constant_type(op) -> list[Type]:
    v = op.attrs.get("value")
    if v is None:
        raise fail(op, "needs a 'value' tensor attribute")
    return [TensorType(DType.from_numpy(v.dtype), v.shape)]


define("constant", traits=[ConstantLike()],
       attrs={"value": attr("tensor", required=True)}, infer=_constant_type,
       doc="A tensor known at compile time (weights, folded values).")

define("return", operands=["values*"], num_results=0, pure=False,
       doc="Terminates a block; its operands are the block's results.")


def merge_types(a: Type | None, b: Type | None) -> Type:
    """The most precise type that holds a value of either type: shared dims kept,
    differing dims unknown, differing ranks unknown rank.  Unknown (None/any) gives way."""
    if a is None or isinstance(a, AnyType):
        return b if b is not None else AnyType()
    if b is None or isinstance(b, AnyType):
        return a
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype != b.dtype:
            return a  # a type error the verifier of the producer reports; keep the first
        if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
            return TensorType(a.dtype, None)
        return TensorType(a.dtype, tuple(x if x == y else UNKNOWN for x, y in zip(a.shape, b.shape)))
    if isinstance(a, SequenceType) and isinstance(b, SequenceType):
        return SequenceType(merge_types(a.elem, b.elem))
    if isinstance(a, OptionalType) and isinstance(b, OptionalType):
        return OptionalType(merge_types(a.elem, b.elem))
    if isinstance(a, OptionalType):
        return OptionalType(merge_types(a.elem, b))
    if isinstance(b, OptionalType):
        return OptionalType(merge_types(a, b.elem))
    return a


def relax_type(t: Type) -> Type:
    """``t`` with every dim unknown (rank kept): for values whose shape may change per
    iteration (loop-carried values)."""
    if isinstance(t, TensorType):
        return t if t.shape is None else TensorType(t.dtype, (UNKNOWN,) * len(t.shape))
    if isinstance(t, SequenceType):
        return SequenceType(relax_type(t.elem))
    if isinstance(t, OptionalType):
        return OptionalType(relax_type(t.elem))
    return t


def _region_result_types(region) -> list[Type]:
    return [v.type if v is not None else AnyType() for v in region.block.results]


def _if_infer(op) -> list[Type]:
    then_t = _region_result_types(op.regions[0])
    else_t = _region_result_types(op.regions[1])
    return [merge_types(a, b) for a, b in zip(then_t, else_t)]


def _if_verify(op) -> None:
    n = len(op.results)
    for i, region in enumerate(op.regions):
        got = len(region.block.results)
        if got != n:
            raise fail(op, f"branch {i} returns {got} values, expected {n} (one per result)")
        if region.block.args:
            raise fail(op, f"branch {i} must take no arguments, has {len(region.block.args)}")


define("if", operands=["cond"], num_results=None, regions=2, infer=_if_infer, verify=_if_verify,
       types={"cond": BOOL},
       doc="Runs region 0 when cond is true, else region 1; results are the branch's results "
           "(tensors, sequences or optionals).")


def _loop_infer(op) -> list[Type]:
    body = _region_result_types(op.regions[0])[1:]
    n_carried = len(op.operands) - 2
    out = []
    for i, t in enumerate(body):
        if i < n_carried:
            init = op.operands[i + 2]
            # zero iterations return the initial value: the result holds either
            out.append(merge_types(t, init.type) if init is not None else t)
        elif isinstance(t, TensorType):  # scan outputs gain a leading iteration dim
            out.append(TensorType(t.dtype, None if t.shape is None else (UNKNOWN,) + t.shape))
        else:
            out.append(t)
    return out


def _loop_verify(op) -> None:
    body = op.regions[0].block
    n_carried = len(op.operands) - 2
    if len(op.operands) < 2:
        raise fail(op, "needs operands (max_trip_count?, cond?, carried...)")
    if len(body.args) != n_carried + 2:
        raise fail(op, f"body takes {len(body.args)} arguments, expected {n_carried + 2} "
                       "(iteration number, condition, then one per carried value)")
    if len(body.results) < n_carried + 1:
        raise fail(op, f"body returns {len(body.results)} values, expected at least {n_carried + 1}")
    for i in range(n_carried):
        init = op.operands[i + 2]
        if init is not None and not types_compatible(body.args[i + 2].type, init.type) and \
                not types_compatible(init.type, body.args[i + 2].type):
            raise fail(op, f"carried value {i}: body argument {body.args[i + 2].type} does not "
                           f"match initial value {init.type}")


define("loop", operands=["max_trip_count?", "cond?", "carried*"], num_results=None, regions=1,
       infer=_loop_infer, verify=_loop_verify, types={"max_trip_count": INT64, "cond": BOOL},
       doc="ONNX Loop: body(iter, cond, carried...) -> (cond, carried..., scan_outputs...).")


def _scan_infer(op) -> list[Type]:
    n_scan_in = op.attr("num_scan_inputs")
    n_state = len(op.operands) - n_scan_in
    body = _region_result_types(op.regions[0])
    out_axes = list(op.attr("scan_output_axes", ()) or ())
    out = [merge_types(t, op.operands[i].type) if op.operands[i] is not None else t
           for i, t in enumerate(body[:n_state])]
    in_axes = list(op.attr("scan_input_axes", ()) or ())
    lengths = []
    for j, v in enumerate(op.operands[n_state:]):
        t = v.type if v is not None else None
        if isinstance(t, TensorType) and t.shape is not None and t.shape:
            ax = in_axes[j] if j < len(in_axes) else 0
            ax = ax + len(t.shape) if ax < 0 else ax
            if 0 <= ax < len(t.shape):
                lengths.append(t.shape[ax])
    # the scan length: a static dim if any scan input has one, else a symbol, else unknown
    length = next((d for d in lengths if isinstance(d, int)),
                  next((d for d in lengths if d != UNKNOWN), UNKNOWN))
    for j, t in enumerate(body[n_state:]):
        if isinstance(t, TensorType) and t.shape is not None:
            axis = out_axes[j] if j < len(out_axes) else 0
            rank = len(t.shape) + 1
            axis = axis + rank if axis < 0 else axis
            shape = list(t.shape)
            shape.insert(axis, length)
            out.append(TensorType(t.dtype, tuple(shape)))
        else:
            out.append(t if not isinstance(t, TensorType) else TensorType(t.dtype, None))
    return out


def _scan_verify(op) -> None:
    n_scan_in = op.attr("num_scan_inputs")
    if n_scan_in is None or n_scan_in > len(op.operands):
        raise fail(op, f"num_scan_inputs={n_scan_in} but only {len(op.operands)} operands")
    if len(op.regions[0].block.args) != len(op.operands):
        raise fail(op, f"body takes {len(op.regions[0].block.args)} arguments, expected "
                       f"{len(op.operands)} (one per state and scan input)")
    n_state = len(op.operands) - n_scan_in
    if len(op.regions[0].block.results) < n_state:
        raise fail(op, f"body returns {len(op.regions[0].block.results)} values, expected at "
                       f"least {n_state} (one per state)")


define("scan", operands=["inputs*"], num_results=None, regions=1, infer=_scan_infer,
       verify=_scan_verify,
       attrs={"num_scan_inputs": attr("int", required=True), "scan_input_axes": attr("ints"),
              "scan_input_directions": attr("ints"), "scan_output_axes": attr("ints"),
              "scan_output_directions": attr("ints")},
       doc="ONNX Scan (opset 9+ form): states then scan inputs; body(states, slices) -> "
           "(states, scan_outputs).")


define("unreachable", num_results=None, attrs={"message": attr("str", required=True)},
       doc="Fails at run time with 'message'.  Stands in for an If branch whose ops cannot be "
           "typed (e.g. the 2-D branch of a graph built for 3-D): running it would fail anyway. "
           "Its results are typed at creation.")
