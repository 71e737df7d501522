"""Fused ops made by the O2 fusion passes (galaxir/passes/fusion).

Every fused op is a composite: its ``decompose`` rebuilds the exact core-op subgraph it
replaced, so a backend without a fast kernel (and the ONNX exporter) can still run it.

* ``fused_conv(x, w, b?, z?)``: ``act(conv(x, w, b) + z)``, conv attributes unchanged; ``z``
  is an optional residual of the conv result's shape (ResNet's skip connection).
* ``linear(x, w, b?)``: ``act(matmul(x, w) + b)``, numpy matmul semantics, ``b`` broadcast
  over the result (normally ``[N]``).
* ``fused_gemm(a, b, c?)``: ``act(gemm(a, b, c))`` with the gemm attributes.
* ``fused_add(a, b)``: ``act(a + b)`` (Add + ReLU after a residual).
* ``sdpa(q, kt, v, mask?)``: ``softmax(q @ kt * scale + mask, axis=-1) @ v``: scaled
  dot-product attention over any batch dims; ``kt`` is K already transposed ``[..., D, Skv]``
  as the decomposed graphs have it.
* ``fused_elementwise(inputs*)``: a chain of elementwise ops, carried as a region whose block
  arguments are the chain's external inputs and whose return value is the result.

The epilogue of the first four is ``activation`` (a name) with ``activation_params``:

    none, relu, tanh, sigmoid, silu (x*sigmoid(x)), hard_swish,
    clip [min, max] (relu6 = clip [0, 6]), leaky_relu [alpha], hard_sigmoid [alpha, beta],
    gelu (erf form), gelu_tanh (tanh approximation), mish (x * tanh(softplus(x)))
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..opdef import attr, define
from ..traits import Elementwise, InPlace, LayoutAttr
from ..types import TensorType, Type
from .linalg import GEMM_TYPES, _gemm_infer, matmul_shape
from .nn import CONV_TYPES, LAYOUT_ATTR, _WINDOW_ATTRS, _conv_infer, _conv_verify
from .rules import broadcast_shapes, fail, tensor_operand

if TYPE_CHECKING:
    from ..core import Operation, Value

#: activation name -> number of activation_params it takes
ACTIVATIONS: dict[str, int] = {
    "none": 0, "relu": 0, "tanh": 0, "sigmoid": 0, "silu": 0, "hard_swish": 0, "gelu": 0,
    "gelu_tanh": 0, "mish": 0, "clip": 2, "leaky_relu": 1, "hard_sigmoid": 2,
}

_ACT_ATTRS = {"activation": attr("str", "none"), "activation_params": attr("floats", ())}
CONV_ATTRS = tuple(_WINDOW_ATTRS) + ("group", "layout")
GEMM_ATTRS = ("alpha", "beta", "transA", "transB")


def check_activation(op: "Operation") -> None:
    name = op.attr("activation")
    if name not in ACTIVATIONS:
        raise fail(op, f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    n = len(op.attr("activation_params") or ())
    if n != ACTIVATIONS[name]:
        raise fail(op, f"activation {name!r} takes {ACTIVATIONS[name]} activation_params, got {n}")


def _scalar(b, value: float, like: "Value") -> "Value":
    return b.constant(np.asarray(value, dtype=like.type.dtype.numpy))


def build_activation(b, y: "Value", name: str, params=()) -> "Value":
    """``name(y)`` from core ops (and the composite activations, which decompose further)."""
    if name == "none":
        return y
    if name in ("relu", "tanh", "sigmoid"):
        return b.op(name, y)
    if name == "silu":
        return b.mul(y, b.sigmoid(y))
    if name == "hard_swish":
        return b.hard_swish(y)
    if name in ("gelu", "gelu_tanh"):
        return b.gelu(y, approximate="tanh" if name == "gelu_tanh" else "none")
    if name == "mish":
        return b.mish(y)
    if name == "clip":
        lo, hi = params
        return b.clip(y, None if lo == -math.inf else _scalar(b, lo, y),
                      None if hi == math.inf else _scalar(b, hi, y))
    if name == "leaky_relu":
        return b.leaky_relu(y, alpha=float(params[0]))
    if name == "hard_sigmoid":
        return b.hard_sigmoid(y, alpha=float(params[0]), beta=float(params[1]))
    raise ValueError(f"unknown activation {name!r}")


def _epilogue(b, op: "Operation", y: "Value") -> "Value":
    return build_activation(b, y, op.attr("activation"), op.attr("activation_params") or ())


def _pick(op: "Operation", names) -> dict:
    return {k: op.attrs[k] for k in names if k in op.attrs}


# -- fused_conv ---------------------------------------------------------------------------------
def _fused_conv_verify(op: "Operation") -> None:
    _conv_verify(op)
    check_activation(op)
    if op.operand(3) is not None:
        z, out = tensor_operand(op, 3), op.results[0].type if op.results else None
        if isinstance(out, TensorType) and out.shape is not None and z.shape is not None:
            if len(z.shape) != len(out.shape) or any(
                    isinstance(a, int) and isinstance(c, int) and a != c
                    for a, c in zip(z.shape, out.shape)):
                raise fail(op, f"residual z {z} must have the conv result's shape {out}")


def _fused_conv_decompose(b, op):
    x, w, bias, z = (op.operand(i) for i in range(4))
    y = b.conv(x, w, bias, **_pick(op, CONV_ATTRS))
    if z is not None:
        y = b.add(y, z)
    return [_epilogue(b, op, y)]


define("fused_conv", traits=[LayoutAttr()],
       operands=["x", "w", "b?", "z?"],
       attrs={**_WINDOW_ATTRS, "group": attr("int", 1), **_ACT_ATTRS, **LAYOUT_ATTR},
       infer=_conv_infer, verify=_fused_conv_verify, decompose=_fused_conv_decompose,
       types={**CONV_TYPES, "z": "T"},
       doc="activation(conv(x, w, b) + z): a convolution with its bias, optional residual "
           "input z and activation epilogue.")


# -- linear ------------------------------------------------------------------------------------
def _linear_infer(op: "Operation") -> list[Type]:
    ta, tb = tensor_operand(op, 0), tensor_operand(op, 1)
    shape = matmul_shape(op, ta.shape, tb.shape)
    if op.operand(2) is not None:
        tc = tensor_operand(op, 2)
        if shape is not None and tc.shape is not None:
            try:
                full = broadcast_shapes(shape, tc.shape)
            except ValueError as e:
                raise fail(op, f"bias {tc} does not broadcast to {list(shape)}: {e}") from None
            if len(full) != len(shape) or any(isinstance(s, int) and isinstance(f, int) and s != f
                                              for s, f in zip(shape, full)):
                raise fail(op, f"bias {tc} would grow the result {list(shape)}")
    return [ta.with_shape(shape)]


def _linear_decompose(b, op):
    x, w, bias = op.operand(0), op.operand(1), op.operand(2)
    y = b.matmul(x, w)
    if bias is not None:
        y = b.add(y, bias)
    return [_epilogue(b, op, y)]


define("linear", operands=["x", "w", "b?"], attrs=dict(_ACT_ATTRS), infer=_linear_infer,
       types={"x": "T", "w": "T", "b": "T"},
       verify=check_activation, decompose=_linear_decompose,
       doc="activation(matmul(x, w) + b): MatMul + Add(bias) + activation in one op.")


# -- fused_gemm --------------------------------------------------------------------------------
def _fused_gemm_decompose(b, op):
    y = b.gemm(op.operand(0), op.operand(1), op.operand(2), **_pick(op, GEMM_ATTRS))
    return [_epilogue(b, op, y)]


define("fused_gemm", operands=["a", "b", "c?"],
       attrs={"alpha": attr("float", 1.0), "beta": attr("float", 1.0),
              "transA": attr("int", 0), "transB": attr("int", 0), **_ACT_ATTRS},
       infer=_gemm_infer, verify=check_activation, decompose=_fused_gemm_decompose, types=GEMM_TYPES,
       doc="activation(gemm(a, b, c)) with the gemm attributes.")


# -- fused_add -----------------------------------------------------------------------------------
def _fused_add_infer(op: "Operation") -> list[Type]:
    ta, tb = tensor_operand(op, 0), tensor_operand(op, 1)
    try:
        shape = broadcast_shapes(ta.shape, tb.shape)
    except ValueError as e:
        raise fail(op, f"{ta} and {tb} do not broadcast: {e}") from None
    return [ta.with_shape(shape)]


define("fused_add", traits=[Elementwise("binary", fusible=True), InPlace()],
       operands=["a", "b"], attrs=dict(_ACT_ATTRS), infer=_fused_add_infer,
       types={"a": "T", "b": "T"},
       verify=check_activation,
       decompose=lambda b, op: [_epilogue(b, op, b.add(op.operand(0), op.operand(1)))],
       doc="activation(a + b): the residual Add with its ReLU.")


# -- sdpa ----------------------------------------------------------------------------------------
def _sdpa_infer(op: "Operation") -> list[Type]:
    q, kt, v = (tensor_operand(op, i) for i in range(3))
    scores = matmul_shape(op, q.shape, kt.shape)
    if op.operand(3) is not None:
        m = tensor_operand(op, 3)
        try:
            scores = broadcast_shapes(scores, m.shape)
        except ValueError as e:
            raise fail(op, f"mask {m} does not broadcast to the scores: {e}") from None
    return [q.with_shape(matmul_shape(op, scores, v.shape))]


def _sdpa_decompose(b, op):
    q, kt, v, mask = (op.operand(i) for i in range(4))
    s = b.matmul(q, kt)
    scale = op.attr("scale")
    if scale != 1.0:
        s = b.mul(s, _scalar(b, scale, s))
    if mask is not None:
        s = b.add(s, mask)
    return [b.matmul(b.softmax(s, axis=-1), v)]


define("sdpa", operands=["q", "kt", "v", "mask?"], attrs={"scale": attr("float", 1.0)},
       infer=_sdpa_infer, decompose=_sdpa_decompose,
       types={"q": "T", "kt": "T", "v": "T", "mask": "T"},
       doc="Scaled dot-product attention: softmax(q @ kt * scale + mask, axis=-1) @ v, with "
           "kt = K^T ([..., D, Skv]) and an optional additive mask.")


# -- fused_elementwise -----------------------------------------------------------------------------
def _fused_ew_infer(op: "Operation") -> list[Type]:
    block = op.regions[0].block
    if len(block.args) != len(op.operands):
        raise fail(op, f"the region takes {len(block.args)} arguments for "
                       f"{len(op.operands)} operands")
    res = block.results
    if len(res) != 1 or res[0] is None:
        raise fail(op, "the region must return exactly one value")
    return [res[0].type]


def _fused_ew_decompose(b, op):
    from ..clone import clone_op
    block = op.regions[0].block
    mapping = {id(a): v for a, v in zip(block.args, op.operands)}
    for inner in block:
        if inner.is_terminator:
            continue
        b.insert(clone_op(inner, mapping))
    out = block.results[0]
    return [mapping.get(id(out), out)]


define("fused_elementwise", traits=[Elementwise("variadic"), InPlace()],
       operands=["inputs*"], regions=1, infer=_fused_ew_infer,
       decompose=_fused_ew_decompose,
       doc="A chain of elementwise ops as one op: region 0's block arguments are bound to the "
           "operands, its body is the chain, its return value is the result.")
