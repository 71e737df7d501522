"""Which ops the quantizer rewrites, and the role of each of their operands: the
activation inputs, the constant weight (with its output-channel axis) and the bias."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Module, Operation, Value
from ..ir.types import DType, TensorType

#: the ops whose inputs, weights and outputs are quantized
KINDS = ("conv", "matmul", "gemm", "linear")
#: activations a quantized output moves past (their output range is the one that matters)
ACTIVATIONS = ("relu", "clip")


@dataclass
class Target:
    op: Operation
    label: str                 # a stable name for reports: the result's name or kind#index
    inputs: list[int]          # operand indices of float activations
    weight: int | None         # operand index of the constant weight
    axis: int | None           # the weight's output-channel axis (None: per tensor only)
    bias: int | None           # operand index of a constant bias quantizable as int32
    out: Value                 # the value whose range is quantized (past a relu/clip)


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.constant_value()


def _is_f32(v: Value | None) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.dtype is DType.float32


def forward_constant_identities(module: Module) -> Module:
    """``module``, or a copy of it whose ``identity`` ops of a constant are gone (their
    users read the constant): torch's ONNX export shares equal weights that way (the
    layers of a TransformerEncoder are copies of one layer), and a weight behind an
    identity would not be seen as a constant, so its op would stay float."""
    def found(m):
        return [op for op in m.graph.block if op.name == "identity" and op.operands
                and op.operand(0).constant_value() is not None
                and not any(u.is_terminator for u in op.results[0].users)]
    if not found(module):
        return module
    module = module.clone()
    for op in found(module):
        op.results[0].replace_all_uses_with(op.operand(0))
        op.erase()
    return module


def label_of(op: Operation, index: int) -> str:
    name = op.results[0].name
    return name if name else f"{op.name}#{index}"


def find_targets(module: Module, exclude=(), kinds=KINDS) -> list[Target]:
    """The top-level float32 conv/matmul/gemm/linear ops, in graph order (nested regions
    are left alone), except those named in ``exclude`` (by label or op kind)."""
    excl = set(exclude or ())
    found = []
    index = 0
    for op in module.graph.block:
        if op.name not in kinds:
            continue
        i = index
        index += 1
        if op.results and not op.results[0].name:
            op.results[0].name = f"{op.name}#{i}"  # the report finds it by this name
        t = _classify(op, i)
        if t is None or t.label in excl or op.name in excl or f"{op.name}#{i}" in excl:
            continue
        found.append(t)
    return found


def _classify(op: Operation, index: int) -> Target | None:
    if not all(_is_f32(v) for v in op.operands[:2]) or not _is_f32(op.results[0]):
        return None
    a, b = op.operand(0), op.operand(1)
    wa, wb = _const(a), _const(b)
    bias = None
    if op.name == "conv":
        if wb is None or wa is not None:
            return None
        weight, axis, inputs = 1, 0, [0]
        if _const(op.operand(2)) is not None:
            bias = 2
    elif op.name == "gemm":
        if op.attr("transA") or wb is None or wa is not None or wb.ndim != 2:
            return None
        weight, axis, inputs = 1, (0 if op.attr("transB") else 1), [0]
        c = _const(op.operand(2))
        n = wb.shape[axis]
        if c is not None and c.shape == (n,) and op.attr("alpha", 1.0) == 1.0 and op.attr("beta", 1.0) == 1.0:
            bias = 2
    elif op.name == "linear":
        if wb is None or wa is not None or wb.ndim != 2 or op.attr("activation") not in (None, "", "none"):
            return None
        weight, axis, inputs = 1, 1, [0]
        c = _const(op.operand(2))
        if c is not None and c.shape == (wb.shape[1],):
            bias = 2
    else:  # matmul: a constant right operand is a weight; two activations are left float
        if wb is None or wa is not None or wb.ndim < 2:
            return None
        weight, axis, inputs = 1, (wb.ndim - 1), [0]
    return Target(op, label_of(op, index), inputs, weight, axis, bias, _past_activation(op.results[0]))


def _past_activation(v: Value) -> Value:
    """The relu/clip output when ``v``'s only user is one (its range is the tighter one)."""
    users = v.users
    if len(users) == 1 and users[0].name in ACTIVATIONS and users[0].operand(0) is v \
            and not any(o.is_terminator for o in users):
        return users[0].results[0]
    return v
