"""CUDA C building blocks shared by every generated kernel: element types, the prelude
(header-free: NVRTC on the CI machines has no CUDA headers, so half and bfloat16 are raw
16-bit storage converted with PTX ``cvt``), and the scalar expressions of elementwise ops.

Everything is computed in ``float`` for float32/float16/bfloat16 (fp32 accumulation),
``double`` for float64 and the integer type itself for integers."""
from __future__ import annotations

import math

import numpy as np

from ...ir.types import DType

#: storage C type of each element type the kernels handle
CTYPE = {
    DType.float32: "float", DType.float16: "gx_half", DType.bfloat16: "gx_bf16",
    DType.float64: "double", DType.int64: "long long", DType.int32: "int", DType.int16: "short",
    DType.int8: "signed char", DType.uint8: "unsigned char", DType.uint16: "unsigned short",
    DType.uint32: "unsigned int", DType.uint64: "unsigned long long", DType.bool: "unsigned char",
}
FLOATS = {DType.float32, DType.float16, DType.bfloat16, DType.float64}
INTS = {DType.int64, DType.int32, DType.int16, DType.int8, DType.uint8, DType.uint16,
        DType.uint32, DType.uint64}

PRELUDE = r"""
typedef unsigned short gx_half;
typedef unsigned short gx_bf16;
__device__ __forceinline__ float gx_h2f(gx_half h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ gx_half gx_f2h(float f) { gx_half h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float gx_b2f(gx_bf16 b) { return __uint_as_float(((unsigned int)b) << 16); }
__device__ __forceinline__ gx_bf16 gx_f2b(float f) { gx_bf16 h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
#define GX_INF __int_as_float(0x7f800000)
#define GX_NAN __int_as_float(0x7fffffff)
__device__ __forceinline__ float gx_max(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float gx_min(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ double gx_max(double a, double b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ double gx_min(double a, double b) { return (a != a || a < b) ? a : b; }
template <typename T> __device__ __forceinline__ T gx_max(T a, T b) { return a > b ? a : b; }
template <typename T> __device__ __forceinline__ T gx_min(T a, T b) { return a < b ? a : b; }
__device__ __forceinline__ float gx_sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ double gx_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float gx_softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ double gx_softplus(double x) { return x > 40.0 ? x : log1p(exp(x)); }
__device__ __forceinline__ float gx_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float gx_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = gx_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/* block-wide reductions for blockDim.x a multiple of 32, at most 1024; every thread
   gets the result; sh holds 32 floats */
__device__ __forceinline__ float gx_block_sum(float v, float* sh) {
  v = gx_warp_sum(v);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = (threadIdx.x < (blockDim.x >> 5)) ? sh[threadIdx.x] : 0.f;
  if (w == 0) v = gx_warp_sum(v);
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  return sh[0];
}
__device__ __forceinline__ float gx_block_max(float v, float* sh) {
  v = gx_warp_max(v);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = (threadIdx.x < (blockDim.x >> 5)) ? sh[threadIdx.x] : -GX_INF;
  if (w == 0) v = gx_warp_max(v);
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  return sh[0];
}
"""


def ctype(dt: DType) -> str:
    return CTYPE[dt]


def compute_type(dt: DType) -> str:
    """The C type arithmetic on ``dt`` runs in."""
    if dt in (DType.float32, DType.float16, DType.bfloat16):
        return "float"
    if dt is DType.bool:
        return "bool"
    return CTYPE[dt]


def load(dt: DType, expr: str) -> str:
    """``expr`` (a storage value) in the compute type."""
    if dt is DType.float16:
        return f"gx_h2f({expr})"
    if dt is DType.bfloat16:
        return f"gx_b2f({expr})"
    if dt is DType.bool:
        return f"({expr} != 0)"
    return f"{expr}"


def store(dt: DType, expr: str) -> str:
    """A compute-type ``expr`` converted to ``dt``'s storage."""
    if dt is DType.float16:
        return f"gx_f2h((float)({expr}))"
    if dt is DType.bfloat16:
        return f"gx_f2b((float)({expr}))"
    if dt is DType.bool:
        return f"(unsigned char)(({expr}) ? 1 : 0)"
    return f"({CTYPE[dt]})({expr})"


def literal(value, dt: DType) -> str:
    """A C literal of ``value`` in ``dt``'s compute type."""
    ct = compute_type(dt)
    if ct == "bool":
        return "true" if bool(value) else "false"
    if ct in ("float", "double"):
        v = float(value)
        if math.isnan(v):
            return "GX_NAN" if ct == "float" else "((double)GX_NAN)"
        if math.isinf(v):
            inf = "GX_INF" if ct == "float" else "((double)GX_INF)"
            return inf if v > 0 else f"(-{inf})"
        if ct == "float":
            return f"{float(np.float32(v))!r}f"
        return repr(v)
    v = int(value)
    suffix = "ULL" if ct.startswith("unsigned long") else ("LL" if ct == "long long" else "")
    if v == -(2 ** 63):
        return "(-9223372036854775807LL - 1)"
    return f"({v}{suffix})"


