"""Sequence and optional ops.  At run time a sequence is a list of tensors and an optional
is None or its value; the IR types are ``SequenceType`` and ``OptionalType``."""
from __future__ import annotations

import numpy as np

from ..opdef import INDEX, attr, define
from ..traits import SizeFromValues
from ..types import UNKNOWN, AnyType, DType, OptionalType, SequenceType, TensorType, Type
from .control import merge_types
from .rules import const_value, fail, normalize_axis, tensor_operand


def _seq_operand(op, i: int) -> SequenceType:
    v = op.operand(i)
    if v is None:
        raise fail(op, f"operand {i} is missing")
    if isinstance(v.type, AnyType):
        return SequenceType(AnyType())
    if not isinstance(v.type, SequenceType):
        raise fail(op, f"operand {i} must be a sequence, got {v.type}")
    return v.type


def _check_elem(op, seq: SequenceType, t: Type) -> None:
    e = seq.elem
    if isinstance(e, TensorType) and isinstance(t, TensorType) and e.dtype != t.dtype:
        raise fail(op, f"a {t.dtype.name} tensor cannot go into a sequence of {e.dtype.name}")


def _position_operand(op, i: int) -> None:
    v = op.operand(i)
    if v is not None and isinstance(v.type, TensorType):
        if v.type.shape is not None and any(d != 1 for d in v.type.shape if isinstance(d, int)):
            raise fail(op, f"position must be a scalar (or hold one element), got {v.type}")


# -- sequences ------------------------------------------------------------------------------
define("sequence_empty", attrs={"dtype": attr("dtype", DType.float32)},
       infer=lambda op: [SequenceType(TensorType(op.attr("dtype"), None))],
       doc="An empty sequence of tensors of element type 'dtype'.")


def _construct(op) -> list[Type]:
    if not op.operands:
        raise fail(op, "needs at least one tensor")
    t = None
    for i in range(len(op.operands)):
        t = merge_types(t, tensor_operand(op, i))
    return [SequenceType(t)]


define("sequence_construct", operands=["inputs*"], infer=_construct, types={"inputs": "T"},
       doc="A sequence of the operand tensors, in order.")


def _insert(op) -> list[Type]:
    seq = _seq_operand(op, 0)
    t = tensor_operand(op, 1)
    _check_elem(op, seq, t)
    _position_operand(op, 2)
    return [SequenceType(merge_types(seq.elem, t))]


define("sequence_insert", operands=["input_sequence", "tensor", "position?"], infer=_insert,
       types={"position": INDEX},
       doc="A copy of the sequence with the tensor inserted at position (default: the end).")


def _erase(op) -> list[Type]:
    _position_operand(op, 1)
    return [_seq_operand(op, 0)]


define("sequence_erase", operands=["input_sequence", "position?"], infer=_erase,
       types={"position": INDEX},
       doc="A copy of the sequence without the tensor at position (default: the last).")


def _at(op) -> list[Type]:
    _position_operand(op, 1)
    e = _seq_operand(op, 0).elem
    return [e if not isinstance(e, AnyType) else AnyType()]


define("sequence_at", operands=["input_sequence", "position"], infer=_at,
       types={"position": INDEX},
       doc="The tensor at position (negative counts from the end).")

define("sequence_length", operands=["input_sequence"],
       infer=lambda op: [_seq_operand(op, 0) and TensorType(DType.int64, ())],
       doc="The number of tensors in the sequence, an int64 scalar.")


