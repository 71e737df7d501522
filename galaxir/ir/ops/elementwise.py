"""Elementwise ops: unary math, activations, binary arithmetic/comparison/logic with
numpy-style broadcasting, variadic max/min/sum/mean, where, clip, cast and friends.

Core ops are the math every backend implements (add, exp, tanh, erf, where, ...).
Activations that are a short formula over core ops (elu, gelu, hard_swish, mish, ...) are
composites: each carries a ``decompose`` building the same values from core ops.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..opdef import BOOL, FLOATS, attr, define
from ..traits import Commutative, Elementwise, InPlace, View
from ..types import AnyType, DType, TensorType, Type
from .rules import broadcast_types, fail, same_shape_dtype, tensor_operand

if TYPE_CHECKING:
    from ..core import Operation, Value


# -- type rules (operand dtypes are declared with ``types=`` and checked before these run) --
def _same_dtype_broadcast(op: "Operation") -> list[Type]:
    """Broadcast of all operands (declared to share one dtype)."""
    return [broadcast_types(op)]


def _compare(op: "Operation") -> list[Type]:
    return [broadcast_types(op, dtype=DType.bool)]


_logical = _compare


def _first_dtype_broadcast(op: "Operation") -> list[Type]:
    """Broadcast of all operands, dtype of operand 0 (pow: the exponent may differ)."""
    return [broadcast_types(op)]


def _unary(op: "Operation") -> list[Type]:
    return [tensor_operand(op, 0)]


def _where(op: "Operation") -> list[Type]:
    return [broadcast_types(op).with_dtype(tensor_operand(op, 1).dtype)]


def _prelu(op: "Operation") -> list[Type]:
    return [broadcast_types(op)]


def _clip(op: "Operation") -> list[Type]:
    x = tensor_operand(op, 0)
    for i in (1, 2):
        if i < len(op.operands) and op.operands[i] is not None:
            b = tensor_operand(op, i)
            if b.shape is not None and not all(d == 1 for d in b.shape if isinstance(d, int)):
                raise fail(op, f"bound operand {i} must be a scalar, got {b}")
    return [x]


def _cast(op: "Operation") -> list[Type]:
    x = op.operand_types[0]
    to = op.attr("to")
    if isinstance(x, TensorType):
        return [TensorType(to, x.shape)]
    return [TensorType(to, None)]


def _bit_cast_verify(op: "Operation") -> None:
    x = tensor_operand(op, 0)
    to = op.attr("to")
    if DType.string in (x.dtype, to):
        raise fail(op, "bit_cast does not take or make strings")
    if _bits(x.dtype) != _bits(to):
        raise fail(op, f"bit_cast from {x.dtype.short} ({_bits(x.dtype)} bits) to {to.short} "
                       f"({_bits(to)} bits): the element widths must be equal")


def _bits(dt: DType) -> int:
    sub = {DType.int4: 4, DType.uint4: 4, DType.float4e2m1: 4, DType.int2: 2, DType.uint2: 2}
    return sub.get(dt, dt.itemsize * 8)


def _dropout(op: "Operation") -> list[Type]:
    x = tensor_operand(op, 0)
    if len(op.results) not in (1, 2):
        raise fail(op, f"has 1 or 2 results (output, mask), got {len(op.results)}")
    out: list[Type] = [x]
    if len(op.results) == 2:
        out.append(x.with_dtype(DType.bool))
    return out


def _one_of(attr_name: str, allowed: tuple[str, ...]):
    """Verifier: string attribute ``attr_name`` takes one of ``allowed``."""
    def verify(op: "Operation") -> None:
        v = op.attr(attr_name)
        if v not in allowed:
            raise fail(op, f"{attr_name} must be one of {', '.join(allowed)}, got {v!r}")
    return verify


def _identity(op: "Operation") -> list[Type]:
    t = op.operand_types[0]
    return [t if t is not None else AnyType()]


# -- decompositions (composite activations -> core ops) ----------------------------------------
def _c(b, value, like: "Value") -> "Value":
    """A scalar constant of ``like``'s dtype."""
    return b.constant(np.asarray(value, dtype=like.type.dtype.numpy))