def fn(name: str, ct: str) -> str:
    """The C math function ``name`` for compute type ``ct`` (expf for float, exp for double)."""
    return name + "f" if ct == "float" else name


# -- elementwise ops: (arity, template) in compute type; {a} {b} {c} the operands, {F} the
#    float suffix, {p0}, {p1} attribute literals -----------------------------------------------
def _act(name: str, params, ct: str, x: str) -> str:
    """The fused-op epilogue ``name`` (galaxir/ir/ops/fused.py) applied to ``x``."""
    f = "f" if ct == "float" else ""
    one = "1.f" if ct == "float" else "1.0"
    zero = "0.f" if ct == "float" else "0.0"
    if name == "none":
        return x
    if name == "relu":
        return f"({x} < {zero} ? {zero} : {x})"
    if name == "tanh":
        return f"tanh{f}({x})"
    if name == "sigmoid":
        return f"gx_sigmoid({x})"
    if name == "silu":
        return f"({x} * gx_sigmoid({x}))"
    if name == "hard_swish":
        return f"({x} * gx_max({zero}, gx_min({one}, {x} / 6 + ({ct})0.5)))"
    if name == "gelu":
        return f"(({ct})0.5 * {x} * ({one} + erf{f}({x} * ({ct})0.7071067811865476)))"
    if name == "gelu_tanh":
        return (f"(({ct})0.5 * {x} * ({one} + tanh{f}(({ct})0.7978845608028654 * ({x} + "
                f"({ct})0.044715 * {x} * {x} * {x}))))")
    if name == "mish":
        return f"({x} * tanh{f}(gx_softplus({x})))"
    if name == "clip":
        lo, hi = params
        v = x
        if lo != -math.inf:
            v = f"gx_max({v}, ({ct}){float(lo)!r})"
        if hi != math.inf:
            v = f"gx_min({v}, ({ct}){float(hi)!r})"
        return v
    if name == "leaky_relu":
        return f"({x} < {zero} ? ({ct}){float(params[0])!r} * {x} : {x})"
    if name == "hard_sigmoid":
        a, b = params
        return f"gx_max({zero}, gx_min({one}, ({ct}){float(a)!r} * {x} + ({ct}){float(b)!r}))"
    raise KeyError(name)


def activation(name: str, params, ct: str, x: str) -> str:
    return _act(name, tuple(params or ()), ct, x)


UNARY_FLOAT = {
    "neg": "(-{a})", "abs": "fabs{F}({a})", "relu": "({a} < 0 ? ({T})0 : {a})",
    "sigmoid": "gx_sigmoid({a})", "tanh": "tanh{F}({a})", "exp": "exp{F}({a})",
    "log": "log{F}({a})", "sqrt": "sqrt{F}({a})", "reciprocal": "(({T})1 / {a})",
    "erf": "erf{F}({a})", "sin": "sin{F}({a})", "cos": "cos{F}({a})", "tan": "tan{F}({a})",
    "asin": "asin{F}({a})", "acos": "acos{F}({a})", "atan": "atan{F}({a})",
    "sinh": "sinh{F}({a})", "cosh": "cosh{F}({a})", "asinh": "asinh{F}({a})",
    "acosh": "acosh{F}({a})", "atanh": "atanh{F}({a})", "floor": "floor{F}({a})",
    "ceil": "ceil{F}({a})", "round": "rint{F}({a})",
    "sign": "({a} != {a} ? {a} : ({T})(({a} > 0) - ({a} < 0)))",
    "softplus": "gx_softplus({a})", "softsign": "({a} / (({T})1 + fabs{F}({a})))",
    "mish": "({a} * tanh{F}(gx_softplus({a})))",
    "hard_swish": "({a} * gx_max(({T})0, gx_min(({T})1, {a} / ({T})6 + ({T})0.5)))",
    "identity": "{a}", "dropout": "{a}",
}
UNARY_INT = {"neg": "(-{a})", "abs": "({a} < 0 ? -{a} : {a})", "identity": "{a}",
             "relu": "({a} < 0 ? ({T})0 : {a})", "sign": "({T})(({a} > 0) - ({a} < 0))"}
BINARY_FLOAT = {
    "add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})",
    "pow": "pow{F}({a}, {b})", "max": "gx_max({a}, {b})", "min": "gx_min({a}, {b})",
    "prelu": "({a} < 0 ? {b} * {a} : {a})",
}
BINARY_INT = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})",
              "max": "gx_max({a}, {b})", "min": "gx_min({a}, {b})"}
COMPARE = {"equal": "({a} == {b})", "less": "({a} < {b})", "greater": "({a} > {b})",
           "less_or_equal": "({a} <= {b})", "greater_or_equal": "({a} >= {b})"}
LOGIC = {"and": "({a} && {b})", "or": "({a} || {b})", "xor": "({a} != {b})"}
VARIADIC = {"sum", "mean", "max", "min"}


def _attr_float(op, name, default):
    v = op.attr(name)
    return float(default if v is None else v)