def _split_to_sequence(op) -> list[Type]:
    t = tensor_operand(op, 0)
    keepdims = op.attr("keepdims", 1)
    if t.shape is None:
        return [SequenceType(TensorType(t.dtype, None))]
    axis = normalize_axis(op, op.attr("axis", 0), len(t.shape))
    split = const_value(op, 1)
    shape = list(t.shape)
    if op.operand(1) is None:
        if keepdims:
            shape[axis] = 1
        else:
            del shape[axis]
    else:
        shape[axis] = UNKNOWN
        if split is not None:
            split = np.asarray(split)
            if split.ndim == 0:  # chunks of this size, the last one may be smaller
                d = t.shape[axis]
                if isinstance(d, int) and int(split) > 0 and d % int(split) == 0:
                    shape[axis] = int(split)
            elif split.size and (split == split.reshape(-1)[0]).all():
                shape[axis] = int(split.reshape(-1)[0])
    return [SequenceType(TensorType(t.dtype, tuple(shape)))]


define("split_to_sequence", traits=[SizeFromValues()],
       operands=["input", "split?"], infer=_split_to_sequence,
       types={"split": INDEX},
       attrs={"axis": attr("int", 0), "keepdims": attr("int", 1)},
       doc="Splits a tensor along axis into a sequence: by 'split' sizes (1-D), into chunks "
           "of size 'split' (scalar), or into slices of 1 (no split; keepdims=0 drops the axis).")


def _concat_from_sequence(op) -> list[Type]:
    seq = _seq_operand(op, 0)
    e = seq.elem
    if not isinstance(e, TensorType):
        raise fail(op, f"needs a sequence of tensors with a known dtype, got {seq}")
    new_axis = op.attr("new_axis", 0)
    if e.shape is None:
        return [TensorType(e.dtype, None)]
    rank = len(e.shape) + (1 if new_axis else 0)
    axis = normalize_axis(op, op.attr("axis"), rank)
    shape = list(e.shape)
    if new_axis:
        shape.insert(axis, UNKNOWN)
    else:
        shape[axis] = UNKNOWN
    return [TensorType(e.dtype, tuple(shape))]


define("concat_from_sequence", operands=["input_sequence"], infer=_concat_from_sequence,
       attrs={"axis": attr("int", required=True), "new_axis": attr("int", 0)},
       doc="Concatenates the tensors of a sequence along axis (new_axis=1: stacks them).")


def _sequence_map_infer(op) -> list[Type]:
    outs = [v.type if v is not None else AnyType() for v in op.regions[0].block.results]
    return [SequenceType(t) for t in outs]


def _sequence_map_verify(op) -> None:
    body = op.regions[0].block
    if len(body.args) != len(op.operands):
        raise fail(op, f"body takes {len(body.args)} arguments, expected {len(op.operands)} "
                       "(one per operand)")
    if len(body.results) != len(op.results):
        raise fail(op, f"body returns {len(body.results)} values, expected {len(op.results)}")


define("sequence_map", operands=["input_sequence", "additional_inputs*"], num_results=None,
       regions=1, infer=_sequence_map_infer, verify=_sequence_map_verify,
       doc="Runs the body once per element of the first sequence; sequence operands pass their "
           "i-th element, tensor operands pass whole; each body result becomes a sequence.")


# -- optionals ------------------------------------------------------------------------------
def _optional(op) -> list[Type]:
    v = op.operand(0)
    if v is not None:
        return [OptionalType(v.type)]
    t = op.attr("type")
    if t is None:
        raise fail(op, "an empty optional needs its element 'type' attribute")
    return [OptionalType(t)]


define("optional", operands=["input?"], attrs={"type": attr("type")}, infer=_optional,
       doc="An optional holding the operand, or an empty optional of element 'type'.")


def _get_element(op) -> list[Type]:
    v = op.operand(0)
    if v is None:
        raise fail(op, "needs an operand")
    return [v.type.elem if isinstance(v.type, OptionalType) else v.type]


define("optional_get_element", operands=["input"], infer=_get_element,
       doc="The value in an optional (an error when it is empty); a tensor or sequence "
           "operand passes through.")

define("optional_has_element", operands=["input?"],
       infer=lambda op: [TensorType(DType.bool, ())],
       doc="True when the operand is present and not an empty optional.")