def _dec_softplus(b, op):
    # log(1 + exp(x)) written so it never overflows: relu(x) + log(1 + exp(-|x|))
    x = op.operands[0]
    tail = b.log(b.add(_c(b, 1, x), b.exp(b.neg(b.abs(x)))))
    return [b.add(b.relu(x), tail)]


def _dec_softsign(b, op):
    x = op.operands[0]
    return [b.div(x, b.add(_c(b, 1, x), b.abs(x)))]


def _dec_elu(b, op):
    x = op.operands[0]
    neg = b.mul(_c(b, op.attr("alpha"), x), b.sub(b.exp(x), _c(b, 1, x)))
    return [b.where(b.less(x, _c(b, 0, x)), neg, x)]


def _dec_selu(b, op):
    x = op.operands[0]
    alpha, gamma = op.attr("alpha"), op.attr("gamma")
    neg = b.sub(b.mul(_c(b, alpha, x), b.exp(x)), _c(b, alpha, x))
    return [b.mul(_c(b, gamma, x), b.where(b.greater(x, _c(b, 0, x)), x, neg))]


def _dec_celu(b, op):
    x = op.operands[0]
    alpha = _c(b, op.attr("alpha"), x)
    neg = b.mul(alpha, b.sub(b.exp(b.div(x, alpha)), _c(b, 1, x)))
    return [b.add(b.max(x, _c(b, 0, x)), b.min(_c(b, 0, x), neg))]


def _dec_leaky_relu(b, op):
    x = op.operands[0]
    return [b.where(b.less(x, _c(b, 0, x)), b.mul(x, _c(b, op.attr("alpha"), x)), x)]


def _dec_prelu(b, op):
    x, slope = op.operands
    return [b.where(b.less(x, _c(b, 0, x)), b.mul(x, slope), x)]


def _dec_thresholded_relu(b, op):
    x = op.operands[0]
    return [b.where(b.greater(x, _c(b, op.attr("alpha"), x)), x, _c(b, 0, x))]


def _dec_hard_sigmoid(b, op):
    x = op.operands[0]
    lin = b.add(b.mul(_c(b, op.attr("alpha"), x), x), _c(b, op.attr("beta"), x))
    return [b.clip(lin, _c(b, 0, x), _c(b, 1, x))]


def _dec_hard_swish(b, op):
    x = op.operands[0]
    lin = b.add(b.mul(_c(b, 1 / 6, x), x), _c(b, 0.5, x))
    return [b.mul(x, b.clip(lin, _c(b, 0, x), _c(b, 1, x)))]


def _dec_mish(b, op):
    x = op.operands[0]
    (sp,) = _dec_softplus(b, op)
    return [b.mul(x, b.tanh(sp))]


def _dec_swish(b, op):
    x = op.operands[0]
    return [b.mul(x, b.sigmoid(b.mul(_c(b, op.attr("alpha"), x), x)))]


def _dec_gelu(b, op):
    x = op.operands[0]
    if op.attr("approximate") == "tanh":
        cube = b.mul(b.mul(x, x), x)
        inner = b.mul(_c(b, math.sqrt(2 / math.pi), x), b.add(x, b.mul(_c(b, 0.044715, x), cube)))
        gate = b.add(_c(b, 1, x), b.tanh(inner))
    else:
        gate = b.add(_c(b, 1, x), b.erf(b.mul(x, _c(b, 1 / math.sqrt(2), x))))
    return [b.mul(b.mul(_c(b, 0.5, x), x), gate)]


def _dec_shrink(b, op):
    x = op.operands[0]
    lambd, bias = op.attr("lambd"), op.attr("bias")
    low = b.add(x, _c(b, bias, x))
    high = b.sub(x, _c(b, bias, x))
    zero = _c(b, 0, x)
    return [b.where(b.less(x, _c(b, -lambd, x)), low,
                    b.where(b.greater(x, _c(b, lambd, x)), high, zero))]


