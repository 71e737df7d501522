"""Elementwise ops: unary math, binary arithmetic/comparison/logic with broadcasting."""
from __future__ import annotations

from ..opdef import attr, define
from ..types import DType
from .rules import broadcast_rule, broadcast_types, same_as, same_shape_dtype, tensor_operand

UNARY = ["abs", "neg", "exp", "log", "sqrt", "reciprocal", "floor", "ceil", "round", "sign",
         "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh",
         "atanh", "erf", "relu", "sigmoid", "softplus", "softsign", "bitwise_not"]
for _name in UNARY:
    define(_name, operands=["x"], infer=same_as(0))

define("not", operands=["x"], infer=same_as(0))
define("identity", operands=["x"], infer=lambda op: [op.operand_types[0]],
       doc="Passes any value (tensor, sequence, optional) through unchanged.")
for _name in ["isnan"]:
    define(_name, operands=["x"], infer=same_shape_dtype(DType.bool))
define("isinf", operands=["x"], infer=same_shape_dtype(DType.bool),
       attrs={"detect_negative": attr("int", 1), "detect_positive": attr("int", 1)})

ARITH = ["add", "sub", "mul", "div", "pow", "bitwise_and", "bitwise_or", "bitwise_xor"]
for _name in ARITH:
    define(_name, operands=["a", "b"], infer=broadcast_rule())
define("mod", operands=["a", "b"], infer=broadcast_rule(), attrs={"fmod": attr("int", 0)})
define("bit_shift", operands=["a", "b"], infer=broadcast_rule(),
       attrs={"direction": attr("str", required=True)})

COMPARE = ["equal", "less", "less_or_equal", "greater", "greater_or_equal"]
for _name in COMPARE:
    define(_name, operands=["a", "b"], infer=broadcast_rule(DType.bool))
for _name in ["and", "or", "xor"]:
    define(_name, operands=["a", "b"], infer=broadcast_rule(DType.bool))

for _name in ["max", "min", "sum", "mean"]:
    define(_name, operands=["inputs*"], infer=broadcast_rule())


def _where(op):
    return [broadcast_types(op).with_dtype(tensor_operand(op, 1).dtype)]


define("where", operands=["cond", "x", "y"], infer=_where)
