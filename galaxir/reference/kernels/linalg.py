"""Kernels for matmul, gemm, einsum and det.

float32/float64 go straight to numpy's BLAS-backed matmul in their own dtype (never
float64 for float32 input); narrow floats (float16, bfloat16, float8) are multiplied in
float32 and cast back, since numpy has no BLAS for them.
"""
from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ..registry import kernel


def _compute_dtype(dt: np.dtype) -> np.dtype:
    if dt.kind in "iub" or (dt.kind in "fc" and dt.itemsize >= 4):
        return dt
    return np.dtype(np.float32)


def _up(x: np.ndarray) -> np.ndarray:
    cd = _compute_dtype(x.dtype)
    return x if cd == x.dtype else x.astype(cd)


@kernel("matmul")
def matmul(ctx, a, b):
    return np.matmul(_up(a), _up(b)).astype(a.dtype, copy=False)


@kernel("gemm")
def gemm(ctx, a, b, c=None):
    aa, bb = _up(a), _up(b)
    if ctx.attr("transA"):
        aa = aa.T
    if ctx.attr("transB"):
        bb = bb.T
    y = aa @ bb
    alpha, beta = ctx.attr("alpha"), ctx.attr("beta")
    if alpha != 1.0:
        y = y * y.dtype.type(alpha) if y.dtype.kind in "fc" else (y * alpha).astype(y.dtype)
    if c is not None and beta != 0.0:
        cc = _up(c)
        if beta != 1.0:
            cc = cc * cc.dtype.type(beta) if cc.dtype.kind in "fc" else (cc * beta).astype(cc.dtype)
        y = y + cc  # c broadcasts (unidirectionally) to [M, N]
        if y.shape != (aa.shape[0], bb.shape[1]):
            raise ExecutionError(f"gemm: c of shape {list(c.shape)} does not broadcast to "
                                 f"[{aa.shape[0]}, {bb.shape[1]}]")
    return y.astype(a.dtype, copy=False)


@kernel("einsum")
def einsum(ctx, *inputs):
    eq = ctx.attr("equation").replace(" ", "")
    ups = [_up(x) for x in inputs]
    # optimize only pays off (and only applies) with several operands
    y = np.einsum(eq, *ups, optimize=len(ups) > 2)
    return np.asarray(y).astype(inputs[0].dtype, copy=False)


@kernel("det")
def det(ctx, x):
    xx = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    return np.linalg.det(xx).astype(x.dtype, copy=False)