def _dec_binarizer(b, op):
    x = op.operands[0]
    return [b.cast(b.greater(x, _c(b, op.attr("threshold"), x)), to=x.type.dtype)]


# -- the op set -------------------------------------------------------------------------------
# Traits (galaxir/ir/traits.py): every op here is Elementwise; the numeric formulas are
# ``fusible`` (the generic elementwise fusion may loop over them) and InPlace (the memory
# planner may write the result over a same-typed operand).
def _math(kind: str, commutative: bool = False) -> list:
    return [Elementwise(kind, fusible=True), InPlace()] + ([Commutative()] if commutative else [])


def _plain(kind: str, commutative: bool = False) -> list:
    """Elementwise, but not a fused loop's float math (bool results, casts, integer ops)."""
    return [Elementwise(kind)] + ([Commutative()] if commutative else [])


UNARY = ["abs", "neg", "exp", "log", "sqrt", "reciprocal", "floor", "ceil", "round", "sign",
         "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh",
         "atanh", "erf", "relu", "sigmoid", "bitwise_not"]
for _name in UNARY:
    define(_name, operands=["x"], infer=_unary,
           traits=_plain("unary") if _name == "bitwise_not" else _math("unary"))


define("not", operands=["x"], infer=_unary, types={"x": BOOL}, traits=_plain("unary"))
define("identity", operands=["x"], infer=_identity, traits=_plain("unary") + [View("identity")],
       doc="Passes any value (tensor, sequence, optional) through unchanged.")
define("isnan", operands=["x"], infer=same_shape_dtype(DType.bool), traits=_plain("unary"))
define("isinf", operands=["x"], infer=same_shape_dtype(DType.bool), traits=_plain("unary"),
       attrs={"detect_negative": attr("int", 1), "detect_positive": attr("int", 1)})

# composite activations: (name, attrs, decomposition, doc)
_COMPOSITES = [
    ("softplus", {}, _dec_softplus, "log(1 + exp(x))"),
    ("softsign", {}, _dec_softsign, "x / (1 + |x|)"),
    ("elu", {"alpha": attr("float", 1.0)}, _dec_elu, "x if x >= 0 else alpha * (exp(x) - 1)"),
    ("selu", {"alpha": attr("float", 1.67326319217681884765625),
              "gamma": attr("float", 1.05070102214813232421875)}, _dec_selu,
     "gamma * (x if x > 0 else alpha * exp(x) - alpha)"),
    ("celu", {"alpha": attr("float", 1.0)}, _dec_celu,
     "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))"),
    ("leaky_relu", {"alpha": attr("float", 0.01)}, _dec_leaky_relu, "x if x >= 0 else alpha * x"),
    ("thresholded_relu", {"alpha": attr("float", 1.0)}, _dec_thresholded_relu,
     "x if x > alpha else 0"),
    ("hard_sigmoid", {"alpha": attr("float", 0.2), "beta": attr("float", 0.5)}, _dec_hard_sigmoid,
     "clip(alpha * x + beta, 0, 1)"),
    ("hard_swish", {}, _dec_hard_swish, "x * clip(x / 6 + 1 / 2, 0, 1)"),
    ("mish", {}, _dec_mish, "x * tanh(softplus(x))"),
    ("swish", {"alpha": attr("float", 1.0)}, _dec_swish, "x * sigmoid(alpha * x)"),
    ("gelu", {"approximate": attr("str", "none")}, _dec_gelu,
     "x * Phi(x); approximate='tanh' uses the tanh formula"),
    ("shrink", {"lambd": attr("float", 0.5), "bias": attr("float", 0.0)}, _dec_shrink,
     "x + bias if x < -lambd, x - bias if x > lambd, else 0"),
]
_VERIFY = {"gelu": _one_of("approximate", ("none", "tanh"))}
for _name, _attrs, _dec, _doc in _COMPOSITES:
    define(_name, operands=["x"], attrs=_attrs, infer=_unary, decompose=_dec, doc=_doc,
           verify=_VERIFY.get(_name), traits=_math("unary"))

