"""Kernels for the fused ops of galaxir/ir/ops/fused.py.

Each runs the same computation as the op's decomposition, reusing the core kernels (conv,
gemm, the activation kernels), so a fused module on the numpy backend is checked against
its unfused self step by step; ``fused_elementwise`` runs its region.
"""
from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ...ir.opdef import describe
from ..registry import kernel
from . import elementwise as ew
from . import linalg, nn
from .reduce import softmax_np


class _AttrCtx:
    """The little of a KernelContext the activation kernels read (their attributes)."""

    __slots__ = ("op", "attrs")

    def __init__(self, op, attrs: dict):
        self.op = op
        self.attrs = attrs

    def attr(self, name, default=None):
        return self.attrs.get(name, default)


def activation(ctx, y: np.ndarray) -> np.ndarray:
    """Apply the op's ``activation`` epilogue to ``y`` (keeping y's dtype)."""
    name = ctx.attr("activation") or "none"
    p = tuple(ctx.attr("activation_params") or ())
    if name == "none":
        return y
    dt = y.dtype
    if name == "relu":
        out = ew.relu(ctx, y)
    elif name == "tanh":
        with np.errstate(all="ignore"):
            out = np.tanh(ew._floatwork(y))
    elif name == "sigmoid":
        out = ew.sigmoid(ctx, y)
    elif name == "silu":
        w = ew._floatwork(y)
        out = w * ew.sigmoid(ctx, w).astype(w.dtype, copy=False)
    elif name == "hard_swish":
        out = ew.hard_swish(ctx, y)
    elif name == "mish":
        w = ew._floatwork(y)
        with np.errstate(all="ignore"):
            out = w * np.tanh(ew._softplus(w))
    elif name in ("gelu", "gelu_tanh"):
        out = ew.gelu(_AttrCtx(ctx.op, {"approximate": "tanh" if name == "gelu_tanh" else "none"}), y)
    elif name == "clip":
        w = ew._work(y)
        out = np.clip(w, w.dtype.type(p[0]), w.dtype.type(p[1]))
    elif name == "leaky_relu":
        w = ew._floatwork(y)
        out = np.where(w < 0, w * w.dtype.type(p[0]), w)
    elif name == "hard_sigmoid":
        out = ew.hard_sigmoid(_AttrCtx(ctx.op, {"alpha": p[0], "beta": p[1]}), y)
    else:
        raise ExecutionError(f"{describe(ctx.op)}: unknown activation {name!r}")
    return np.asarray(out).astype(dt, copy=False)


@kernel("fused_conv")
def fused_conv(ctx, x, w, b=None, z=None):
    y = nn.conv(ctx, x, w, b)
    if z is not None:
        y = y + z
    return activation(ctx, y)


@kernel("linear")
def linear(ctx, x, w, b=None):
    y = linalg.matmul(ctx, x, w)
    if b is not None:
        y = y + b.astype(y.dtype, copy=False)
    return activation(ctx, y)


@kernel("fused_gemm")
def fused_gemm(ctx, a, b, c=None):
    return activation(ctx, np.asarray(linalg.gemm(ctx, a, b, c)).astype(a.dtype, copy=False))


@kernel("fused_add")
def fused_add(ctx, a, b):
    return activation(ctx, np.add(a, b))


@kernel("sdpa")
def sdpa(ctx, q, kt, v, mask=None):
    dt = q.dtype
    work = np.dtype(np.float32) if dt.kind != "f" or dt.itemsize < 4 else dt
    s = np.matmul(q.astype(work, copy=False), kt.astype(work, copy=False))
    scale = ctx.attr("scale")
    if scale != 1.0:
        s *= work.type(scale)
    if mask is not None:
        s = s + mask.astype(work, copy=False)
    p = softmax_np(s, -1)
    return np.matmul(p, v.astype(work, copy=False)).astype(dt, copy=False)


@kernel("fused_elementwise")
def fused_elementwise(ctx, *inputs):
    return ctx.run_region(0, inputs)[0]