def elementwise_expr(op, args: list[str], in_types: list[DType], out_type: DType) -> str | None:
    """The compute-type expression of elementwise ``op`` on ``args`` (compute-type
    expressions), or None when no kernel handles this op/dtype combination."""
    name = op.name
    dt = in_types[0] if in_types else out_type
    ct = compute_type(dt)
    isf = dt in FLOATS
    fmt = dict(F="f" if ct == "float" else "", T=ct)
    if len(args) >= 1:
        fmt["a"] = args[0]
    if len(args) >= 2:
        fmt["b"] = args[1]
    if name == "cast":
        src, dst = dt, out_type
        if src not in CTYPE or dst not in CTYPE:
            return None
        dct = compute_type(dst)
        if dst is DType.bool:
            return f"({args[0]} != 0)"
        if src in FLOATS and dst in INTS:
            return None  # out-of-range float -> int conversion differs from numpy's
        return f"(({dct})({args[0]}))"
    if any(t not in CTYPE for t in in_types) or out_type not in CTYPE:
        return None
    if name in COMPARE and len(args) == 2:
        return COMPARE[name].format(**fmt) if dt is not DType.bool or name == "equal" else None
    if name in LOGIC and len(args) == 2 and dt is DType.bool:
        return LOGIC[name].format(**fmt)
    if name == "not" and dt is DType.bool:
        return f"(!{args[0]})"
    if name == "where" and len(args) == 3 and in_types[0] is DType.bool:
        return f"({args[0]} ? {args[1]} : {args[2]})"
    if dt is DType.bool:
        return None
    if name in VARIADIC and len(args) >= 1 and (isf or name != "mean"):
        if len(set(in_types)) != 1:
            return None
        acc = args[0]
        for x in args[1:]:
            acc = f"({acc} + {x})" if name in ("sum", "mean") else f"gx_{name}({acc}, {x})"
        return f"({acc} / ({ct}){len(args)})" if name == "mean" else acc
    if name == "clip":
        if len(set(in_types)) != 1:
            return None
        v = args[0]
        if len(args) > 1 and args[1] is not None:
            v = f"gx_max({v}, {args[1]})"
        if len(args) > 2 and args[2] is not None:
            v = f"gx_min({v}, {args[2]})"
        return v
    if len(args) == 1:
        table = UNARY_FLOAT if isf else UNARY_INT
        if name in table:
            return table[name].format(**fmt)
        if not isf:
            return None
        x = args[0]
        if name == "leaky_relu":
            return f"({x} < 0 ? ({ct}){_attr_float(op, 'alpha', 0.01)!r} * {x} : {x})"
        if name == "elu":
            al = _attr_float(op, "alpha", 1.0)
            return f"({x} < 0 ? ({ct}){al!r} * (exp{fmt['F']}({x}) - ({ct})1) : {x})"
        if name == "celu":
            al = _attr_float(op, "alpha", 1.0)
            return (f"(gx_max(({ct})0, {x}) + gx_min(({ct})0, ({ct}){al!r} * "
                    f"(exp{fmt['F']}({x} / ({ct}){al!r}) - ({ct})1)))")
        if name == "selu":
            al = _attr_float(op, "alpha", 1.6732632423543772848170429916717)
            ga = _attr_float(op, "gamma", 1.0507009873554804934193349852946)
            return (f"(({ct}){ga!r} * ({x} > 0 ? {x} : ({ct}){al!r} * "
                    f"(exp{fmt['F']}({x}) - ({ct})1)))")
        if name == "thresholded_relu":
            return f"({x} > ({ct}){_attr_float(op, 'alpha', 1.0)!r} ? {x} : ({ct})0)"
        if name == "hard_sigmoid":
            a, b = _attr_float(op, "alpha", 0.2), _attr_float(op, "beta", 0.5)
            return f"gx_max(({ct})0, gx_min(({ct})1, ({ct}){a!r} * {x} + ({ct}){b!r}))"
        if name == "gelu":
            approx = op.attr("approximate") or "none"
            return activation("gelu_tanh" if approx == "tanh" else "gelu", (), ct, x)
        if name == "swish":
            al = _attr_float(op, "alpha", 1.0)
            return f"({x} * gx_sigmoid(({ct}){al!r} * {x}))"
        if name == "shrink":
            bi, la = _attr_float(op, "bias", 0.0), _attr_float(op, "lambd", 0.5)
            return (f"({x} < -({ct}){la!r} ? {x} + ({ct}){bi!r} : "
                    f"({x} > ({ct}){la!r} ? {x} - ({ct}){bi!r} : ({ct})0))")
        return None
    if len(args) == 2:
        if name == "pow":
            if not isf or in_types[1] not in FLOATS:
                return None
            return BINARY_FLOAT["pow"].format(**fmt)
        if in_types[0] != in_types[1]:
            return None
        if name == "mod" and isf and op.attr("fmod"):
            return f"fmod{fmt['F']}({args[0]}, {args[1]})"
        table = BINARY_FLOAT if isf else BINARY_INT
        if name in table:
            return table[name].format(**fmt)
    return None