define("prelu", operands=["x", "slope"], infer=_prelu, decompose=_dec_prelu,
       types={"x": "T", "slope": "T"}, traits=_math("binary"),
       doc="x if x >= 0 else slope * x (slope broadcasts to x)")
define("ml.binarizer", operands=["x"], attrs={"threshold": attr("float", 0.0)}, infer=_unary,
       decompose=_dec_binarizer, traits=_plain("unary"),
       doc="1 where x > threshold else 0, in x's dtype")

_SAME = {"a": "T", "b": "T"}
# (name, traits)
ARITH = [("add", _math("binary", commutative=True)), ("sub", _math("binary")),
         ("mul", _math("binary", commutative=True)), ("div", _math("binary")),
         ("bitwise_and", _plain("binary", commutative=True)),
         ("bitwise_or", _plain("binary", commutative=True)),
         ("bitwise_xor", _plain("binary", commutative=True))]
for _name, _traits in ARITH:
    define(_name, operands=["a", "b"], infer=_same_dtype_broadcast, types=_SAME, traits=_traits)
define("pow", operands=["a", "b"], infer=_first_dtype_broadcast, traits=_math("binary"),
       doc="a ** b in a's dtype (the exponent may have another numeric dtype)")
define("mod", operands=["a", "b"], infer=_same_dtype_broadcast, attrs={"fmod": attr("int", 0)},
       types=_SAME, traits=_plain("binary"),
       doc="fmod=0: remainder with the divisor's sign (integers); fmod=1: C fmod")
define("bit_shift", operands=["a", "b"], infer=_same_dtype_broadcast, types=_SAME,
       traits=_plain("binary"),
       attrs={"direction": attr("str", required=True)},
       verify=_one_of("direction", ("LEFT", "RIGHT")),
       doc="LEFT or RIGHT shift; shifts outside [0, bits) give 0 (or the sign for RIGHT)")

COMPARE = ["equal", "less", "less_or_equal", "greater", "greater_or_equal"]
for _name in COMPARE:
    define(_name, operands=["a", "b"], infer=_compare, types=_SAME,
           traits=_plain("binary", commutative=_name == "equal"))
for _name in ["and", "or", "xor"]:
    define(_name, operands=["a", "b"], infer=_logical, types={"a": BOOL, "b": BOOL},
           traits=_plain("binary", commutative=True))

for _name in ["max", "min"]:  # fused as binary ops; sum and mean stay out of fused loops
    define(_name, operands=["inputs*"], infer=_same_dtype_broadcast, types={"inputs": "T"},
           traits=_math("variadic", commutative=True))
for _name in ["sum", "mean"]:
    define(_name, operands=["inputs*"], infer=_same_dtype_broadcast, types={"inputs": "T"},
           traits=_plain("variadic", commutative=True) + [InPlace()])

define("where", operands=["condition", "x", "y"], infer=_where, traits=_math("other"),
       types={"condition": BOOL, "x": "T", "y": "T"})
define("clip", operands=["x", "min?", "max?"], infer=_clip, traits=_math("other"),
       types={"x": "T", "min": "T", "max": "T"},
       doc="min(max(x, min), max); a missing bound does not clip")
define("cast", operands=["x"], infer=_cast, traits=_plain("unary"),
       attrs={"to": attr("dtype", required=True), "saturate": attr("int", 1),
              "round_mode": attr("str", "up")},
       verify=_one_of("round_mode", ("up", "down", "nearest")),
       doc="Converts to dtype ``to``; saturate (float8 targets) clamps out-of-range values, "
           "round_mode (float8e8m0 target) is up, down or nearest")
define("bit_cast", operands=["x"], infer=_cast, verify=_bit_cast_verify, traits=_plain("unary"),
       attrs={"to": attr("dtype", required=True)},
       doc="Reinterprets the bits of each element as dtype ``to`` (same width)")
define("dropout", operands=["x", "ratio?", "training_mode?"], num_results=None, infer=_dropout,
       traits=_plain("other") + [View("inference")],
       types={"ratio": FLOATS, "training_mode": BOOL},
       attrs={"seed": attr("int")},
       doc="Identity unless training_mode is true; the optional second result is the keep mask")
